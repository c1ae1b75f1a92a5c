"""The cross-table rule: a user's earlier sdc tables count as published, so differencing a
one-way table against a two-way table (or an LP over both) recovers no suppressed cell. The
same attacks succeed when tables are protected one by one (showing the tests can fail)."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest
import yaml

import safestats as ss
from safestats.access.policy import DEFAULT_POLICY
from tests.oracles import attacker_intervals

THRESHOLD = 10
TERM = "2017-spring"


def _policy(tmp_path, **disclosure):
    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    raw["groups"]["SC_OFFICIAL_STATISTICS"]["disclosure"] = {"mode": "sdc", "threshold": THRESHOLD, **disclosure}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _tables(session, one_way_first: bool):
    def one():
        return session.table("PupilOnRoll").where(term=TERM).group_by("la_code").count().run()

    def two():
        return session.table("PupilOnRoll").where(term=TERM).group_by("la_code", "fsm_eligible").count().run()

    if one_way_first:
        t1 = one()
        return t1, two()
    t2 = two()
    return one(), t2


def _exact(sample_dir) -> pd.DataFrame:
    return duckdb.execute(f"""SELECT la_code, fsm_eligible, count(*) n FROM '{sample_dir}/PupilOnRoll.parquet'
        WHERE term = '{TERM}' GROUP BY ALL""").df()


def differencing_attack(one_way: pd.DataFrame, two_way: pd.DataFrame) -> dict[tuple, int]:
    """One-way LA total minus the two-way table's other published cells of the LA."""
    found = {}
    totals = one_way.set_index("la_code")["count"]
    for la, rows in two_way.groupby("la_code"):
        hidden = rows[rows["count"].isna()]
        if len(hidden) == 1 and pd.notna(totals.get(la)):
            found[(la, hidden["fsm_eligible"].iloc[0])] = int(totals[la] - rows["count"].sum())
    return found


def lp_attack(one_way: pd.DataFrame, two_way: pd.DataFrame) -> dict[tuple, tuple[float, float]]:
    """The interval of every suppressed two-way cell given both tables (HiGHS)."""
    inner = two_way.reset_index(drop=True)
    n = len(inner)
    columns = [frozenset([i]) for i in range(n)]
    values = [0 if pd.isna(v) else int(v) for v in inner["count"]]
    hidden = {i for i in range(n) if pd.isna(inner["count"][i])}
    for _, row in one_way.iterrows():
        if pd.notna(row["count"]):
            columns.append(frozenset(inner.index[inner["la_code"] == row["la_code"]].tolist()))
            values.append(int(row["count"]))
    intervals = attacker_intervals(columns, values, hidden, n)
    return {(inner.loc[i, "la_code"], inner.loc[i, "fsm_eligible"]): iv for i, iv in intervals.items()}


@pytest.mark.parametrize("one_way_first", [True, False], ids=["one-way first", "two-way first"])
def test_threshold_only_tables_are_undone_by_differencing(connect, tmp_path, sample_dir, one_way_first):
    s = connect("demo.statistician", policy=_policy(tmp_path, link_tables=False))
    t1, t2 = _tables(s, one_way_first)
    exact = _exact(sample_dir).set_index(["la_code", "fsm_eligible"])["n"]
    found = differencing_attack(t1, t2)
    assert len(found) >= 2  # the attack works: suppressed cells recovered exactly
    for cell, value in found.items():
        assert value == exact.get(cell, 0) and value < THRESHOLD
    narrow = [c for c, (lo, hi) in lp_attack(t1, t2).items() if hi - lo < THRESHOLD]
    assert len(narrow) >= len(found)


@pytest.mark.parametrize("one_way_first", [True, False], ids=["one-way first", "two-way first"])
def test_linked_tables_defeat_differencing_and_the_lp(connect, tmp_path, sample_dir, one_way_first):
    s = connect("demo.statistician", policy=_policy(tmp_path))
    t1, t2 = _tables(s, one_way_first)
    assert differencing_attack(t1, t2) == {}
    intervals = lp_attack(t1, t2)
    assert intervals and all(hi - lo >= THRESHOLD for lo, hi in intervals.values())
    # protection costs some cells, not the tables: the later table hides a few more than its
    # own small cells (the secondaries), and still publishes most of its cells
    assert t1["count"].notna().sum() > 100 and t2["count"].notna().sum() > 150
    exact = _exact(sample_dir)
    if one_way_first:
        small = int((exact["n"] < THRESHOLD).sum()) + int(len(t2) - len(exact))  # empty cells are small too
        assert t2["count"].isna().sum() > small
    else:
        small = int((exact.groupby("la_code")["n"].sum() < THRESHOLD).sum())
        assert t1["count"].isna().sum() > small


