"""A scheduled report run against the service over HTTP: its kernel holds the service URL and a
service-identity token and nothing else of the service's — no census folder, store URL or key
file — and every query it makes is the service's, audited as scheduled."""

from __future__ import annotations

import json

import nbformat
import pytest

from safestats.config import Settings
from safestats.reports.runner import run_report
from safestats.service.app import create_app
from safestats.service.pipeline import Service
from tests.servers import serving

PROBE = [
    ("user = 'quality.reports'\nterm = '2017-spring'", ["parameters"]),
    (
        "import json, os\nfrom pathlib import Path\nimport safestats as ss\n"
        "seen = sorted(k for k in os.environ if k.startswith('SAFESTATS_'))\n"
        "s = ss.connect(user=user)\n"
        "r = s.table('PupilOnRoll').where(term=term).group_by('phase').count().run()\n"
        "Path(os.environ['SAFESTATS_REPORT_DIR'], 'probe.json').write_text(json.dumps("
        "{'env': seen, 'transport': type(s._transport).__name__, 'rows': len(r),"
        " 'kernel': __import__('ipykernel.kernelapp').kernelapp.IPKernelApp.instance().transport}))",
        [],
    ),
]


@pytest.fixture
def served(sample_dir, tmp_path):
    service = Service(
        Settings.load(
            {},
            data_dir=sample_dir,
            store_url=f"sqlite:///{tmp_path / 'svc.db'}",
            output_checking_dir=str(tmp_path / "oc"),
            rate_limit=1000,
        )
    )
    service.users.add_user(
        "quality.bot", groups=["SC_QUALITY_REPORTS"], organisation="DfE", service=True, interaction="scheduled"
    )
    token = service.users.issue_token("quality.bot")
    with serving(create_app(service)) as url:
        yield url, token, service


def test_a_report_over_http_gets_no_path_to_data(served, tmp_path, monkeypatch, capfd):
    url, token, service = served
    folder = tmp_path / "nbs"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    for source, tags in PROBE:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "probe.ipynb")
    # the runner's own process has the service's settings in its environment: the kernel must not
    for name, value in {
        "SAFESTATS_DATA_DIR": "/srv/census",
        "SAFESTATS_STORE_URL": "sqlite:////srv/store.db",
        "SAFESTATS_SECRET_KEY_FILE": "/srv/key",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load({}, store_url="sqlite:////nonexistent/never-opened.db")
    result = run_report(
        "probe",
        {"user": "quality.bot"},
        settings=settings,
        out_root=tmp_path / "out",
        notebooks=folder,
        service=(url, token),
    )
    probe = json.loads((result.folder / "probe.json").read_text())
    assert probe["transport"] == "HttpTransport" and probe["rows"] == 4
    # the kernel talks to the runner over Unix sockets in a 0700 folder, not TCP ports any local
    # user could reach, and prints no warning about it
    assert probe["kernel"] == "ipc"
    assert "without encryption" not in capfd.readouterr().err
    allowed = {
        "SAFESTATS_URL",
        "SAFESTATS_TOKEN",
        "SAFESTATS_NOTEBOOK",
        "SAFESTATS_PURPOSE",
        "SAFESTATS_PARAMETERS",
        "SAFESTATS_RELEASE_DIR",
        "SAFESTATS_REPORT_DIR",
    }
    assert set(probe["env"]) <= allowed and "SAFESTATS_DATA_DIR" not in probe["env"]
    assert result.marking == "OFFICIAL (IL2)" and result.audit_records >= 1
    queries = [r for r in service.audit.records() if r["operation"] == "query"]
    assert queries and all(r["user"] == "quality.bot" and r["interaction"] == "scheduled" for r in queries)
    # what the client says of itself is recorded as claimed (the service cannot vouch for it)
    assert all(r["client"]["claimed"]["notebook"].startswith("quality/probe.ipynb#") for r in queries)
    assert not (result.folder / ".results.jsonl").exists()


def test_a_token_for_someone_else_is_refused_by_the_notebook(served):
    import safestats as ss
    from safestats.errors import ConfigError

    url, token, _ = served
    with pytest.raises(ConfigError, match="this token is quality.bot's, not demo.analyst's"):
        ss.connect(url, token=token, user="demo.analyst", environ={})
