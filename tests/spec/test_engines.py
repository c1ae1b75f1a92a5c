"""Every engine computes the same exact aggregates as the pandas reference engine."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safestats.engines import ENGINES, create_engine, spark_available
from safestats.engines.base import PUPILS
from safestats.engines.compile import single_term
from safestats.query.model import INVALID, Aggregate, Filter, Query
from safestats.query.validate import plan_query

# Spark runs where the spark extra and Java are installed (make test installs both; CI too)
AVAILABLE = [name for name in ENGINES if name != "spark" or spark_available()]
OTHER_ENGINES = [name for name in AVAILABLE if name != "memory"]


@pytest.fixture(scope="module")
def engines(small):
    ds, _ = small
    engines = _Engines({name: create_engine(name, ds) for name in AVAILABLE})
    yield engines
    for engine in engines.values():
        if hasattr(engine, "close"):
            engine.close()


class _Engines(dict):
    def __repr__(self) -> str:
        return f"<engines {sorted(self)}>"


def _normalise(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    df = df.copy()
    for k in keys:
        df[k] = df[k].map(lambda v: "<null>" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df.sort_values(keys).reset_index(drop=True) if keys else df.reset_index(drop=True)


def dp_plan(query, catalog, max_cells: int = 100_000):
    """``query``'s dp plan at ε = 1 (what the engine runs for it: bounded rows, remapped keys)."""
    from fractions import Fraction

    from safestats.access.policy import Disclosure
    from safestats.disclosure.dp import plan_dp

    plan = plan_query(query, catalog=catalog, max_cells=max_cells)
    return plan_dp(plan, Disclosure(mode="dp", per_query=Fraction(1)), max_cells=max_cells)


def assert_same(plan, engines):
    keys = ["_atom"] if plan.atoms is not None else [k.name for k in plan.keys]
    expected = _normalise(engines["memory"].execute(plan), keys)
    for name in [n for n in OTHER_ENGINES if n in engines]:
        got = _normalise(engines[name].execute(plan), keys)
        assert list(got.columns) == list(expected.columns), name
        assert len(got) == len(expected), name
        for col in expected.columns:
            if col in keys:
                assert got[col].tolist() == expected[col].tolist(), (name, col)
            else:
                a = pd.to_numeric(got[col]).astype(float).tolist()
                b = pd.to_numeric(expected[col]).astype(float).tolist()
                assert a == pytest.approx(b, rel=1e-9, nan_ok=True), (name, col)


SPEC = [
    Query("PupilOnRoll", (Aggregate("count"), Aggregate("count_pupils"))),
    Query("PupilOnRoll", (Aggregate("count"),), ("la_code", "fsm_eligible"), (Filter("term", "==", "2017-spring"),)),
    Query(
        "PupilOnRoll",
        (
            Aggregate("mean", "sessions_attended"),
            Aggregate("quantile", "sessions_attended", 0.25),
            Aggregate("sum", "sessions_possible"),
        ),
        ("phase",),
    ),
    Query("PupilOnRoll", (Aggregate("count_pupils"),), ("nationality",), join="Nationality"),
    Query("Nationality", (Aggregate("count"),), ("proficiency_in_english",), (Filter("term", "!=", "2016-autumn"),)),
    Query("Nationality", (Aggregate("count"),), (), (Filter("nationality", "==", INVALID),)),
    Query("Nationality", (Aggregate("count"),), ("term",), (Filter("proficiency_in_english", "==", None),)),
    Query("Nationality", (Aggregate("count"),), (), (Filter("proficiency_in_english", "not in", ("A", "B")),)),
    Query(
        "PupilNoLongerOnRoll",
        (Aggregate("count"),),
        ("leaving_reason",),
        (Filter("leaving_date", "between", ("2016-09-01", "2016-12-31")),),
    ),
    Query("PupilOnRoll", (Aggregate("count"),), ("age",), (Filter("sessions_attended", "<", 50),)),
    Query("PupilOnRoll", (Aggregate("count"),), ("school_urn",), (Filter("la_code", "in", ("886", "201")),)),
]


