"""The primary disclosure rules: threshold, n,k dominance and the p% rule, as pure functions,
and through the engine's largest contributors into the protect step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml

from safestats.access.policy import DEFAULT_POLICY, Disclosure, load_policy
from safestats.disclosure.protect import sdc_plan
from safestats.disclosure.rules import CellStats, apply_rules, nk_dominance, p_percent, threshold
from safestats.disclosure.sdc import protect_sdc
from safestats.engines.memory import MemoryEngine
from safestats.errors import ConfigError
from safestats.query.model import Aggregate, Filter, Query
from safestats.query.validate import plan_query


def test_threshold_flags_cells_under_the_minimum_including_zeros():
    stats = CellStats(pupils=np.array([0, 1, 9, 10, 250]))
    assert threshold(stats, minimum=10).tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError):
        threshold(stats, minimum=0)


def test_nk_dominance_at_the_boundary():
    total = np.array([100, 100, 0, 1000])
    top = np.array([[50, 40], [50, 39], [0, 0], [700, 200]])
    # 90 of 100 is exactly k = 90%: dominated; 89 is not; an empty cell is not; 900 of 1000 is
    assert nk_dominance(total, top, n=2, k=90).tolist() == [True, False, False, True]
    assert nk_dominance(total, top, n=1, k=70).tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        nk_dominance(total, top, n=3, k=90)


def test_p_percent_rule_at_the_boundary():
    total = np.array([100, 100, 0])
    top = np.array([[80, 12], [80, 13], [0, 0]])
    # the rest is 8 = 10% of 80: safe; 7 is less: the runner-up learns x1 to within 10%
    assert p_percent(total, top, p=10).tolist() == [False, True, False]


def test_rules_run_in_the_declared_order_and_unknown_rules_are_refused():
    stats = CellStats(
        pupils=np.array([5, 50]), totals={"m": np.array([10, 100])}, tops={"m": np.array([[3, 2], [95, 1]])}
    )
    found = apply_rules(stats, ["p_percent", "threshold"], {"threshold": 10, "p": 10})
    assert list(found) == ["p_percent", "threshold"]
    assert found["threshold"]["*"].tolist() == [True, False]
    assert found["p_percent"]["m"].tolist() == [False, True]
    with pytest.raises(ValueError, match="unknown disclosure rules"):
        apply_rules(stats, ["median"], {})


@pytest.fixture
def dominated(sample_dir, catalog):
    """The sample's autumn-2016 pupils, with one LA where one pupil attends almost everything."""
    df = pd.read_parquet(sample_dir / "PupilOnRoll.parquet")
    df = df[df["term"] == "2016-autumn"].copy()
    la = df["la_code"].value_counts().index[0]
    rows = df.index[df["la_code"] == la]
    df.loc[rows, "sessions_attended"] = 0
    df.loc[rows[0], "sessions_attended"] = 200
    df.loc[rows[1], "sessions_attended"] = 3
    return MemoryEngine({"PupilOnRoll": df}), la