def test_linking_is_per_domain_and_family(connect, tmp_path, sample_dir):
    """Tables of another term with no term in common are not linked; distinct pupils are linked
    with row counts (same pupils); another user of the same domain sees the first user's tables;
    a group in a separate domain is checked on its own."""
    from pathlib import Path

    raw = yaml.safe_load(Path(_policy(tmp_path)).read_text())
    raw["groups"]["SC_QUALITY_REPORTS"]["disclosure"] = {"mode": "sdc", "threshold": THRESHOLD, "domain": "internal"}
    policy = tmp_path / "domains.yaml"
    policy.write_text(yaml.safe_dump(raw))
    a = connect("demo.statistician", policy=str(policy))
    a.table("PupilOnRoll").where(term=TERM).group_by("la_code", "fsm_eligible").count().run()

    def small(term):
        exact = duckdb.execute(f"""SELECT la_code, count(DISTINCT pupil_id) n
            FROM '{sample_dir}/PupilOnRoll.parquet' WHERE term = '{term}' GROUP BY ALL""").df()
        return exact, set(exact.loc[exact["n"] < THRESHOLD, "la_code"])

    other_term = a.table("PupilOnRoll").where(term="2016-autumn").group_by("la_code").count().run()
    exact, own = small("2016-autumn")
    own |= set(other_term["la_code"]) - set(exact["la_code"])
    assert own and set(other_term.loc[other_term["count"].isna(), "la_code"]) == own  # not linked
    pupils = a.table("PupilOnRoll").where(term=TERM).group_by("la_code").count_pupils().run()
    exact, own = small(TERM)
    hidden = set(pupils.loc[pupils["pupils"].isna(), "la_code"])
    assert own < hidden  # linked with the LA x FSM row counts: more LAs withheld than its own small ones
    assert set(pupils.provenance.reasons["pupils"].values()) >= {"threshold", "linked"}
    one_way = (
        connect("demo.statistician", policy=str(policy))
        .table("PupilOnRoll")
        .where(term=TERM)
        .group_by("la_code")
        .count()
        .run()
    )
    apart = (
        connect("quality.reports", policy=str(policy))
        .table("PupilOnRoll")
        .where(term=TERM)
        .group_by("la_code")
        .count()
        .run()
    )
    # the separate domain has no earlier tables: it publishes LA totals the published domain withholds
    assert one_way["count"].isna().sum() > apart["count"].isna().sum()
    assert set(one_way.loc[one_way["count"].isna(), "la_code"]) >= own


def test_the_published_structure_survives_a_restart(connect, tmp_path, store_url):
    policy = _policy(tmp_path)
    connect("demo.statistician", policy=policy).table("PupilOnRoll").where(term=TERM).group_by(
        "la_code", "fsm_eligible"
    ).count().run()
    again = connect("demo.statistician", policy=policy)  # a new service over the same store
    t1 = again.table("PupilOnRoll").where(term=TERM).group_by("la_code").count().run()
    t2 = again.table("PupilOnRoll").where(term=TERM).group_by("la_code", "fsm_eligible").count().run()
    assert differencing_attack(t1, t2) == {}


def test_tables_too_large_to_check_together_are_refused(connect, tmp_path, store_url):
    """Fail closed: a table whose refinement with the domain's earlier tables is larger than
    the cap is refused (and audited), never published for review."""
    from safestats.audit.log import AuditLog

    s = connect("demo.statistician", policy=_policy(tmp_path), max_link_cells=500)
    s.table("PupilOnRoll").where(term=TERM).group_by("la_code", "fsm_eligible").count().run()
    with pytest.raises(ss.DisclosureRefused, match="need more than 500 (atoms|cells) to check"):
        s.table("PupilOnRoll").where(term=TERM).group_by("la_code", "sex").count().run()
    *_, last = [r for r in AuditLog.open(store_url).records() if r["operation"] != "incident"]
    assert last["outcome"] == "refused"