@pytest.mark.parametrize("query", SPEC, ids=lambda q: q.hash[:8])
def test_spec_queries_agree_on_every_engine(query, small, engines):
    _, catalog = small
    assert_same(plan_query(query, catalog=catalog, max_cells=100_000), engines)


def test_measures_are_clipped_to_their_bounds(small, engines, monkeypatch):
    _, catalog = small
    q = Query("PupilOnRoll", (Aggregate("sum", "sessions_attended"), Aggregate("count")))
    plan = plan_query(q, catalog=catalog, max_cells=10)
    # Tighten the bounds the plan carries: every engine must clip to them before summing.
    tight = type(plan)(**{**plan.__dict__, "bounds": {"sessions_attended": (0, 10)}})
    for engine in engines.values():
        out = engine.execute(tight)
        assert out["sum_sessions_attended"].iloc[0] <= 10 * out["count"].iloc[0]
    assert_same(tight, engines)


def test_engine_output_has_pupils_per_cell(small, engines):
    _, catalog = small
    plan = plan_query(Query("PupilOnRoll", (Aggregate("count"),), ("phase",)), catalog=catalog, max_cells=10)
    for engine in engines.values():
        out = engine.execute(plan)
        assert PUPILS in out.columns and (out[PUPILS] <= out["count"]).all()


# -- generated queries -------------------------------------------------------------------------

CATEGORIES = {
    "phase": ["Primary", "Secondary", "Special", "PRU"],
    "sex": ["F", "M"],
    "sen_provision": ["N", "K", "E"],
    "term": ["2016-autumn", "2017-spring", "2017-summer"],
    "first_language": ["ENG", "OTH", "UNK"],
    "fsm_eligible": [True, False],
    "nc_year": ["R", "1", "7", "11", "13"],
}


@st.composite
def queries(draw):
    group = draw(st.lists(st.sampled_from(sorted(CATEGORIES) + ["la_code"]), max_size=2, unique=True))
    filters = []
    for col in draw(st.lists(st.sampled_from(sorted(CATEGORIES)), max_size=2, unique=True)):
        values = draw(st.lists(st.sampled_from(CATEGORIES[col]), min_size=1, max_size=3, unique=True))
        op = draw(st.sampled_from(["in", "not in"]))
        filters.append(Filter(col, op, tuple(values)))
    if draw(st.booleans()):
        lo = draw(st.integers(0, 150))
        filters.append(Filter("sessions_attended", "between", (lo, lo + draw(st.integers(0, 100)))))
    aggs = draw(
        st.lists(
            st.sampled_from(
                [
                    Aggregate("count"),
                    Aggregate("count_pupils"),
                    Aggregate("sum", "sessions_attended"),
                    Aggregate("mean", "sessions_possible"),
                    Aggregate("quantile", "sessions_attended", 0.5),
                ]
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda a: a.name,
        )
    )
    return Query("PupilOnRoll", tuple(aggs), tuple(group), tuple(filters))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries())
def test_generated_queries_agree_on_every_engine(query, small, engines):
    _, catalog = small
    assert_same(plan_query(query, catalog=catalog, max_cells=100_000), engines)


def _one_term(draw, q: Query) -> tuple[Filter, ...]:
    """``q``'s filters with one term pinned, as ``==`` or as a one-value ``in``."""
    term = draw(st.sampled_from(CATEGORIES["term"]))
    pin = Filter("term", "==", term) if draw(st.booleans()) else Filter("term", "in", (term,))
    return (*(f for f in q.filters if f.column != "term"), pin)


