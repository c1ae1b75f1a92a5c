"""The data owner's reports reproduce known activity exactly, withhold names when asked, and
say so when the log does not verify."""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction

import pytest
import sqlalchemy as sa

import safestats as ss
from safestats.audit.reports import access_report, audit_trail, records_band, render, transparency
from safestats.cli import main
from safestats.config import Settings
from safestats.service.pipeline import Service

Q = ss.Query("PupilOnRoll", (ss.Aggregate("count"),), ("phase",), (ss.Filter("term", "==", "2017-spring"),))


@pytest.fixture
def activity(sample_dir, store_url, tmp_path):
    """A known session: manual, ad hoc and scheduled requests, answered and refused, by several
    users of three organisations."""
    service = Service(
        Settings.load({}, data_dir=sample_dir, store_url=store_url, secret_key_file=str(tmp_path / "key"))
    )
    analyst = service.identity("demo.analyst", interaction="manual")
    service.query(Q.to_wire(), identity=analyst)
    with pytest.raises(ss.AccessDenied):
        service.sql("SELECT COUNT(*) FROM Nationality", identity=analyst)
    stats = service.identity("demo.statistician", interaction="ad hoc")
    service.sql("SELECT sex, COUNT(*) FROM PupilOnRoll GROUP BY sex", identity=stats)
    reports = service.identity("quality.reports", interaction="manual")  # the policy makes it scheduled
    service.query(ss.Query("Nationality", (ss.Aggregate("count_pupils"),), ("term",)).to_wire(), identity=reports)
    researcher = service.identity("demo.researcher")
    service.set_budget("demo.researcher", Fraction(1, 100))
    with pytest.raises(ss.UserError):
        service.query(Q.to_wire(), identity=researcher)
    return service


def _period():
    today = dt.datetime.now(dt.UTC).date()
    return today.isoformat(), (today + dt.timedelta(days=1)).isoformat()


def test_the_audit_trail_reproduces_the_session_exactly(activity):
    report = audit_trail(activity.audit, *_period())
    rows = report["records"]
    assert [(r["user"], r["interaction"], r["operation"], r["outcome"]) for r in rows] == [
        ("demo.analyst", "manual", "query", "released"),
        ("demo.analyst", "manual", "sql", "refused"),
        ("demo.statistician", "ad hoc", "sql", "released"),
        ("quality.reports", "scheduled", "query", "released"),
        ("data owner", "ad hoc", "budget set", "answered"),
        ("demo.researcher", "manual", "query", "refused"),
    ]
    first = rows[0]
    assert first["tables"] == "PupilOnRoll" and first["fields_filter"] == "term" and first["fields_group"] == "phase"
    assert first["fields_returned"] == "phase,count" and first["privacy_spent"] == "1/2"
    assert first["organisation"] == "DfE" and rows[2]["organisation"] == "ONS" and rows[5]["organisation"] == "UoX"
    assert rows[5]["reason"].startswith("this query needs rho")
    assert report["summary"] == {
        "requests": 6,
        "by_month": {rows[0]["time_utc"][:7]: 6},
        "by_interaction": {"ad hoc": 2, "manual": 3, "scheduled": 1},
        "by_table": {"Nationality": 2, "PupilOnRoll": 3},
        "by_outcome": {"answered": 1, "refused": 2, "released": 3},
    }
    assert report["log_verification"]["ok"] and report["software"].startswith("safestats ")
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)


def test_transparency_counts_by_organisation_and_month(activity):
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    report = transparency(activity.audit, month)
    *rows, total = report["volume"]
    assert {(r["organisation"], r["requests"], r["releases"], r["refusals"]) for r in rows} == {
        ("DfE", 3, 2, 1),
        ("ONS", 1, 1, 0),
        ("UoX", 1, 0, 1),
        ("(data owner)", 1, 0, 0),
    }
    # the columns are defined in the report, and add up: requests = releases + refusals + other
    counts = {k: total[k] for k in ("organisation", "month", "requests", "releases", "refusals", "other")}
    assert counts == {"organisation": "Total", "month": month, "requests": 6, "releases": 3, "refusals": 2, "other": 1}
    assert all(r["requests"] == r["releases"] + r["refusals"] + r["other"] for r in report["volume"])
    # records used: the releases' scopes summed, rounded to the nearest 1,000, per organisation
    released = [r for r in activity.audit.records() if r["outcome"] == "released"]
    assert total["records_used"] == records_band(sum(r["records_used"] for r in released), 1000)
    assert next(r for r in rows if r["organisation"] == "UoX")["records_used"] == "0"  # refused: none used
    assert set(report["definitions"]) == {"requests", "releases", "refusals", "other", "records_used", "purposes"}
    csv = render(report, "csv")
    assert "# releases: requests whose result was released" in csv and "Total," in csv


