"""Handling caveats (Becta): the policy's text for each marking goes with every output — the
notebook rendering, the text form, CSV, charts, report pages, audit and incident reports."""

from __future__ import annotations

import datetime as dt
import json

import nbformat
import pytest
import yaml

import safestats as ss
from safestats.cli import main
from safestats.config import project_root
from safestats.errors import ConfigError

SENSITIVE = "Pupil data of the Exampleton study: not to leave the secure room; shred after use."
PLAIN = "Exampleton OFFICIAL text: internal use."


@pytest.fixture
def policy(tmp_path):
    raw = yaml.safe_load((project_root() / "src/safestats/resources/policy.yaml").read_text())
    raw["handling"] = {"OFFICIAL-SENSITIVE": SENSITIVE, "OFFICIAL": PLAIN}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def session(sample_dir, tmp_path, policy):
    return ss.connect(
        user="demo.unrestricted",
        data_dir=sample_dir,
        store_url=f"sqlite:///{tmp_path / 's.db'}",
        output_checking_dir=str(tmp_path / "checking"),
        policy=str(policy),
        environ={},
    )


def test_every_rendering_of_a_result_carries_the_policys_caveat(session, tmp_path):
    sensitive = session.table("PupilOnRoll_Unrestricted").where(term="2017-spring").group_by("phase").count().run()
    official = session.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    assert sensitive.provenance.caveat == SENSITIVE and official.provenance.caveat == PLAIN
    for result, text in ((sensitive, SENSITIVE), (official, PLAIN)):
        assert text in repr(result)
        assert text in result._repr_html_()
        csv = result.to_csv()
        assert f"# Handling: {text}" in csv.splitlines()[:3]
    from safestats import plots

    fig = plots.bar(sensitive, x="phase", y="count")
    assert SENSITIVE in [t.get_text() for t in fig.texts]
    # a chart of an OFFICIAL-SENSITIVE result is a file of it: protected like its CSV
    from safestats.errors import ExportError
    from safestats.exports import open_protected

    with pytest.raises(ExportError, match="written encrypted"):
        plots.save(fig, tmp_path / "chart.png")
    saved = plots.save(fig, tmp_path / "chart.png", password="a chart password")
    assert saved == tmp_path / "chart.png.zip" and not (tmp_path / "chart.png").exists()
    assert open_protected(saved, password="a chart password")["chart.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.save(plots.bar(official, x="phase", y="count"), tmp_path / "o.png") == tmp_path / "o.png"


def test_a_result_without_a_policy_caveat_keeps_safestats_own(sample_dir, tmp_path):
    s = ss.connect(data_dir=sample_dir, store_url=f"sqlite:///{tmp_path / 's.db'}", environ={})
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    from safestats.access.policy import load_policy
    from safestats.catalog import load_catalog

    assert r.provenance.caveat == load_policy(catalog=load_catalog()).caveat("OFFICIAL")
    assert "securely destroy" in load_policy(catalog=load_catalog()).caveat("OFFICIAL-SENSITIVE")


def test_report_pages_carry_the_caveat_on_screen_and_in_print(tmp_path, policy):
    from safestats.config import Settings
    from safestats.reports.runner import _handling, _html

    code = nbformat.v4.new_code_cell("the_code_behind = 6 * 7\nprint(the_code_behind)")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A report"), code])
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    settings = Settings.load({}, policy=str(policy))
    handling = _handling("OFFICIAL-SENSITIVE", [], settings, over_http=False)
    assert handling == SENSITIVE
    page = _html(
        path,
        "OFFICIAL-SENSITIVE (IL3)",
        "OFFICIAL-SENSITIVE",
        "school_quality",
        {"term": "2017-spring"},
        "run1",
        dt.datetime.now(dt.UTC),
        handling,
    )
    assert page.count(SENSITIVE) >= 3  # top and bottom banners (fixed: repeated on every printed page), provenance
    assert "@media print" in page
    # report mode: outputs, not code; a real title; the parameters in a header
    assert "42" in page and "the_code_behind" not in page
    assert "<title>[OFFICIAL-SENSITIVE (IL3)] school_quality — safestats report</title>" in page
    assert "<h1>school quality</h1>" in page and "<th>term</th><td>2017-spring</td>" in page
    over_http = _handling(
        "OFFICIAL-SENSITIVE", [{"label": "OFFICIAL-SENSITIVE", "handling": "as sent"}], settings, over_http=True
    )
    assert over_http == "as sent"


def test_audit_and_incident_reports_are_marked_with_their_caveat(sample_dir, tmp_path, policy, capsys):
    env = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "SAFESTATS_POLICY": str(policy),
    }
    today = dt.date.today().isoformat()
    assert main(["audit", "report", "--from", today, "--to", today, "--format", "csv"], environ=env) == 0
    named = capsys.readouterr().out.splitlines()
    assert named[0].startswith("# OFFICIAL-SENSITIVE") and named[-1].startswith("# OFFICIAL-SENSITIVE")
    assert f"# handling: {SENSITIVE}" in named
    assert (
        main(["audit", "report", "--from", today, "--to", today, "--redact-users", "--format", "json"], environ=env)
        == 0
    )
    redacted = json.loads(capsys.readouterr().out)
    assert redacted["marking"].startswith("OFFICIAL") and "SENSITIVE" not in redacted["marking"]
    assert redacted["handling"] == PLAIN
    assert main(["audit", "access", "--format", "html"], environ=env) == 0
    page = capsys.readouterr().out
    assert page.count(SENSITIVE) >= 2 and "<title>safestats [OFFICIAL-SENSITIVE" in page
    assert main(["incidents", "report", "--format", "json"], environ=env) == 0
    assert json.loads(capsys.readouterr().out)["handling"] == SENSITIVE


@pytest.mark.parametrize(
    ("handling", "message"),
    [({"SECRET": "x"}, "unknown markings"), ({"OFFICIAL": ""}, "handling text"), (["OFFICIAL"], "handling text")],
)
def test_a_bad_handling_section_is_refused(tmp_path, handling, message):
    from safestats.access.policy import load_policy
    from safestats.catalog import load_catalog

    raw = yaml.safe_load((project_root() / "src/safestats/resources/policy.yaml").read_text())
    raw["handling"] = handling
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_policy(path, catalog=load_catalog())