@st.composite
def one_term_bounded(draw):
    """A generated query with one term pinned (``==`` or a one-value ``in``) and a contribution
    bound of 1 or 2: the bound path that windows only the pupils with several rows in the term."""
    q = draw(queries())
    return Query(
        q.table, q.aggregates, q.group_by, _one_term(draw, q), max_rows_per_pupil=draw(st.sampled_from([1, 2]))
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=one_term_bounded())
def test_one_term_contribution_bounds_agree_on_every_engine(query, small, engines):
    _, catalog = small
    plan = dp_plan(query, catalog).plan
    assert plan.max_rows == query.max_rows_per_pupil
    assert_same(plan, engines)


@st.composite
def one_term_exact(draw):
    """A generated query with one term pinned and no contribution bound (what sdc and cell key
    run): its distinct pupils per cell are rows less the repeats of the pupils with several rows
    in the term, where an engine keeps those pupils' rows."""
    q = draw(queries())
    return Query(q.table, q.aggregates, q.group_by, _one_term(draw, q))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=one_term_exact())
def test_one_term_distinct_pupils_agree_on_every_engine(query, small, engines):
    _, catalog = small
    plan = plan_query(query, catalog=catalog, max_cells=100_000)
    assert plan.max_rows is None and plan.pupils_per_cell
    assert_same(plan, engines)


@pytest.mark.parametrize(
    "query",
    [
        Query(
            "PupilOnRoll", (Aggregate("count"), Aggregate("count_pupils")), (), (Filter("term", "==", "2017-spring"),)
        ),
        Query(
            "PupilOnRoll",
            (Aggregate("count"), Aggregate("mean", "sessions_attended")),
            ("la_code",),
            (Filter("term", "in", ("2016-autumn",)), Filter("phase", "!=", "Special")),
        ),
        Query(
            "PupilOnRoll",
            (Aggregate("count"), Aggregate("count_pupils")),
            ("nationality",),
            (Filter("term", "==", "2017-summer"),),
            join="Nationality",
        ),
    ],
    ids=["total", "cells", "join"],
)
def test_distinct_pupils_of_one_term_are_rows_less_repeats(query, small, engines):
    """DuckDB counts them so (no distinct count over every row), and the census has pupils with
    several rows in a cell, so the repeats are not nothing."""
    from safestats.engines.compile import compile_counted

    if "duckdb" not in engines:
        pytest.skip("duckdb only")
    _, catalog = small
    plan = plan_query(query, catalog=catalog, max_cells=100_000)
    assert_same(plan, engines)
    duck = engines["duckdb"]
    assert compile_counted(plan, duck._tables) is not None
    out = engines["memory"].execute(plan)
    assert (out["count"] > out[PUPILS]).any()  # some cell holds a pupil's repeated rows


MARGINS_SPEC = [
    Query("PupilOnRoll", (Aggregate("count"),), ("la_code", "ethnicity"), (Filter("term", "==", "2016-autumn"),)),
    Query("PupilOnRoll", (Aggregate("count_pupils"),), ("phase", "sex"), (Filter("term", "==", "2017-spring"),)),
    Query(
        "PupilOnRoll",
        (Aggregate("sum", "sessions_attended"),),
        ("phase", "fsm_eligible", "nc_year"),
        (Filter("term", "==", "2017-summer"), Filter("sessions_attended", ">=", 20)),
    ),
    Query(
        "Nationality",
        (Aggregate("count"),),
        ("proficiency_in_english", "nationality"),  # an empty value and "(invalid)" codes
        (Filter("term", "==", "2017-spring"),),
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"),),
        ("la_code", "nationality"),
        (Filter("term", "==", "2016-autumn"),),
        join="Nationality",
    ),
]


