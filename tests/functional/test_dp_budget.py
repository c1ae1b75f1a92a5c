"""dp mode end to end: the budget ledger, the release cache and what the audit log records."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest

import safestats as ss
from safestats.audit.log import AuditLog
from safestats.config import Settings
from safestats.errors import AuditFailure
from safestats.service.pipeline import Service
from safestats.store.ledger import BudgetExceeded, Ledger, current_period


@pytest.fixture
def service(sample_dir, store_url):
    return Service(Settings.load({}, data_dir=sample_dir, store_url=store_url))


def test_analysts_get_noisy_labelled_results_with_accuracy(connect):
    exact = connect("demo.statistician").table("PupilOnRoll").group_by("phase").count().run()
    r = connect().table("PupilOnRoll").group_by("phase").count().count_pupils().run()
    assert r.provenance.disclosure["mode"] == "dp"
    assert r.privacy["measurements"][0]["mechanism"] == "discrete_laplace"
    assert r.privacy["spent"] == "1/2" and r.privacy["left"] == "19/2"
    assert (r.accuracy["count"] > 0).all() and len(r.accuracy) == len(r)
    assert "±" in r._repr_html_() and "ε spent 0.5" in r._repr_html_()
    noisy = r.set_index("phase")["count"]
    sdc = exact.set_index("phase")["count"]
    assert any(noisy[p] != sdc[p] for p in ["Primary", "Secondary"])  # noise was added
    assert abs(noisy["Primary"] - sdc["Primary"]) < 500  # noise, and rows beyond the cap per pupil


def test_three_thirds_fill_a_budget_of_one_exactly(connect, store_url, service):
    service.set_budget("demo.analyst", Fraction(1))
    s = connect()
    for term in ["2016-autumn", "2017-spring", "2017-summer"]:
        s.table("PupilOnRoll").where(term=term).count().epsilon("1/3").run()
    assert s.budget()["left"] == "0" and s.budget()["spent"] == "1"
    with pytest.raises(BudgetExceeded, match=r"needs epsilon = 1/3 \(0.3333\) but demo.analyst has 0 left of 1"):
        s.table("PupilOnRoll").where(phase="Primary").count().epsilon("1/3").run()
    *_, last = [r for r in AuditLog.open(store_url).records() if r["operation"] != "incident"]
    assert last["outcome"] == "refused" and "needs epsilon" in last["reason"]


def test_an_overspend_is_refused_before_anything_runs(connect, service, monkeypatch):
    service.set_budget("demo.analyst", Fraction(1, 10))
    from safestats.engines.duckdb import DuckDBEngine

    def must_not_run(self, plan):
        raise AssertionError("the engine ran for a query that cannot be paid for")

    monkeypatch.setattr(DuckDBEngine, "execute", must_not_run)
    with pytest.raises(BudgetExceeded):
        connect().table("PupilOnRoll").count().run()


def test_asking_again_returns_the_cached_release_without_spending(connect, store_url, sample_dir):
    s = connect()
    q = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code").count()
    first = q.run()
    left = s.budget()["left"]
    second = q.run()
    assert second.equals(first) and second.provenance.cached_from == first.audit_id
    assert s.budget()["left"] == left
    # ... after a restart too: the cache lives in the service's database
    third = connect().table("PupilOnRoll").where(term="2017-spring").group_by("la_code").count().run()
    assert third.equals(first)
    records = list(AuditLog.open(store_url).records())
    cached = [r for r in records if r["privacy"] and r["privacy"].get("cached")]
    assert len(cached) == 2 and all(r["privacy"]["spent"] == "0" for r in cached)
    # a different epsilon is a different release (and is paid for)
    fourth = q.epsilon("1/4").run()
    assert fourth.provenance.cached_from is None


def test_release_records_carry_mechanism_parameters_spend_and_budget_left(connect, store_url):
    r = connect().table("PupilOnRoll").group_by("sex").mean("sessions_attended").epsilon("0.2").run()
    rec = next(x for x in AuditLog.open(store_url).records() if x["seq"] == r.audit_id)
    p = rec["privacy"]
    assert p["spent"] == "1/5" and p["left"] == "49/5" and p["budget"] == "10" and p["unit"] == "epsilon"
    assert {m["kind"] for m in p["measurements"]} == {"sum", "count"}
    assert all(m["mechanism"] == "discrete_laplace" and m["scale"] > 0 for m in p["measurements"])
    assert p["max_rows_per_pupil"] == 3  # three terms in scope
    assert rec["disclosure"]["mode"] == "dp"


def test_concurrent_queries_never_overspend(sample_dir, store_url):
    services = [Service(Settings.load({}, data_dir=sample_dir, store_url=store_url)) for _ in range(3)]
    services[0].set_budget("demo.analyst", Fraction(1))
    outcomes: list[str] = []
    lock = threading.Lock()

    def fire(i: int) -> None:
        svc = services[i % 3]
        q = ss.Query(
            "PupilOnRoll", (ss.Aggregate("count"),), ("phase",), (ss.Filter("age", "==", 4 + i),), epsilon="1/4"
        )
        try:
            svc.query(q.to_wire(), identity=svc.identity("demo.analyst"))
            result = "released"
        except BudgetExceeded:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("released") == 4 and outcomes.count("refused") == 8
    ledger = Ledger(services[0].audit.engine)
    period = current_period("quarter")
    balance = ledger.balance("demo.analyst", "school_census", period, "epsilon", Fraction(10))
    assert balance.spent == Fraction(1) and balance.left == 0
    log = AuditLog.open(store_url)
    assert log.verify().ok and log.count() == 13  # the budget setting and twelve queries


def test_a_failed_audit_after_the_noise_charges_the_spend_and_releases_nothing(connect, service, monkeypatch):
    s = connect()
    before = s.budget()["left"]
    from safestats.audit import log as audit_log

    real = audit_log.AuditLog.append

    def fail_releases(self, record):
        if record.get("outcome") == "released":
            raise AuditFailure("the audit record could not be written; nothing was released")
        return real(self, record)

    monkeypatch.setattr(audit_log.AuditLog, "append", fail_releases)
    with pytest.raises(AuditFailure):
        s.table("PupilOnRoll").group_by("phase").count().run()
    monkeypatch.setattr(audit_log.AuditLog, "append", real)
    assert Fraction(s.budget()["left"]) == Fraction(before) - Fraction(1, 2)


def test_refusals_before_noise_cost_nothing(connect):
    s = connect()
    with pytest.raises(ss.QueryError):
        s.table("PupilOnRoll").group_by("upn").count().run()
    with pytest.raises(ss.QueryError, match="give epsilon"):
        s.table("PupilOnRoll").count().rho("1/2").run()
    assert s.budget()["spent"] == "0"


def test_zcdp_policy_with_rounding(connect):
    r = connect("demo.researcher").table("PupilOnRoll").group_by("phase").count().run()
    assert r.privacy["unit"] == "rho" and r.privacy["measurements"][0]["mechanism"] == "discrete_gaussian"
    assert all(v % 5 == 0 for v in r["count"].dropna())


def test_full_grid_in_dp_mode_zero_cells_included(connect):
    r = (
        connect("demo.unrestricted")
        .table("Nationality")
        .where(term="2017-spring")
        .group_by("nationality")
        .count()
        .run()
    )
    assert len(r) == 202 + 2  # every code, the (invalid) bucket and the empty value
    assert (r.symbols["count"] == "c").sum() > 100


def test_totals_are_the_noisy_cells_summed_before_clamping(connect):
    """A margin sums the cells' noisy values before each is clamped at zero (unbiased), so it
    agrees with the released cells up to the clamping of the small ones, within its interval."""
    r = connect().table("PupilOnRoll").where(term="2017-spring").group_by("phase", "sex").count().with_totals().run()
    cells = r[(r["phase"] != "Total") & (r["sex"] != "Total")]
    primary = r[(r["phase"] == "Primary") & (r["sex"] == "Total")]
    half = r.accuracy.loc[primary.index[0], "count"]
    assert abs(primary["count"].iloc[0] - cells[cells["phase"] == "Primary"]["count"].sum()) <= half
    assert (r["phase"] == "Total").sum() >= 2  # every sex, and the grand total


def test_margin_intervals_cover_the_truth_on_a_sparse_grid(sample_dir, catalog):
    """Reported 95% intervals of margins cover the true margin about 95% of the time, on a grid
    that is mostly empty cells (where clamping each cell first gave +197 ± 90 and no coverage)."""
    from fractions import Fraction

    import duckdb

    from safestats.access.policy import Disclosure
    from safestats.disclosure.dp import plan_dp, protect_dp
    from safestats.engines.memory import MemoryEngine
    from safestats.query.model import Aggregate, Filter, Query
    from safestats.query.validate import plan_query

    q = Query(
        "PupilOnRoll",
        (Aggregate("count"),),
        ("la_code", "ethnicity"),
        (Filter("term", "==", "2017-spring"), Filter("nc_year", "==", "3")),
        totals=True,
    )
    d = Disclosure(mode="dp", per_query=Fraction(1), budget=Fraction(10**6), threshold=0)
    dp_plan = plan_dp(plan_query(q, catalog=catalog, max_cells=100_000), d, max_cells=100_000)
    engine = MemoryEngine(
        {
            "PupilOnRoll": duckdb.execute(
                f"SELECT * FROM '{sample_dir}/PupilOnRoll.parquet' WHERE term = '2017-spring'"
            ).df()
        }
    )
    exact = engine.execute(dp_plan.plan)
    truth = int(exact["__count"].sum())
    hits, n = 0, 300
    for _ in range(n):
        p = protect_dp(exact, None, dp_plan)
        t = p.table
        grand = t.index[(t["la_code"] == "Total") & (t["ethnicity"] == "Total")][0]
        value, half = float(t.loc[grand, "count"]), float(p.accuracy.loc[grand, "count"])
        hits += abs(value - truth) <= half
    assert 0.90 <= hits / n <= 0.99, hits / n


def test_quantiles_and_histograms(connect):
    s = connect()
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").median("sessions_attended").run()
    primary = r.set_index("phase").loc["Primary", "median_sessions_attended"]
    assert 95 <= primary <= 120 and float(primary) % 1 == 0.5  # a candidate between whole values
    q = next(m for m in r.privacy["measurements"] if m["kind"] == "quantile")
    assert q["mechanism"] == "exponential_quantile" and q["alpha"] == 0.5 and q["rank_accuracy95"] > 0
    assert r.accuracy["median_sessions_attended"].isna().all()  # accuracy is in ranks, not values
    h = s.table("PupilOnRoll").where(term="2017-spring").histogram("sessions_attended", 20).count().run()
    assert list(h["sessions_attended_bin"]) == list(range(0, 201, 20))


def test_keys_without_a_public_domain_need_partition_selection(connect, store_url):
    s = connect()
    q = s.table("PupilOnRoll").where(term="2017-spring").group_by("postcode_district").count()
    with pytest.raises(ss.QueryError, match="no public domain.*select_partitions"):
        q.run()
    assert s.budget()["spent"] == "0"
    r = q.select_partitions(delta="1e-9").run()
    p = r.privacy
    assert p["delta"] == "1/1000000000" and p["measurements"][0]["mechanism"] == "laplace_threshold"
    assert p["measurements"][0]["certified"][1] <= 1e-9
    assert (r["count"] >= 10).all() and len(r) > 50  # only cells that clear the thresholds
    assert "partition selection δ=1e-09" in r.provenance.footer()
    rec = list(AuditLog.open(store_url).records())[-1]
    assert rec["privacy"]["delta"] == "1/1000000000" and rec["privacy"]["delta_spent"] == "1/1000000000"
    assert s.budget()["delta_spent"] == "1/1000000000"


def test_delta_composes_and_exhausts_like_epsilon(connect, tmp_path):
    """δ is budgeted: each partition selection spends its δ from the period's δ budget, a query
    over the per-query cap is refused before anything runs, and the budget runs out."""
    import yaml

    from safestats.access.policy import DEFAULT_POLICY

    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    raw["groups"]["I_STORE_SC_USERS"]["disclosure"] |= {"delta_budget": "3/1000000000", "max_delta": "1/1000000000"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    s = connect(policy=str(tmp_path / "p.yaml"))

    def ask(delta, term):
        return (
            s.table("PupilOnRoll")
            .where(term=term)
            .group_by("postcode_district")
            .count()
            .select_partitions(delta=delta)
            .run()
        )

    with pytest.raises(ss.QueryError, match="more than one query may spend"):
        ask("1e-8", "2017-spring")
    assert s.budget()["delta_spent"] == "0" and s.budget()["spent"] == "0"
    for term in ("2016-autumn", "2017-spring", "2017-summer"):  # three different releases
        ask("1e-9", term)
    assert s.budget()["delta_spent"] == "3/1000000000" and s.budget()["delta_left"] == "0"
    spent = s.budget()["spent"]
    assert ask("1e-9", "2016-autumn").provenance.cached_from is not None  # a repeat is the cached release: free
    with pytest.raises(BudgetExceeded, match="delta"):  # a new one needs δ that is not left
        s.table("PupilOnRoll").where(term="2017-spring", phase="Primary").group_by(
            "postcode_district"
        ).count().select_partitions(delta="1e-9").run()
    assert s.budget()["spent"] == spent  # refused before anything ran: no ε spent either


def test_sdc_refuses_keys_without_a_domain(connect, store_url):
    """Cells that exist only in the data (postcode districts) cannot be checked for differencing
    (leaving small ones out made `everyone − the large districts` the small ones' total), so sdc
    refuses them and points to dp; the refusal is audited."""
    import safestats as ss
    from safestats.audit.log import AuditLog

    s = connect("demo.statistician")
    with pytest.raises(ss.DisclosureRefused, match="postcode_district has no public domain.*dp mode"):
        s.table("PupilOnRoll").where(term="2017-spring").group_by("postcode_district").count().run()
    *_, last = [r for r in AuditLog.open(store_url).records() if r["operation"] != "incident"]
    assert last["outcome"] == "refused"


def test_a_cached_release_reports_no_spend_and_the_budget_as_it_is_now(connect):
    s = connect()
    q = s.table("PupilOnRoll").where(term="2017-spring").group_by("sex").count()
    first = q.run()
    s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()  # spend some more
    again = q.run()
    assert again.provenance.cached_from == first.audit_id
    assert again.privacy["spent"] == "0" and first.privacy["spent"] != "0"
    assert again.privacy["left"] == s.budget()["left"] != first.privacy["left"]
    assert "spent 0 (cached release" in again.provenance.footer()


def test_the_cache_answers_only_under_the_same_catalog_and_policy(connect, tmp_path):
    """After the data owner changes a measure's bounds, the same query is a new release."""
    from safestats.catalog import DEFAULT_CATALOG

    q = lambda s: s.table("PupilOnRoll").where(term="2017-spring").group_by("sex").sum("sessions_attended")  # noqa: E731
    first = q(connect()).run()
    changed = tmp_path / "catalog.yaml"
    changed.write_text(DEFAULT_CATALOG.read_text().replace("bounds: [0, 200]", "bounds: [0, 150]", 1))
    (tmp_path / "codelists").symlink_to(DEFAULT_CATALOG.parent / "codelists")
    again = q(connect(catalog=str(changed))).run()
    assert again.provenance.cached_from is None and again.audit_id != first.audit_id
    assert q(connect()).run().provenance.cached_from == first.audit_id  # the original catalog: cached


def test_totals_of_distinct_pupils_across_terms_are_refused_and_the_empty_margin_is_kept(connect):
    s = connect("demo.unrestricted")
    with pytest.raises(ss.QueryError, match="totals of distinct pupils would count a pupil once"):
        s.table("PupilOnRoll").group_by("phase").count_pupils().with_totals().run()
    assert s.budget()["spent"] == "0"  # refused before anything was spent
    r = (
        s.table("PupilOnRoll")
        .join("Nationality")
        .where(term="2017-spring")
        .group_by("phase", "proficiency_in_english")
        .count_pupils()
        .with_totals()
        .run()
    )
    margin = r[(r["phase"] == "Total") & r["proficiency_in_english"].isna()]
    assert len(margin) == 1  # the empty value (no proficiency recorded) has its margin too


def test_counts_near_the_threshold_report_their_interval_given_that_they_are_shown(connect, tmp_path):
    """docs/privacy.md: a count shown only because its noisy value cleared the threshold gets
    the interval conditional on that — not centred on it, shown as ``v (lo–hi)``, in
    ``r.interval()``, the Parquet export and the chart's error bars; a withheld cell has none."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    s = connect()
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "nc_year").count().run()
    ends, acc = r.interval("count"), r.accuracy["count"]
    shown = r["count"].notna()
    assert ends[~shown].isna().all().all() and acc[~shown].isna().all()  # no interval without a value
    value = r["count"].astype("Float64")
    assert ((ends["lower"] <= value) & (value <= ends["upper"]))[shown].all()
    near = shown & (value < 20)
    assert near.any() and (ends.loc[near, "lower"] < value[near] - (ends.loc[near, "upper"] - value[near])).any()
    far = shown & (value > 120)  # beyond threshold + 4a + 10·scale (98 here); a few LA × year cells
    assert far.any()
    assert ((ends.loc[far, "upper"] - value[far]) == acc[far]).all()  # far away: value ± a
    assert (ends.loc[far, "lower"] == value[far] - acc[far]).all()
    # the ± is the interval's symmetric envelope
    assert (acc[shown] >= pd.concat([value - ends["lower"], ends["upper"] - value], axis=1).max(axis=1)[shown]).all()
    i = near[near].index[0]
    text = r.display_frame().loc[i, "count"]
    assert text == f"{r.loc[i, 'count']} ({ends.loc[i, 'lower']:.0f}–{ends.loc[i, 'upper']:.0f})", text
    assert "a–b for a count near the threshold" in r.provenance.footer()
    path = tmp_path / "t.parquet"
    r.to_parquet(path, unencrypted=True)
    t = pq.read_table(path).to_pandas()
    assert {"count_ci95", "count_lower95", "count_upper95"} <= set(t.columns)
    assert t["count_lower95"].equals(ends["lower"].reset_index(drop=True).astype(t["count_lower95"].dtype))
    # the chart's error bars run from the interval's lower end to its upper end
    from matplotlib.container import BarContainer

    from safestats import plots

    rows = [i, *far[far].index[:2]]
    sub = r.loc[rows]
    fig = plots.bar(
        sub.assign(cell=[f"{a}/{b}" for a, b in zip(sub["la_code"], sub["nc_year"], strict=True)]), x="cell", y="count"
    )
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    segments = bars.errorbar.lines[2][0].get_segments()
    ends_of = [np.asarray(p) for p in segments]
    axis = [int(p[0, 0] == p[1, 0]) for p in ends_of]  # the coordinate the bar's line runs along
    spans = sorted((float(min(p[:, a])), float(max(p[:, a]))) for p, a in zip(ends_of, axis, strict=True))
    want = sorted((float(ends.loc[j, "lower"]), float(ends.loc[j, "upper"])) for j in rows)
    assert spans == want, (spans, want)