def test_dominated_sums_are_suppressed_but_their_counts_are_not(dominated, catalog):
    engine, la = dominated
    q = Query(
        table="PupilOnRoll",
        group_by=("la_code",),
        filters=(Filter("term", "==", "2016-autumn"),),
        aggregates=(Aggregate("count"), Aggregate("sum", "sessions_attended"), Aggregate("mean", "sessions_attended")),
    )
    disclosure = Disclosure(mode="sdc", threshold=10)
    plan = sdc_plan(plan_query(q, catalog=catalog, max_cells=10_000), disclosure)
    assert plan.top_n == 2 and plan.top_measures == ("sessions_attended",)
    out, _ = protect_sdc(engine.execute(plan), plan, disclosure, execute=engine.execute, catalog=catalog, links=None)
    row = out.table.index[out.table["la_code"] == la][0]
    assert out.symbols.loc[row, "sum_sessions_attended"] == "c"
    assert out.symbols.loc[row, "mean_sessions_attended"] == "c"
    assert out.symbols.loc[row, "count"] == "" and out.table.loc[row, "count"] > 10
    assert pd.isna(out.table.loc[row, "sum_sessions_attended"])
    assert out.checks["nk_dominance"][row].tolist() == [False, True, True]
    assert out.checks["p_percent"][row].tolist() == [False, True, True]
    # the other large LAs are released exactly
    others = out.table[(out.table["la_code"] != la) & (out.table["count"] >= 10)]
    assert len(others) > 50 and others["sum_sessions_attended"].notna().all()
    # a policy with the threshold rule only releases the dominated sum: the rules are per policy
    plain = replace(disclosure, rules=("threshold",))
    plan = sdc_plan(plan_query(q, catalog=catalog, max_cells=10_000), plain)
    assert plan.top_n == 0
    out, _ = protect_sdc(engine.execute(plan), plan, plain, execute=engine.execute, catalog=catalog, links=None)
    assert out.table.loc[out.table["la_code"] == la, "sum_sessions_attended"].item() == 203


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rules": ["nk_dominance"]}, "rules must include threshold"),
        ({"rules": ["median", "threshold"]}, "rules must be a list drawn from"),
        ({"nk": [0, 90]}, "nk must be"),
        ({"nk": [2, 120]}, "nk must be"),
        ({"p": 0}, "p \\(the p% rule\\)"),
        ({"protection": "noise"}, "protection 'noise'"),
        ({"protection": "cell_key", "cell_key": {"max_noise": 2, "small": 2}}, "cell_key small"),
        ({"link_tables": "yes"}, "link_tables"),
    ],
)
def test_bad_sdc_settings_are_named(catalog, tmp_path, change, message):
    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    raw["groups"]["SC_OFFICIAL_STATISTICS"]["disclosure"] = {"mode": "sdc", "threshold": 10, **change}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"group SC_OFFICIAL_STATISTICS: {message}"):
        load_policy(path, catalog=catalog)


def test_the_strictest_sdc_settings_win():
    a = Disclosure(mode="sdc", threshold=10, rules=("threshold",)).with_params(p=5)
    b = Disclosure(mode="sdc", threshold=20, rules=("threshold", "p_percent")).with_params(p=10, nk_k=80)
    s = Disclosure.strictest([a, b])
    assert s.threshold == 20 and s.rules == ("threshold", "p_percent")
    assert s.rule_params["p"] == 10 and s.rule_params["nk_k"] == 80
    with pytest.raises(ValueError, match="no rule takes q"):
        a.with_params(q=1)
    ck = Disclosure(mode="sdc", protection="cell_key")
    assert Disclosure.strictest([ck, a]).protection == "suppression"


def test_the_recorded_description_of_the_rule_parameters_is_as_the_policy_gives_them():
    """Releases are reproduced against their recorded disclosure description: the parameters
    keep the policy's shape (``nk: [n, k]``, ``p``) and types."""
    d = Disclosure(mode="sdc").describe()
    assert d["nk"] == [2, 90.0] and isinstance(d["nk"][0], int) and d["p"] == 10.0
    assert Disclosure(mode="sdc").with_params(nk_n=3, p=20).describe()["nk"] == [3, 90.0]


def test_a_new_rule_is_one_entry(monkeypatch):
    """A rule with a parameter of its own, added to SDC_RULES alone: the policy's settings parse
    it (default, value, error), several groups combine it, the description records it and the
    engine computes the contributors it needs."""
    from safestats.disclosure import rules

    def _min_share(stats, params):
        return {m: stats.tops[m][:, 0] * 100 < params["share"] * stats.totals[m] for m in stats.totals}

    rule = rules.SdcRule(
        "min_share",
        "min-share",
        _min_share,
        "the largest holds under `share` %",
        key="share",
        params=(rules.Param("share", 5.0, max),),
        valid="a percentage",
        check=lambda v: 0 < v[0] < 100,
        tops=lambda params: 1,
    )
    monkeypatch.setitem(rules.SDC_RULES, "min_share", rule)
    assert dict(rules.parse_rule_params({}))["share"] == 5.0
    assert dict(rules.parse_rule_params({"share": 7}))["share"] == 7.0
    with pytest.raises(ValueError, match="share must be a percentage, got 150"):
        rules.parse_rule_params({"share": 150})
    with pytest.raises(ValueError, match="nk must be"):
        rules.parse_rule_params({"nk": 2})
    groups = [dict(rules.parse_rule_params({"share": s})) for s in (3, 9)]
    assert dict(rules.strictest_params(groups))["share"] == 9.0
    assert rules.describe_params(groups[0])["share"] == 3.0
    assert rules.tops_needed(["threshold", "min_share"], groups[0]) == 1
    assert rules.tops_needed(["threshold"], groups[0]) == 0
    assert rules.tops_needed(["min_share", "nk_dominance"], {**groups[0], "nk_n": 3}) == 3
