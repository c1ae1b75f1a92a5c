"""`safestats foi answer`: the seed request answered for a quarter from the system itself — each
question (a)–(h) present and checked field by field against a scripted quarter of traffic
(analysts, a scheduled report, a refused restricted query, an expired grant, an approval by two
people) and the raw data."""

from __future__ import annotations

import datetime as dt
import json

import pytest

import safestats as ss
from safestats.audit.reports import records_band
from safestats.cli import main
from safestats.config import Settings
from safestats.service.pipeline import Service

SPRING = "2017-spring"


@pytest.fixture(scope="module")
def census(sample_dir):
    from tests.adversarial.judge import Census

    return Census(sample_dir)


@pytest.fixture
def traffic(sample_dir, tmp_path):
    """A scripted quarter: analysts, statisticians and a scheduled report; a refused restricted
    query; a researcher's grant that expired and another approved by two people."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    common = {"data_dir": sample_dir, "store_url": store, "environ": {}, "secret_key_file": str(tmp_path / "k")}
    env = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": store,
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "k"),
    }
    service = Service(Settings.load(env))
    analyst = ss.connect(user="demo.analyst", purpose="pupil numbers by phase", **common)
    analyst.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    with pytest.raises(ss.AccessDenied):  # the main users group asks for the restricted table
        analyst.table("Nationality").where(term=SPRING).group_by("nationality").count().run()
    stats = ss.connect(user="demo.statistician", interaction="ad hoc", **common)
    stats.sql("SELECT sex, COUNT(*) FROM PupilOnRoll WHERE term = '2017-spring' GROUP BY sex")
    unrestricted = ss.connect(user="demo.unrestricted", **common)
    unrestricted.table("Nationality").where(term=SPRING).group_by("nationality").count().run()
    bot = ss.connect(user="quality.reports", **{**common, "environ": {"SAFESTATS_NOTEBOOK": "quality/core.ipynb#q"}})
    bot.table("PupilOnRoll").where(term=SPRING).group_by("sex").count().run()
    researcher = ss.connect(user="demo.researcher", purpose="attendance by nationality", **common)
    expired = researcher.request_access(
        **{**APPLICATION, "tables": {"PupilOnRoll": ["ethnicity"]}, "start": "2026-04-01", "end": "2026-06-30"}
    )
    service.access.decide(expired["id"], "approve", by="Jo Owner", until="2026-06-30")
    with pytest.raises(ss.AccessDenied, match="expired"):
        researcher.table("PupilOnRoll").where(term=SPRING).group_by("ethnicity").count().run()
    granted = researcher.request_access(**APPLICATION)
    service.access.decide(granted["id"], "approve", by="Jo Owner", until="2027-09-30")
    service.access.decide(granted["id"], "approve", by="Sam Second", until="2027-09-30")
    researcher.table("Nationality").where(term=SPRING).group_by("nationality").count().run()
    return env, service


APPLICATION = {
    "group": "RESEARCHERS",
    "tables": {"Nationality": "all"},
    "purpose": "nationality and attendance",
    "legal_basis": "DEA 2017 s.64",
    "agreement": "DSA-UOX-2026-014",
    "start": dt.date.today().isoformat(),
    "end": "2027-09-30",
}


def _quarter_start() -> str:
    today = dt.date.today()
    return today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1).isoformat()


def _answer(env, capsys, *extra, start=None):
    today = dt.date.today().isoformat()
    args = ["foi", "answer", "--from", start or today, "--to", today, "--format", "json", *extra]
    assert main(args, environ=env) == 0
    return json.loads(capsys.readouterr().out)


def test_every_question_is_answered_from_the_log_and_checked_against_the_traffic(traffic, capsys, census):
    env, service = traffic
    records = [r for r in service.audit.records()]
    answer = _answer(env, capsys, start=_quarter_start())
    assert set(answer["answers"]) == set("abcdefgh") and answer["log_verification"]["ok"]
    assert answer["tree_head"]["size"] >= len(records)
    a = answer["answers"]
    assert all(a[x]["held"] is True for x in "abcdefgh")
    # (a): the policy file's grants (initial approvals) and each request, field by field
    apps = {str(x["request"]): x for x in a["a"]["applications"]}
    assert apps["policy:I_STORE_SC_UNRESTRICTED_USERS"]["tables"]["Nationality"] == "all"
    assert apps["policy:I_STORE_SC_UNRESTRICTED_USERS"]["agreement"] == "DSA-DFE-SC-2026"
    assert apps["policy:RESEARCHERS"]["until"] == "no expiry"
    old, new = apps["1"], apps["2"]
    assert (old["standing"], old["until"], old["tables"]) == ("expired", "2026-06-30", {"PupilOnRoll": ["ethnicity"]})
    assert len(old["approved_by"]) == 1 and len(new["approved_by"]) == 2  # the two-person rule
    assert (new["standing"], new["until"], new["tables"]) == ("in force", "2027-09-30", {"Nationality": "all"})
    assert new["purpose"] == "nationality and attendance" and new["legal_basis"] == "DEA 2017 s.64"
    assert new["agreement"] == "DSA-UOX-2026-014" and new["organisation"] == "UoX"
    assert "Jo Owner" not in json.dumps(a["a"]) and "demo.researcher" not in json.dumps(a["a"])  # pseudonyms
    # (b): no individual matched; per organisation and month, the requests, releases, refusals
    # and records used (rounded) agree with the log and the raw data
    month = dt.date.today().strftime("%Y-%m")
    for org in ("DfE", "ONS", "UoX"):
        row = next(v for v in a["b"]["volume"] if v["organisation"] == org and v["month"] == month)
        mine = [r for r in records if r["organisation"] == org]
        assert row["requests"] == len(mine)
        assert row["releases"] == sum(r["outcome"] == "released" for r in mine)
        assert row["refusals"] == sum(r["outcome"] == "refused" for r in mine)
        used = [r["records_used"] for r in mine if r["outcome"] == "released"]
        assert all(u == census.pupils(term=SPRING) for u in used)  # every release here read spring
        assert row["records_used"] == records_band(sum(used), 1000)
    uox = next(v for v in a["b"]["volume"] if v["organisation"] == "UoX")
    assert uox["purposes"] == "attendance by nationality"
    total = a["b"]["volume"][-1]
    assert total["organisation"] == "Total" and total["requests"] == len(records)
    # (c): each data request's fields used and returned, exactly as recorded; no exact records used
    data = [r for r in records if r["operation"] in ("query", "sql")]
    assert [(r["seq"], r["fields_returned"]) for r in a["c"]["requests"]] == [
        (r["seq"], ",".join(r["fields_returned"])) for r in data
    ]
    refused = [r for r in a["c"]["requests"] if r["outcome"] == "refused"]
    assert [r["tables"] for r in refused] == ["Nationality", "PupilOnRoll"] and refused[0]["fields_returned"] == ""
    assert all("records_used" not in r for r in [*a["c"]["requests"], *a["f"]["records"]])
    # (d): the store and the tables that hold nationality
    assert a["d"]["dataset"] == "school_census" and "Nationality" in a["d"]["tables"]
    # (e): the agreements, in force in the quarter
    refs = {x["reference"]: x for x in a["e"]["agreements"]}
    assert set(refs) == {"DSA-DFE-SC-2026", "DSA-UOX-2026-014"} and all(x["in_force"] for x in refs.values())
    assert refs["DSA-UOX-2026-014"]["parties"] == ["DfE data owner", "University of Exampleton"]
    # (f): every record of the period, human and machine interactions counted
    assert len(a["f"]["records"]) == len(records)
    assert a["f"]["summary"]["by_interaction"] == {
        k: sum(1 for r in records if r["interaction"] == k) for k in {r["interaction"] for r in records}
    }
    assert a["f"]["summary"]["by_interaction"]["scheduled"] >= 1
    # (g): members withheld by default (FOI: personal data); permissions select only, with the
    # approved request's grant shown where it holds
    assert answer["users_redacted"] and "demo.analyst" not in json.dumps(answer)
    assert a["g"]["permissions"]["I_STORE_SC_USERS"]["Nationality"] == "no access"
    assert "access request 2, until 2027-09-30" in a["g"]["permissions"]["RESEARCHERS"]["Nationality"]
    # (h): the shipped schedule publishes the volume of use monthly; the report is attached
    assert "published on a schedule: 0 7 1 * *" in a["h"]["answer"] and a["h"]["transparency"]["definitions"]
    assert answer["marking"].startswith("OFFICIAL") and "SENSITIVE" not in answer["marking"]


def test_with_names_it_is_sensitive_and_a_file_of_it_is_protected(traffic, capsys, tmp_path):
    env, service = traffic
    answer = _answer(env, capsys, "--names")
    assert answer["marking"].startswith("OFFICIAL-SENSITIVE") and "demo.analyst" in json.dumps(answer)
    today = dt.date.today().isoformat()
    args = ["foi", "answer", "--from", today, "--to", today, "--names", "--out", str(tmp_path / "foi.html")]
    assert main(args, environ=env) == 8  # no password: nothing written
    assert not list(tmp_path.glob("foi.html*"))
    assert main(args, environ={**env, "SAFESTATS_EXPORT_PASSWORD": "an FOI password"}) == 0
    from safestats.exports import open_protected

    page = open_protected(tmp_path / "foi.html.zip", password="an FOI password")["foi.html"].decode()
    assert all(f"<h2>({x})" in page for x in "abcdefgh") and "demo.analyst" in page
    reasons = [str(r["reason"]) for r in service.audit.records() if r["operation"] == "admin"]
    assert any(r.startswith("FOI answer") and "encrypted (zip)" in r for r in reasons)


def test_a_schedule_that_does_not_publish_the_volume_is_reported(traffic, capsys, tmp_path):
    env, _ = traffic
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("reports:\n  - {name: core_quality, cron: '0 7 1 * *'}\n")
    answer = _answer(env, capsys, "--schedule", str(schedule))
    assert "does not publish it" in answer["answers"]["h"]["answer"]
    assert main(["foi", "answer", "--from", "2026-12-31", "--to", "2026-12-01"], environ=env) == 2


def test_the_transparency_report_is_published_monthly_and_the_answer_says_so(traffic, capsys, tmp_path):
    from safestats.reports.runner import run_due
    from safestats.resources import RESOURCES
    from safestats.service.publishing import publish_transparency

    env, service = traffic
    now = dt.datetime.now(dt.UTC)
    first = now.replace(day=1, hour=7, minute=0, second=0, microsecond=0) + dt.timedelta(days=32)
    first = first.replace(day=1)  # the first of next month at 07:00: the shipped schedule's time
    said: list[str] = []
    run_due(
        RESOURCES / "schedule.yaml",
        settings=Settings.load(env),
        now=first,
        out_root=tmp_path / "reports",
        echo=said.append,
        publish_transparency=lambda when, root: publish_transparency(service, now=when, out_root=root),
    )
    period = now.strftime("%Y-%m")  # the month before "next month": this month, with the traffic in it
    folder = tmp_path / "reports" / "transparency" / f"transparency__{period}"
    assert any(str(folder) in m for m in said)
    published = json.loads((folder / "transparency.json").read_text())
    assert published["marking"].startswith("OFFICIAL") and published["tree_head"]
    assert published["volume"][-1]["requests"] >= 5 and "demo.analyst" not in (folder / "transparency.csv").read_text()
    assert json.loads((folder / "run.json").read_text())["report"] == "transparency"
    reasons = [str(r["reason"]) for r in service.audit.records()]
    assert any(r.startswith(f"transparency report {period} published") for r in reasons)
    # the shipped schedule publishes it, so the FOI answer says (h) is published regularly
    answer = _answer(env, capsys)
    assert "published on a schedule: 0 7 1 * *" in answer["answers"]["h"]["answer"]
    # without the service's log (a runner over HTTP) the entry fails and the others still run
    said.clear()
    run_due(
        RESOURCES / "schedule.yaml", settings=Settings.load(env), now=first, out_root=tmp_path / "r2", echo=said.append
    )
    assert any("transparency FAILED" in m for m in said)