def test_the_period_is_shown_as_given_and_a_reversed_range_is_refused(activity, sample_dir, store_url, capsys):
    env = {"SAFESTATS_DATA_DIR": str(sample_dir), "SAFESTATS_STORE_URL": store_url}
    assert main(["audit", "report", "--from", "2026-12-01", "--to", "2026-12-31", "--format", "csv"], environ=env) == 0
    assert "# period: 2026-12-01 to 2026-12-31 (inclusive)" in capsys.readouterr().out
    assert main(["audit", "report", "--from", "2026-12-31", "--to", "2026-12-01"], environ=env) == 2
    assert "is before --from" in capsys.readouterr().err
    assert main(["audit", "transparency", "--period", "2026-Q4", "--format", "csv"], environ=env) == 0
    assert "# period: 2026-10-01 to 2026-12-31 (inclusive)" in capsys.readouterr().out


def test_bar_labels_never_run_into_their_bars():
    import re

    from safestats.audit.reports import _bars

    svg = _bars({"a very long table name indeed": 3, "x": 1}, "By table")
    left = float(re.search(r'<rect x="([0-9.]+)"', svg).group(1))
    assert left >= 7 * len("a very long table name indeed")


def test_access_report_lists_members_permissions_and_contents(activity):
    report = access_report(activity.policy, activity.catalog, activity.users.users(), activity.audit)
    assert report["groups"]["I_STORE_SC_UNRESTRICTED_USERS"]["members"] == ["demo.unrestricted"]
    perms = report["permissions"]
    assert perms["I_STORE_SC_USERS"]["Nationality"] == "no access"
    assert perms["I_STORE_SC_UNRESTRICTED_USERS"]["Nationality"] == "select: all columns"
    assert perms["RESEARCHERS"]["PupilOnRoll"].startswith("select: first_language, fsm_eligible")
    cols = {c["name"]: c for c in report["tables"]["Nationality"]["columns"]}
    assert cols["nationality"]["classification"] == "OFFICIAL-SENSITIVE"


@pytest.mark.parametrize("fmt", ["html", "csv", "json"])
def test_redaction_leaves_no_user_name_in_any_format(activity, fmt):
    key = activity.secret_key()
    names = list(activity.policy.users)
    for report in (
        audit_trail(activity.audit, *_period(), redact=True, key=key, names=names),
        access_report(activity.policy, activity.catalog, {}, activity.audit, redact=True, key=key),
    ):
        text = render(report, fmt)
        assert not [n for n in names if n in text], fmt
    trail = audit_trail(activity.audit, *_period(), redact=True, key=key)["records"]
    assert trail[0]["user"] == trail[1]["user"] != trail[2]["user"]  # stable pseudonyms


@pytest.mark.parametrize("fmt", ["html", "csv", "json"])
def test_a_tampered_log_makes_every_report_say_so(activity, fmt):
    with activity.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET outcome = 'released' WHERE seq = 2"))
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    for report in (
        audit_trail(activity.audit, *_period()),
        transparency(activity.audit, month),
        access_report(activity.policy, activity.catalog, {}, activity.audit),
    ):
        assert report["log_verification"]["ok"] is False
        text = render(report, fmt)
        assert ("NOT VERIFIED" in text) if fmt != "json" else json.loads(text)["log_verification"]["ok"] is False


def test_the_cli_reports_and_audits_their_making(activity, sample_dir, store_url, tmp_path, capsys):
    env = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": store_url,
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "key"),
    }
    start, end = _period()
    out = tmp_path / "trail.html"
    # it names users: written to a file in clear only when asked (protection: tests/adversarial/test_protected_exports.py)
    assert (
        main(["audit", "report", "--from", start, "--to", start, "--out", str(out), "--unencrypted"], environ=env) == 0
    )
    assert "Requests by month" in out.read_text() and "<svg" in out.read_text()
    assert main(["audit", "transparency", "--period", start[:7], "--format", "csv"], environ=env) == 0
    assert main(["audit", "access", "--format", "json", "--redact-users"], environ=env) == 0
    capsys.readouterr()
    last = list(activity.audit.records())[-3:]
    assert [r["operation"] for r in last] == ["admin"] * 3
    assert last[0]["reason"].startswith("audit report") and last[1]["reason"].startswith("transparency report")
    assert main(["audit", "report", "--from", "yesterday", "--to", start], environ=env) == 2


@pytest.mark.parametrize("fmt", ["json", "csv", "html"])
def test_every_report_names_the_signed_tree_head_it_was_read_at(activity, fmt):
    from safestats.audit.heads import load_public_key

    report = audit_trail(activity.audit, *_period())
    head = report["tree_head"]
    assert head["size"] == activity.audit.count()  # signed as the report was read
    assert activity.audit.latest_head().verify(load_public_key(activity.settings.signing_key_file + ".pub"))
    text = render(report, fmt)
    if fmt == "json":
        assert '"tree_head"' in text and head["root"] in text
    else:
        assert f"signed tree head: {head['size']} records, root {head['root']}" in text
