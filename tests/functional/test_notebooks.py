"""Every notebook runs, the quality reports find the injected problems, and report runs are
published whole or not at all."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import nbformat
import pytest

from safestats.audit.log import AuditLog
from safestats.cli import main
from safestats.config import Settings
from safestats.errors import ConfigError, QueryError
from safestats.reports.cron import due, parse
from safestats.reports.runner import ReportFailed, run_due, run_report
from tests.conftest import ROOT

ANALYST_NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").rglob("*.ipynb") if "quality" not in p.parts and ".ipynb_checkpoints" not in p.parts
)


@pytest.fixture
def settings(sample_dir, store_url, tmp_path):
    return Settings.load({}, data_dir=sample_dir, store_url=store_url, output_checking_dir=str(tmp_path / "checks"))


@pytest.mark.slow
@pytest.mark.parametrize("path", ANALYST_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_analyst_notebooks_run(path, tmp_path, sample_dir, store_url, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("SAFESTATS_DATA_DIR", str(sample_dir))
    monkeypatch.setenv("SAFESTATS_STORE_URL", store_url)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    errors = [
        o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert errors == []
    log = AuditLog.open(store_url)
    assert log.count() > 0 and log.verify().ok


@pytest.mark.slow
def test_nationality_quality_report_finds_the_injected_problems(settings, sample_dir, tmp_path):
    manifest = json.loads((sample_dir / "manifest.json").read_text())
    rates = manifest["quality_rates"]
    secret = "a long test password"
    result = run_report(
        "nationality_quality", {"term": "2017-spring"}, settings=settings, out_root=tmp_path, password=secret
    )
    # OFFICIAL-SENSITIVE: published as one protected archive, run.json in clear beside it
    assert {p.name for p in result.folder.iterdir()} == {"run.json", "nationality_quality.zip"}
    run = json.loads((result.folder / "run.json").read_text())
    assert run["protection"] == "zip" and run["archive"] == "nationality_quality.zip"
    from safestats.exports import open_protected

    inside = open_protected(result.archive, password=secret)
    with pytest.raises(Exception, match="wrong password"):
        open_protected(result.archive, password="not the password at all")
    opened = tmp_path / "opened"
    for name, data in inside.items():
        (opened / name).parent.mkdir(parents=True, exist_ok=True)
        (opened / name).write_bytes(data)
    exports = [r for r in AuditLog.open(settings.store_url).records() if r["operation"] == "export"]
    assert len(exports) == result.audit_records and all("encrypted (zip)" in r["reason"] for r in exports)
    assert all(r["client"].get("notebook") == result.run_id for r in exports)  # by the run, not "interactive"
    numbers = json.loads((opened / "key_numbers.json").read_text())
    # exact (sdc) counts; cells under the threshold are left out, so allow a little slack
    assert numbers["proficiency_for_english_rate"] == pytest.approx(rates["proficiency_for_english"], rel=0.35)
    assert numbers["nationality_invalid_rate"] == pytest.approx(rates["invalid_code"], rel=0.35)
    assert numbers["schools_all_not_obtained_share"] == pytest.approx(rates["school_all_not_obtained"], abs=0.03)
    assert 0.05 < numbers["nationality_not_obtained_rate"] < 0.35 and 0.005 < numbers["nationality_refused_rate"] < 0.1
    # the run is published whole, marked, and every request was audited as scheduled
    assert {p.name for p in opened.iterdir()} >= {
        "nationality_quality.ipynb",
        "nationality_quality.html",
        "key_numbers.json",
        "MARKING.txt",
    }
    page = (opened / "nationality_quality.html").read_text()
    assert page.count("OFFICIAL-SENSITIVE (IL3)") >= 3 and "safestats-page-marking top" in page
    assert "safestats-page-marking bottom" in page and '"term": "2017-spring"' in __import__("html").unescape(page)
    records = [
        r
        for r in AuditLog.open(settings.store_url).records()
        if r["client"].get("notebook") == result.run_id and r["operation"] != "export"  # exports: above
    ]
    saves = [r for r in records if r["operation"] == "release save"]
    assert len(records) - len(saves) == result.audit_records > 10
    assert len(saves) == len(list((opened / "releases").iterdir())) == result.audit_records  # one per table
    assert {r["interaction"] for r in records} == {"scheduled"} and {r["user"] for r in records} == {"quality.reports"}
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
def test_core_quality_report(settings, sample_dir, tmp_path):
    rates = json.loads((sample_dir / "manifest.json").read_text())["quality_rates"]
    # asked for in clear (OFFICIAL-SENSITIVE: ethnicity, SEN): the folder as before, and audited
    result = run_report("core_quality", {"term": "2017-spring"}, settings=settings, out_root=tmp_path, unencrypted=True)
    assert result.archive is None and json.loads((result.folder / "run.json").read_text())["protection"] == "none"
    exports = [r for r in AuditLog.open(settings.store_url).records() if r["operation"] == "export"]
    assert len(exports) == result.audit_records and all("in clear" in r["reason"] for r in exports)
    numbers = json.loads((result.folder / "key_numbers.json").read_text())
    # the report's tables are marked frames: a banner on each, withheld cells as c, never <NA>
    executed = nbformat.read(result.folder / "core_quality.ipynb", as_version=4)
    tables = [
        o["data"]["text/html"]
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {}) and "<table" in o["data"]["text/html"]
    ]
    assert len(tables) >= 3 and all("OFFICIAL" in t for t in tables)
    assert not [t for t in tables if "&lt;NA&gt;" in t or "<NA>" in t]
    assert any("derived: merged with audit record" in t for t in tables)
    assert numbers["dual_registration_rate"] == pytest.approx(rates["dual_registration"], rel=0.35)
    assert numbers["age_inconsistent_rate"] == pytest.approx(rates["age_inconsistent"], rel=0.6)
    # every table the report made is a release, with the notebook and parameters that made it
    from safestats.releases import verify_bundle
    from safestats.service.pipeline import Service

    bundles = sorted((result.folder / "releases").iterdir())
    run = json.loads((result.folder / "run.json").read_text())
    assert len(bundles) >= 5 and run["releases"] == [b.name for b in bundles]
    service = Service(settings)
    for bundle in bundles:
        verify_bundle(bundle, audit=service.audit, store=service.results)
    manifest = json.loads((bundles[0] / "manifest.json").read_text())
    assert manifest["notebook"]["path"].startswith("quality/core_quality.ipynb#")
    assert manifest["notebook"]["parameters"] == {"term": "2017-spring"}
    assert (bundles[0] / "notebook.ipynb").read_bytes() == (ROOT / "notebooks/quality/core_quality.ipynb").read_bytes()
    # a researcher runs the same code on the synthetic census
    from safestats.cli import main

    assert (
        main(
            ["releases", "rerun", str(bundles[0])],
            environ={
                "SAFESTATS_DATA_DIR": str(sample_dir),
                "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 'researcher.db'}",
                "SAFESTATS_OUTPUT_CHECKING_DIR": str(tmp_path / "researcher"),
            },
        )
        == 0
    )
    rerun = nbformat.read(bundles[0].parent / f"{bundles[0].name}-rerun" / "rerun.ipynb", as_version=4)
    assert not [
        o for c in rerun.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    verify_bundle(bundles[0], audit=service.audit, store=service.results)  # the re-run left the bundle as it was


def _broken_notebooks(tmp_path: Path) -> Path:
    folder = tmp_path / "nbs"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise RuntimeError('the census is on fire')")]
    nbformat.write(nb, folder / "broken.ipynb")
    ok = nbformat.v4.new_notebook()
    ok.metadata["kernelspec"] = nb.metadata["kernelspec"]
    ok.cells = [params, nbformat.v4.new_code_cell("print(x)")]
    nbformat.write(ok, folder / "tiny.ipynb")
    return folder


def test_a_failed_run_is_retried_reported_and_never_half_written(settings, tmp_path):
    notebooks = _broken_notebooks(tmp_path)
    out = tmp_path / "reports"
    messages: list[str] = []
    with pytest.raises(ReportFailed, match="failed after 2 attempt"):
        run_report(
            "broken", {"x": 2}, settings=settings, out_root=out, retries=1, notebooks=notebooks, echo=messages.append
        )
    assert len(messages) == 2 and "the census is on fire" in messages[0]
    assert not (out / "broken").exists() and not list(out.glob(".tmp-*"))
    failure = json.loads(next((out / "failed").glob("broken__*.json")).read_text())
    assert failure["attempts"] == 2 and "the census is on fire" in failure["error"]


def test_reports_status_lists_recent_runs_published_and_failed(settings, tmp_path, capsys):
    from safestats.cli import main

    notebooks = _broken_notebooks(tmp_path)
    out = tmp_path / "reports"
    run_report("tiny", {"x": 5}, settings=settings, out_root=out, notebooks=notebooks)
    with pytest.raises(ReportFailed):
        run_report("broken", {"x": 1}, settings=settings, out_root=out, notebooks=notebooks)
    assert main(["reports", "status", "--out", str(out)], environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert any("tiny" in line and "published" in line and "x=5" in line for line in lines)
    assert any("broken" in line and "failed after 1 attempt(s)" in line for line in lines)
    assert main(["reports", "status", "--out", str(tmp_path / "none")], environ={}) == 0
    assert "no report runs yet" in capsys.readouterr().out


def test_a_killed_run_is_cleaned_up_by_the_next_and_a_live_one_is_not(settings, tmp_path):
    import os
    import subprocess

    from safestats.reports.runner import clean_killed_runs

    notebooks = _broken_notebooks(tmp_path)
    out = tmp_path / "reports"
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = out / ".tmp-tiny__x-1__20170116T060000Z"
    killed.mkdir(parents=True)
    (killed / ".pid").write_text(str(dead.pid))  # a process that no longer exists
    (killed / "tiny.ipynb").write_text("{}")
    live = out / ".tmp-tiny__x-2__20170116T060000Z"
    live.mkdir()
    (live / ".pid").write_text(str(os.getpid()))  # this test's own process: running
    result = run_report("tiny", {"x": 5}, settings=settings, out_root=out, notebooks=notebooks)
    assert not killed.exists() and live.exists()
    assert ".pid" not in {p.name for p in result.folder.iterdir()}
    assert clean_killed_runs(out) == []


def test_unknown_report(settings, tmp_path):
    from safestats.errors import UserError

    with pytest.raises(UserError, match="no report 'nope'; reports are: core_quality, nationality_quality"):
        run_report("nope", {}, settings=settings, out_root=tmp_path)


def test_the_scheduler_runs_what_is_due(settings, tmp_path):
    notebooks = _broken_notebooks(tmp_path)
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        "reports:\n"
        "  - {name: tiny, cron: '0 6 * * 1', params: {x: 5}, retries: 0}\n"
        "  - {name: broken, cron: '0 6 * * *', retries: 0}\n"
        "  - {name: tiny, cron: '30 7 * * *'}\n"
    )
    out = tmp_path / "reports"
    said: list[str] = []
    monday_six = dt.datetime(2017, 1, 16, 6, 0, tzinfo=dt.UTC)
    results = run_due(schedule, settings=settings, now=monday_six, out_root=out, echo=said.append, notebooks=notebooks)
    assert [r.name for r in results] == ["tiny"]
    assert any("broken FAILED" in m for m in said)  # a failure is reported, the others still run
    assert (
        run_due(
            schedule,
            settings=settings,
            now=monday_six.replace(hour=9),
            out_root=out,
            echo=said.append,
            notebooks=notebooks,
        )
        == []
    )


@pytest.mark.parametrize(
    ("expr", "when", "expected"),
    [
        ("0 6 * * 1", dt.datetime(2017, 1, 16, 6, 0), True),  # Monday
        ("0 6 * * 1", dt.datetime(2017, 1, 17, 6, 0), False),
        ("*/15 * * * *", dt.datetime(2017, 1, 17, 9, 45), True),
        ("*/15 * * * *", dt.datetime(2017, 1, 17, 9, 46), False),
        ("30 6 1 * *", dt.datetime(2017, 3, 1, 6, 30), True),
        ("0 0 1 * 0", dt.datetime(2017, 1, 15, 0, 0), True),  # either day field, as in cron (a Sunday)
        ("0 9-17/4 * 1-6 *", dt.datetime(2017, 5, 2, 13, 0), True),
        ("0 9-17/4 * 1-6 *", dt.datetime(2017, 7, 2, 13, 0), False),
    ],
)
def test_cron(expr, when, expected):
    assert due(expr, when) is expected


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "a b c d e", "*/0 * * * *"])
def test_bad_cron(bad):
    with pytest.raises(ConfigError):
        parse(bad)


def test_shipped_schedule_is_valid():
    import yaml

    from safestats.reports.runner import available
    from safestats.resources import RESOURCES

    entries = yaml.safe_load((RESOURCES / "schedule.yaml").read_text())["reports"]
    for entry in entries:
        parse(entry["cron"])
        assert entry["name"] in [*available(), "transparency"]  # transparency: the monthly volume of use


def test_reports_cli_parses_parameters(capsys):
    from safestats.cli import main

    assert main(["reports", "run", "nationality_quality", "--param", "term"], environ={}) == 2
    assert "--param takes KEY=VALUE" in capsys.readouterr().err
    assert main(["reports", "list"], environ={}) == 0
    assert capsys.readouterr().out.split() == ["core_quality", "nationality_quality"]


def test_report_parameters_are_checked_before_anything_runs_and_user_errors_are_not_retried(settings, tmp_path):
    notebooks = _broken_notebooks(tmp_path)
    out = tmp_path / "reports"
    with pytest.raises(QueryError, match="report tiny has no parameter 'y'.*its parameters are: x"):
        run_report("tiny", {"y": 3}, settings=settings, out_root=out, notebooks=notebooks)
    with pytest.raises(QueryError, match="parameter x takes a int like 1, not 'two'"):
        run_report("tiny", {"x": "two"}, settings=settings, out_root=out, notebooks=notebooks)
    assert not out.exists() or not any(out.iterdir())  # nothing ran, nothing was written
    assert run_report("tiny", {"x": "5"}, settings=settings, out_root=out, notebooks=notebooks).folder.exists()
    refusing = nbformat.v4.new_notebook()
    refusing.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    refusing.cells = [nbformat.v4.new_code_cell("import safestats.errors as e\nraise e.QueryError('no value 2099')")]
    nbformat.write(refusing, notebooks / "refusing.ipynb")
    messages: list[str] = []
    with pytest.raises(QueryError, match="the report stopped: no value 2099"):
        run_report(
            "refusing", {}, settings=settings, out_root=out, retries=2, notebooks=notebooks, echo=messages.append
        )
    assert messages == [] and not list(out.glob(".tmp-*"))  # one attempt: a user error is not retried


def test_an_unknown_report_parameter_is_one_line_and_exit_code_4(settings, capsys):
    env = {"SAFESTATS_DATA_DIR": str(settings.data_dir), "SAFESTATS_STORE_URL": settings.store_url}
    assert main(["reports", "run", "core_quality", "--param", "trem=2017-spring"], environ=env) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'term'" in err[0]
