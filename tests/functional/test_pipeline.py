"""The safe query path end to end, in embedded mode."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

import safestats as ss
from safestats.audit.log import AuditLog
from safestats.errors import AuditFailure, ServiceError, UnknownUser


def test_counts_below_the_threshold_are_suppressed_everywhere(connect, sample_dir):
    s = connect("demo.statistician")  # sdc mode: exact values, small cells suppressed
    r = (
        s.table("PupilOnRoll")
        .where(term="2017-spring", phase="Secondary")
        .group_by("la_code", "fsm_eligible")
        .count()
        .count_pupils()
        .mean("sessions_attended")
        .run()
    )
    assert len(r) == 152 * 2  # every LA x FSM cell, empty ones included
    sym = r.symbols
    suppressed = sym["count"] == "c"
    assert suppressed.any() and (~suppressed).any()
    for col in ["count", "pupils", "mean_sessions_attended"]:
        assert (sym[col] == "c").equals(suppressed)  # the whole cell goes, means too
        assert r.loc[suppressed, col].isna().all()
    assert (r.loc[~suppressed, "pupils"] >= 10).all()
    # released cells are the exact values
    exact = duckdb.execute(f"""
        SELECT la_code, fsm_eligible, count(*) n FROM '{sample_dir}/PupilOnRoll.parquet'
        WHERE term = '2017-spring' AND phase = 'Secondary' GROUP BY ALL""").df()
    merged = r[~suppressed].merge(exact, on=["la_code", "fsm_eligible"])
    assert len(merged) == (~suppressed).sum()
    assert (merged["count"].astype(int) == merged["n"]).all()


def test_labels_are_the_highest_classification_touched(connect):
    s = connect("demo.unrestricted")
    assert s.table("PupilOnRoll").group_by("phase").count().run().label == "OFFICIAL"
    assert s.table("PupilOnRoll").group_by("ethnicity").count().run().label == "OFFICIAL-SENSITIVE"
    assert s.table("PupilOnRoll").where(sen_provision="E").count().run().label == "OFFICIAL-SENSITIVE"
    assert s.table("PupilOnRoll").join("Nationality").count().run().label == "OFFICIAL-SENSITIVE"
    r = s.table("Nationality").count().run()
    assert r.label == "OFFICIAL-SENSITIVE" and r.marking == "OFFICIAL-SENSITIVE (IL3)"


def test_each_request_is_audited_with_field_names(connect, store_url):
    s = connect()
    r = (
        s.table("PupilOnRoll")
        .where(term="2017-spring")
        .where(age=ss.between(11, 15))
        .group_by("phase")
        .mean("sessions_attended")
        .run()
    )
    s.sql("SELECT sex, COUNT(*) AS n FROM PupilOnRoll GROUP BY sex")
    with pytest.raises(ss.AccessDenied):
        s.table("Nationality").group_by("nationality").count().run()
    records = list(AuditLog.open(store_url).records())
    assert len(records) == 3
    first, second, third = records
    assert first["seq"] == r.audit_id and first["query_hash"] == r.provenance.query_hash
    assert first["user"] == "demo.analyst" and first["groups"] == ["I_STORE_SC_USERS"]
    assert first["organisation"] == "DfE" and first["interaction"] == "manual"
    assert first["fields_filter"] == ["age", "term"] and first["fields_group"] == ["phase"]
    assert first["fields_measure"] == ["sessions_attended"]
    assert first["fields_returned"] == ["phase", "mean_sessions_attended"]
    assert first["outcome"] == "released" and first["cells_released"] + first["cells_suppressed"] == 4
    assert first["client"]["host"] and first["tables"] == ["PupilOnRoll"]
    assert second["operation"] == "sql" and second["query"]["sql"].startswith("SELECT sex")
    assert third["outcome"] == "refused" and "Nationality" in third["reason"]
    assert third["fields_returned"] == [] and third["fields_requested"] == ["nationality", "count"]
    assert AuditLog.open(store_url).verify().ok


def test_scheduled_identity_is_recorded_as_scheduled(connect, store_url):
    connect("quality.reports").table("Nationality").count().run()
    records = list(AuditLog.open(store_url).records())
    assert [r for r in records if r["operation"] != "incident"][-1]["interaction"] == "scheduled"
    # used outside a report run: an incident, recorded at once (service/incident_watch.py)
    assert "scheduled_identity_interactive" in records[-1]["reason"]


def test_metadata_requests_are_audited_and_show_no_data(connect, store_url):
    s = connect()
    tables = s.tables()
    assert not tables.loc["Nationality", "you_may_read"] and tables.loc["PupilOnRoll", "you_may_read"]
    cols = s.describe("PupilOnRoll")
    assert not cols.loc["upn", "usable"] and cols.loc["la_code", "usable"]
    assert cols.loc["la_code", "domain"].startswith("152 values")
    assert [r["operation"] for r in AuditLog.open(store_url).records()] == ["tables", "describe"]


def test_no_audit_record_means_no_result(connect, store_url, monkeypatch):
    s = connect()
    from safestats.audit import log as audit_log

    def broken(self, record):
        raise AuditFailure("the audit record could not be written (OperationalError); nothing was released")

    monkeypatch.setattr(audit_log.AuditLog, "append", broken)
    with pytest.raises(AuditFailure, match="nothing was released"):
        s.table("PupilOnRoll").group_by("phase").count().run()


def test_a_read_only_audit_store_fails_closed(connect, tmp_path):
    path = tmp_path / "ro.db"
    AuditLog.open(f"sqlite:///{path}")  # create the schema
    s = connect(store_url=f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(AuditFailure):
        s.table("PupilOnRoll").group_by("phase").count().run()
    with pytest.raises(AuditFailure):  # a refusal must be recorded too, so it fails closed as well
        s.table("Nationality").count().run()


def test_an_engine_failure_is_audited_and_releases_nothing(connect, store_url, monkeypatch):
    s = connect()
    from safestats.engines.duckdb import DuckDBEngine

    def boom(self, plan):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(DuckDBEngine, "execute", boom)
    with pytest.raises(ServiceError, match="nothing was released"):
        s.table("PupilOnRoll").count().run()
    last = list(AuditLog.open(store_url).records())[-1]
    assert last["outcome"] == "error" and last["reason"] == "RuntimeError"
    assert "disk on fire" not in str(last)  # internal details stay out of the record's reason


def test_unknown_user_cannot_connect(connect):
    with pytest.raises(UnknownUser):
        connect("mallory")


def test_result_renders_with_marking_and_exports_it(connect, tmp_path):
    r = connect("demo.statistician").table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    html = r._repr_html_()
    assert html.count("OFFICIAL (IL2)") == 2 and "safestats-provenance" in html and ">c<" in html
    assert f"audit record {r.audit_id}" in html
    path = tmp_path / "out.csv"
    r.to_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# OFFICIAL (IL2)" and lines[-1] == "# OFFICIAL (IL2)"
    assert "PRU,c" in lines
    text = repr(r)
    assert text.startswith("[OFFICIAL (IL2)]") and "PRU" in text
    # the marking travels with derived frames
    assert r.head(2).label == "OFFICIAL" and r[r["phase"] != "PRU"].marking == "OFFICIAL (IL2)"
    assert isinstance(r, pd.DataFrame)


def test_cell_limit_is_refused_and_audited(connect, store_url):
    s = connect("demo.unrestricted", max_cells=1000)
    with pytest.raises(ss.DisclosureRefused, match="more than the maximum of 1,000"):
        s.table("PupilOnRoll").join("Nationality").group_by("la_code", "nationality").count().run()
    assert list(AuditLog.open(store_url).records())[-1]["outcome"] == "refused"


def test_sdc_totals_are_protected_against_differencing(connect):
    from tests.oracles import attacker_intervals

    s = connect("demo.statistician")
    r = (
        s.table("PupilOnRoll")
        .where(term="2017-spring", phase=["Secondary", "Special", "PRU"])
        .group_by("phase", "sen_provision")
        .count()
        .with_totals()
        .run()
    )
    inner = r[(r["phase"] != "Total") & (r["sen_provision"] != "Total")].reset_index(drop=True)
    assert (r["count"].dropna() >= 10).all() and r.suppressed > 0
    # rebuild what an attacker sees: inner cells and margins, hidden where suppressed
    n = len(inner)
    columns = [frozenset([i]) for i in range(n)]
    values = [0 if pd.isna(v) else int(v) for v in inner["count"]]
    hidden = {i for i in range(n) if pd.isna(inner["count"][i])}
    for _, row in r[(r["phase"] == "Total") | (r["sen_provision"] == "Total")].iterrows():
        members = frozenset(
            i for i in range(n) if all(row[k] in ("Total", inner.loc[i, k]) for k in ("phase", "sen_provision"))
        )
        if pd.isna(row["count"]):
            continue  # a hidden margin tells the attacker nothing
        columns.append(members)
        values.append(int(row["count"]))
    intervals = attacker_intervals(columns, values, hidden, n)
    assert intervals and all(high - low >= 10 for low, high in intervals.values())


def test_sdc_totals_are_for_additive_statistics(connect):
    s = connect("demo.statistician")
    with pytest.raises(ss.QueryError, match="totals in sdc mode are for one additive statistic"):
        s.table("PupilOnRoll").group_by("phase").mean("sessions_attended").with_totals().run()


def test_sdc_rounding_and_the_low_symbol(connect, tmp_path):
    import yaml

    from safestats.access.policy import DEFAULT_POLICY

    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    raw["groups"]["SC_OFFICIAL_STATISTICS"]["disclosure"] = {"mode": "sdc", "threshold": 1, "rounding": 5}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(raw))
    s = connect("demo.statistician", policy=str(policy))
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code").count().run()
    released = r["count"].dropna()
    assert (released % 5 == 0).all() and len(released) > 140
    low = r.symbols["count"] == "low"
    assert low.any() and r.loc[low, "count"].isna().all()  # City of London, Isles of Scilly: 1 or 2 pupils
    assert "counts rounded to base 5" in r.provenance.footer()
    assert "low" in r.to_csv()