def test_each_sdc_release_leaves_an_output_checking_record(connect, tmp_path, store_url):
    """ACRO's results.json layout: what its loader (acro.record.load_records) and the SACRO
    viewer read — version, results, and per output uid, status, type, properties, files with
    their sdc summary and cells, outcome, command, summary, timestamp, comments, exception —
    and a checksum per file."""
    import hashlib
    import json
    from pathlib import Path

    from safestats.audit.log import AuditLog

    outputs = tmp_path / "checks"
    s = connect("demo.statistician", policy=_policy(tmp_path), output_checking_dir=str(outputs))
    r = s.table("PupilOnRoll").where(term=TERM).group_by("la_code", "fsm_eligible").count().run()
    s.table("PupilOnRoll").where(term=TERM).group_by("la_code").count().run()
    (day,) = list((outputs / "demo.statistician").iterdir())
    doc = json.loads((day / "results.json").read_text())
    names = ["000_PupilOnRoll_by_la_code_fsm_eligible", "001_PupilOnRoll_by_la_code"]  # readable, in order
    assert doc["tool"] == "safestats" and list(doc["results"]) == names
    first = doc["results"][names[0]]
    assert set(first) == {
        "uid",
        "status",
        "type",
        "properties",
        "files",
        "outcome",
        "command",
        "summary",
        "timestamp",
        "comments",
        "exception",
        "fair",
    }
    assert first["status"] == "review" and first["type"] == "table" and first["exception"] == ""
    assert first["properties"]["mitigation"] == "suppression"
    (file,) = first["files"]
    sdc = file["sdc"]
    assert sdc["summary"]["suppressed"] is True and sdc["summary"]["threshold"] == (r.symbols["count"] == "c").sum()
    assert all(len(cell) == 2 for cell in sdc["cells"]["threshold"])
    table = pd.read_csv(day / file["name"], dtype=str)
    row, col = sdc["cells"]["threshold"][0]
    assert table.iloc[row, col] == "c"  # the cells point at the withheld values of the CSV
    assert first["outcome"]["count"][str(row)] == "threshold; "
    assert first["summary"].startswith("review; threshold: ")
    second = doc["results"][names[1]]
    assert second["files"][0]["sdc"]["summary"]["linked"] > 0  # the one-way table needed linked secondaries
    assert "linked; " in second["outcome"]["count"].values()
    for f in day.iterdir():
        if f.is_file():
            assert (day / "checksums" / f"{f.name}.txt").read_text() == hashlib.sha256(f.read_bytes()).hexdigest()
    records = [x for x in AuditLog.open(store_url).records() if x["outcome"] == "released"]
    assert records[0]["disclosure"]["output_check"] == f"{day}#{names[0]}"
    assert "output_check" not in (r.provenance.disclosure or {})  # the server's paths stay on the server
    assert Path(records[1]["disclosure"]["output_check"].split("#")[0]) == day


def test_a_failing_output_record_releases_nothing(connect, tmp_path, store_url):
    from safestats.audit.log import AuditLog

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    s = connect("demo.statistician", policy=_policy(tmp_path), output_checking_dir=str(blocker))
    from safestats.errors import ServiceError

    with pytest.raises(ServiceError, match="nothing was released"):
        s.table("PupilOnRoll").where(term=TERM).group_by("la_code").count().run()
    assert list(AuditLog.open(store_url).records())[-1]["outcome"] == "error"


def _service(sample_dir, tmp_path):
    """An embedded service over the sample with the test policy (its store in tmp_path)."""
    from safestats.config import Settings
    from safestats.service.pipeline import Service

    return Service(
        Settings.load(
            {},
            data_dir=sample_dir,
            store_url=f"sqlite:///{tmp_path / 's.db'}",
            policy=_policy(tmp_path),
            output_checking_dir=str(tmp_path / "o"),
        )
    )