@pytest.mark.parametrize("query", MARGINS_SPEC, ids=["la-ethnicity", "pupils", "sum-3-way", "nullable", "join"])
def test_a_table_and_its_margins_from_one_query_are_each_as_asked_alone(query, small, engines):
    """DuckDB computes a one-term table's cells and every margin in one query (margins added up
    from the cells, less their repeats: compile.py: compile_with_margins); each part is what the
    engine gives the margin's own plan, and what the reference engine gives it."""
    from dataclasses import replace

    from safestats.engines.base import execute_with_margins
    from safestats.query.validate import margin_plans

    if "duckdb" not in engines:
        pytest.skip("duckdb only")
    _, catalog = small
    plan = replace(plan_query(query, catalog=catalog, max_cells=100_000), pupils_per_cell=True)
    duck = engines["duckdb"]
    together = duck.execute_with_margins(plan)
    assert together is not None  # the one-query path is the one taken
    plans = [plan, *margin_plans(plan)]
    assert len(together) == len(plans) == 2 ** len(plan.keys)
    for part, sub in zip(together, plans, strict=True):
        keys = [k.name for k in sub.keys]
        alone = duck.execute(sub)
        assert list(part.columns) == list(alone.columns) and list(part.dtypes) == list(alone.dtypes)
        pd.testing.assert_frame_equal(_normalise(part, keys), _normalise(alone, keys))
        assert_same(sub, engines)
    reference = execute_with_margins(engines["memory"], plan)  # one query per margin there
    for part, ref, sub in zip(together, reference, plans, strict=True):
        keys = [k.name for k in sub.keys]
        got, want = _normalise(part, keys), _normalise(ref, keys)
        assert got[keys].values.tolist() == want[keys].values.tolist()
        for col in [c for c in want.columns if c not in keys]:
            assert pd.to_numeric(got[col]).astype(float).tolist() == pd.to_numeric(want[col]).astype(float).tolist()


# -- the dp engine plans: bounded rows, additive remap, no distinct count at k = 1 ------------------

DP_SPEC = [
    Query("PupilOnRoll", (Aggregate("count_pupils"),), ("la_code", "nationality"), join="Nationality"),
    Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"), Aggregate("mean", "sessions_attended")),
        ("phase",),
        (Filter("term", "==", "2017-spring"),),
    ),
    Query("PupilOnRoll", (Aggregate("quantile", "sessions_attended", 0.5),), ("sex",), max_rows_per_pupil=2),
    Query(
        "Nationality",
        (Aggregate("count"), Aggregate("count_pupils")),
        ("proficiency_in_english",),
        max_rows_per_pupil=2,
    ),
    Query("PupilNoLongerOnRoll", (Aggregate("count"),), ("leaving_reason", "term")),
    # one term pinned: the bound windows only the pupils with several rows in it (engines may
    # use a per-census table of them); filters that drop a pupil's first row must not matter
    Query(
        "PupilOnRoll",
        (Aggregate("count"), Aggregate("sum", "sessions_attended")),
        ("la_code",),
        (Filter("term", "==", "2017-spring"), Filter("phase", "in", ("Secondary", "Special"))),
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"),),
        ("nationality",),
        (Filter("term", "in", ("2016-autumn",)),),
        join="Nationality",
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("count"), Aggregate("quantile", "sessions_attended", 0.5)),
        ("phase",),
        (Filter("term", "==", "2017-summer"), Filter("nc_year", "not in", ("R", "1"))),
        max_rows_per_pupil=2,
    ),
]


@pytest.mark.parametrize("query", DP_SPEC, ids=lambda q: q.hash[:8])
def test_dp_engine_plans_agree_on_every_engine(query, small, engines):
    _, catalog = small
    planned = dp_plan(query, catalog)
    assert_same(planned.plan, engines)
    if planned.histogram_plan is not None:
        assert_same(planned.histogram_plan, engines)


# -- the sdc engine plans: largest contributors (dominance rules) and record keys (cell key) ------

SDC_SPEC = [
    Query("PupilOnRoll", (Aggregate("sum", "sessions_attended"), Aggregate("count")), ("la_code", "sex")),
    Query(
        "PupilOnRoll",
        (Aggregate("mean", "sessions_possible"), Aggregate("sum", "sessions_attended")),
        ("phase",),
        (Filter("term", "==", "2017-spring"),),
    ),
    Query("PupilOnRoll", (Aggregate("sum", "sessions_attended"),)),
    Query("Nationality", (Aggregate("count"), Aggregate("count_pupils")), ("nationality", "term")),
]


@pytest.mark.parametrize("query", SDC_SPEC, ids=lambda q: q.hash[:8])
def test_sdc_engine_plans_agree_on_every_engine(query, small, engines):
    from dataclasses import replace

    from safestats.disclosure.rules import top_column

    _, catalog = small
    plan = replace(plan_query(query, catalog=catalog, max_cells=100_000), top_n=3, record_key=(7, 11, 13, 17))
    assert_same(plan, engines)
    out = engines["memory"].execute(plan)
    for m in plan.top_measures:  # descending, and the largest never more than the cell's total
        assert (out[top_column(m, 1)] >= out[top_column(m, 2)]).all()
        assert (out[top_column(m, 2)] >= out[top_column(m, 3)]).all()
        assert (out[top_column(m, 1)] <= out[top_column(m, 0)]).all()


# -- the sdc atom plans: rows mapped to value classes, class-grid cells, merged atoms ---------------

ATOM_SPEC = [
    # (tables released one after another, the family's statistic)
    (
        [
            Query(
                "PupilOnRoll",
                (Aggregate("count"),),
                ("la_code", "fsm_eligible"),
                (Filter("term", "==", "2017-spring"),),
            ),
            Query("PupilOnRoll", (Aggregate("count"),), ("la_code",), (Filter("ethnicity", "!=", "WBRI"),)),
        ],
        "count",
    ),
    (
        [
            Query("PupilOnRoll", (Aggregate("sum", "sessions_attended"),), ("phase",)),
            Query(
                "PupilOnRoll",
                (Aggregate("sum", "sessions_attended"),),
                ("sex",),
                (Filter("nc_year", "in", ("1", "2")),),
            ),
            Query("PupilOnRoll", (Aggregate("sum", "sessions_attended"),), (), bins=(("sessions_possible", 20),)),
        ],
        "sum:sessions_attended",
    ),
    (
        [
            Query("PupilOnRoll", (Aggregate("count"),), ("nationality",), join="Nationality"),
            Query(
                "PupilOnRoll",
                (Aggregate("count_pupils"),),
                ("proficiency_in_english",),
                (Filter("term", "==", "2016-autumn"),),
                join="Nationality",
            ),
        ],
        "count",
    ),
    (  # one term throughout: the atoms' distinct pupils are rows less repeats (compile_counted)
        [
            Query("PupilOnRoll", (Aggregate("count"),), ("phase",), (Filter("term", "==", "2016-autumn"),)),
            Query(
                "PupilOnRoll",
                (Aggregate("count"),),
                ("la_code", "sex"),
                (Filter("term", "==", "2016-autumn"), Filter("nc_year", "not in", ("R",))),
            ),
        ],
        "count",
    ),
]