def _at_once(service, who):
    """LA counts and LA x FSM counts of one term, asked by ``who`` at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    from safestats.query.model import Aggregate, Filter, Query

    term = (Filter("term", "==", TERM),)
    one = Query("PupilOnRoll", (Aggregate("count"),), ("la_code",), term)
    two = Query("PupilOnRoll", (Aggregate("count"),), ("la_code", "fsm_eligible"), term)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda q: service.query(q.to_wire(), identity=who), [one, two]))


def test_concurrent_tables_of_one_user_are_protected_together(sample_dir, tmp_path):
    """Two tables asked at once by one user: one waits for the other's release, so the second
    is protected with the first in view (without the per-user lock both could pass unseen)."""
    from safestats.result import result_from_payload

    service = _service(sample_dir, tmp_path)
    who = service.identity("demo.statistician")
    earlier = service.links.earlier

    def slow_earlier(*args, **kwargs):  # widen the race: read what was published, then dawdle
        import time

        found = earlier(*args, **kwargs)
        time.sleep(0.5)
        return found

    service.links.earlier = slow_earlier
    a, b = _at_once(service, who)
    t1, t2 = result_from_payload(a), result_from_payload(b)
    assert differencing_attack(t1, t2) == {}
    assert all(hi - lo >= THRESHOLD for lo, hi in lp_attack(t1, t2).values())


def test_the_engine_work_of_concurrent_sdc_tables_runs_side_by_side(sample_dir, tmp_path):
    """The domain's lock covers reading the earlier releases to recording this one, not the
    exact aggregates (which depend on the data alone): two tables asked at once are computed
    at the same time, then protected one after the other."""
    import threading
    import time

    from safestats.result import result_from_payload

    service = _service(sample_dir, tmp_path)
    who = service.identity("demo.statistician")
    execute, guard = service.engine.execute, threading.Lock()
    running, most = [0], [0]

    def slow_execute(plan):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.3)
            return execute(plan)
        finally:
            with guard:
                running[0] -= 1

    service.engine.execute = slow_execute
    a, b = _at_once(service, who)
    assert most[0] == 2
    t1, t2 = result_from_payload(a), result_from_payload(b)
    assert differencing_attack(t1, t2) == {}  # and still protected together
    assert all(hi - lo >= THRESHOLD for lo, hi in lp_attack(t1, t2).values())


def test_the_check_is_bounded_in_cells_too(connect, tmp_path, store_url):
    """Past max_link_cells cells of the new and earlier tables together, a table is refused:
    the cost of one check cannot grow without bound with the domain's history."""
    s = connect("demo.statistician", policy=_policy(tmp_path), max_link_cells=200)
    s.table("PupilOnRoll").where(term=TERM).group_by("la_code").count().run()  # 152 cells + margins: fits alone
    with pytest.raises(ss.DisclosureRefused, match="need more than 200 cells"):
        s.table("PupilOnRoll").where(term=TERM, sex="F").group_by("la_code").count().run()


def test_a_repeat_gets_the_same_withheld_cells_and_publishes_nothing_new(connect, tmp_path, store_url):
    """The same query again in the domain (any user): the same pattern, no new structure."""
    import sqlalchemy as sa

    from safestats.store.db import open_store

    policy = _policy(tmp_path)
    a = connect("demo.statistician", policy=policy)
    a.table("PupilOnRoll").where(term=TERM).group_by("la_code", "fsm_eligible").count().run()
    first = a.table("PupilOnRoll").where(term=TERM).group_by("la_code").count().run()
    rows = open_store(store_url).connect().execute(sa.text("SELECT count(*) FROM sdc_published")).scalar()
    again = (
        connect("quality.reports", policy=policy)
        .table("PupilOnRoll")
        .where(term=TERM)
        .group_by("la_code")
        .count()
        .run()
    )
    pd.testing.assert_frame_equal(pd.DataFrame(again), pd.DataFrame(first))
    assert again.reasons.equals(first.reasons) and (first.reasons["count"] == "linked").any()
    assert open_store(store_url).connect().execute(sa.text("SELECT count(*) FROM sdc_published")).scalar() == rows


def test_a_suppression_search_that_runs_out_of_time_is_refused_and_audited(connect):
    import safestats as ss

    s = connect("demo.statistician", max_link_seconds=0)  # no time at all: every search is late
    q = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "ethnicity").count().with_totals()
    with pytest.raises(ss.DisclosureRefused, match="did not finish in time"):
        q.run()
    *_, record = [r for r in s._transport._service.audit.records() if r["operation"] != "incident"]
    assert record["outcome"] == "refused" and "did not finish in time" in record["reason"]
    assert record["cells_released"] == 0


def test_a_busy_day_rolls_into_new_output_checking_folders(connect, tmp_path, monkeypatch):
    """A release rewrites at most PER_FOLDER outputs' record: past it the day continues in
    <day>-2/, <day>-3/ …, each a whole ACRO folder (its own results.json and checksums)."""
    import json

    from safestats.service import output_checking

    monkeypatch.setattr(output_checking, "PER_FOLDER", 2)
    outputs = tmp_path / "checks"
    s = connect("demo.statistician", policy=_policy(tmp_path, link_tables=False), output_checking_dir=str(outputs))
    for group in ("phase", "sex", "fsm_eligible", "la_code", "nc_year"):
        s.table("PupilOnRoll").where(term=TERM).group_by(group).count().run()
    folders = sorted(p.name for p in (outputs / "demo.statistician").iterdir())
    day = folders[0]
    assert folders == [day, f"{day}-2", f"{day}-3"]
    counts = [
        len(json.loads((outputs / "demo.statistician" / f / "results.json").read_text())["results"]) for f in folders
    ]
    assert counts == [2, 2, 1]
    assert all((outputs / "demo.statistician" / f / "checksums").is_dir() for f in folders)