@pytest.mark.parametrize(("tables", "stat"), ATOM_SPEC, ids=["counts", "sums-bins", "nationality", "one-term"])
def test_sdc_atom_plans_agree_on_every_engine(tables, stat, small, engines):
    """The differencing check's engine plans (each row's value classes, the class-grid cells
    that hold rows, then merged atoms with exact distinct pupils and largest contributors)."""
    from dataclasses import replace

    import numpy as np

    from safestats.disclosure.linked import PUBLISHED, describe_release, families_of, merge_atoms, refinement
    from safestats.disclosure.protect import densify
    from safestats.disclosure.sdc import _population_columns
    from safestats.query.validate import ATOM

    _, catalog = small
    specs = []
    for q in tables:
        plan = plan_query(q, catalog=catalog, max_cells=100_000)
        grid = densify(engines["memory"].execute(plan), plan).reset_index(drop=True)
        fam = next(f for f in families_of(plan, q.aggregates[0], catalog) if f[2] == stat)
        specs.append(describe_release(plan, grid, [PUBLISHED] * len(grid), fam))
    ref = refinement(specs, _population_columns(catalog, specs[0].population, plan))
    ref_plan = replace(
        plan_query(
            ref.query(catalog, specs[0].population, stat),
            catalog=catalog,
            max_cells=2**62,
            max_group_keys=64,
            max_filters=64,
        ),
        pupils_per_cell=True,
        top_n=2 if stat != "count" else 0,
    )
    cells = replace(ref_plan, atoms=ref.atom_map())
    assert_same(cells, engines)
    if all(single_term(plan_query(q, catalog=catalog, max_cells=100_000)) for q in tables) and "duckdb" in engines:
        from safestats.engines.compile import compile_counted

        assert compile_counted(cells, engines["duckdb"]._tables) is not None
    present = engines["memory"].execute(cells)[ATOM].to_numpy(dtype=np.int64)
    columns, of_atom = merge_atoms([a for s in specs for a in ref.sparse_atoms(s, present)], len(present))
    used = of_atom >= 0
    merged = replace(ref_plan, atoms=ref.atom_map(present[used], of_atom[used]))
    assert_same(merged, engines)
    out = engines["memory"].execute(merged)
    assert len(out) == int(of_atom.max()) + 1 and out["_pupils"].sum() >= 1


# -- the records used: distinct pupils in a query's scope, the same on every engine ----------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.one_of(queries(), one_term_bounded()))
def test_every_engine_counts_the_same_records_used(query, small, engines):
    """The scope count (a count less the extra rows of pupils with several rows, where one term
    is pinned; a distinct count otherwise) is the pandas engine's distinct count of the rows the
    filters select."""
    _, catalog = small
    plan = plan_query(query, catalog=catalog, max_cells=100_000)
    counts = {name: engine.scope(plan) for name, engine in engines.items()}
    assert len(set(counts.values())) == 1, counts
    assert counts["memory"] == engines["memory"]._selected(plan)[plan.unit].nunique()


def test_a_plan_asked_again_with_another_epsilon_reuses_its_expression(small):
    """The engine keeps built expressions by plan less its privacy parameters: the same query
    with another ε (or ρ, δ) gets the same expression and the same aggregates; a query that
    differs in anything the engine reads (here a filter) gets its own."""
    from dataclasses import replace
    from fractions import Fraction

    from safestats.access.policy import Disclosure
    from safestats.disclosure.dp import plan_dp
    from safestats.engines.compile import expressions_key
    from safestats.engines.duckdb import DuckDBEngine

    ds, catalog = small
    term = Filter("term", "==", "2017-spring")

    def plan(eps: str, *filters: Filter):
        q = Query("PupilOnRoll", (Aggregate("count"),), ("phase",), (term, *filters), epsilon=eps)
        return plan_dp(
            plan_query(q, catalog=catalog, max_cells=100),
            Disclosure(mode="dp", per_query=Fraction(1)),
            max_cells=100,
        ).plan

    engine = DuckDBEngine(ds)
    try:
        one, other, boys = plan("1"), plan("1/3"), plan("1", Filter("sex", "==", "M"))
        assert replace(one.query, epsilon=None) == replace(other.query, epsilon=None)
        engine.execute(one)  # builds the per-relation tables the key names
        assert expressions_key(one, engine._tables) == expressions_key(other, engine._tables)
        assert expressions_key(boys, engine._tables) != expressions_key(one, engine._tables)
        first = engine._built.get(expressions_key(one, engine._tables), lambda: None)
        assert first is not None  # built by the first execute, and kept
        assert engine._built.get(expressions_key(other, engine._tables), lambda: None) is first
        pd.testing.assert_frame_equal(engine.execute(one), engine.execute(other))
        name = one.query.aggregates[0].name
        assert engine.execute(boys)[name].sum() < engine.execute(one)[name].sum()
    finally:
        engine.close()
