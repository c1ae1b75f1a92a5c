"""The DuckDB engine's one-term contribution bound: a whole term less the rows the bound drops
(ranked once per census, ``compile.py: compile_dropped``), and filters that change which of a
pupil's rows comes first (then the window over those pupils' filtered rows). Judged against
the pandas reference engine, and against the raw rows where a pupil's first row is filtered out."""

from __future__ import annotations

import pandas as pd
import pytest

from safestats.engines import create_engine
from safestats.query.model import Aggregate, Filter, Query
from tests.spec.test_engines import assert_same, dp_plan


@pytest.fixture(scope="module")
def engines(small):
    """The reference engine and DuckDB (whose one-term paths these are)."""
    engines = {name: create_engine(name, small[0]) for name in ("memory", "duckdb")}
    yield engines
    engines["duckdb"].close()


TERM_ONLY_BOUNDED = [
    Query(
        "PupilOnRoll",
        (Aggregate("count"), Aggregate("count_pupils")),
        ("phase",),
        (Filter("term", "==", "2017-spring"),),
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("mean", "sessions_attended"), Aggregate("sum", "sessions_possible"), Aggregate("count")),
        ("la_code",),
        (Filter("term", "in", ("2016-autumn",)),),
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("sum", "sessions_possible"), Aggregate("count")),
        ("fsm_eligible",),
        (Filter("term", "==", "2016-autumn"),),
        max_rows_per_pupil=2,
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"),),
        ("la_code", "nationality"),
        (Filter("term", "==", "2017-summer"),),
        join="Nationality",
    ),
    Query(
        "PupilOnRoll",
        (Aggregate("sum", "sessions_attended"),),
        ("school_urn",),  # the cell is the school: which of a pupil's rows is kept decides its cell
        (Filter("term", "==", "2016-autumn"), Filter("term", "!=", "2017-spring")),
    ),
]


@pytest.mark.parametrize("query", TERM_ONLY_BOUNDED, ids=["pupils", "mean", "sum-k2", "join", "by-school"])
def test_a_bound_over_a_whole_term_is_the_term_less_the_rows_it_drops(query, small, engines):
    """Filtered on the term only, DuckDB takes the rows the bound drops (ranked once per census)
    off the term's aggregates, with no window at query time (compile.py: compile_dropped); the
    result is the reference engine's, which bounds row by row. The bound drops rows here."""
    from dataclasses import replace

    from safestats.engines.compile import compile_dropped

    _, catalog = small
    plan = dp_plan(query, catalog).plan
    duck = engines["duckdb"]
    duck.execute(plan)  # the per-census tables exist from the first one-term plan on
    assert compile_dropped(plan, duck._tables) is not None  # the path taken
    assert_same(plan, engines)
    unbounded = engines["memory"].execute(replace(plan, max_rows=None, pupils_per_cell=False))
    bounded = engines["memory"].execute(plan)
    measure = plan.query.aggregates[0].name
    if plan.max_rows == 1:  # (the small census has no pupil with three rows in a term)
        assert bounded[measure].sum() < unbounded[measure].sum()  # the bound drops rows of this term


def test_a_filter_that_drops_a_pupils_first_row_keeps_its_next_one(small, engines):
    """A filter on anything but the term can drop the row a pupil's bound keeps over the whole
    term (its first school) and keep its second: then that second row counts, in its own cell.
    DuckDB then windows the filtered rows of the pupils with several rows (compile_decomposed),
    never the term's ranks, and agrees with the reference engine on such a pupil's cell."""
    from safestats.engines.compile import compile_decomposed, compile_dropped

    ds, catalog = small
    rows = pd.read_parquet(ds.table_path("PupilOnRoll"), columns=["pupil_id", "term", "school_urn"])
    rows = rows[rows.term == "2017-spring"].sort_values(["pupil_id", "school_urn"])
    dual = rows[rows.duplicated("pupil_id", keep=False)]
    assert len(dual), "the small census has pupils at two schools in the term"
    pupil = dual.pupil_id.iloc[0]
    first, second = dual[dual.pupil_id == pupil].school_urn.iloc[:2]
    query = Query(
        "PupilOnRoll",
        (Aggregate("count"),),
        ("school_urn",),
        (Filter("term", "==", "2017-spring"), Filter("school_urn", "!=", first)),
    )
    plan = dp_plan(query, catalog).plan
    duck = engines["duckdb"]
    duck.execute(plan)
    assert compile_dropped(plan, duck._tables) is None
    assert compile_decomposed(plan, duck._tables) is not None
    assert_same(plan, engines)
    # judged on the raw rows: each pupil's first row among the filtered ones counts; ranks over
    # the whole term would drop the pupil's row at its second school and count it nowhere
    kept = rows[rows.school_urn != first].drop_duplicates("pupil_id")  # sorted by pupil, school
    ranked = rows.drop_duplicates("pupil_id")
    ranked = ranked[ranked.school_urn != first]
    want, wrong = int((kept.school_urn == second).sum()), int((ranked.school_urn == second).sum())
    assert want > wrong
    got = duck.execute(plan).set_index("school_urn")[plan.query.aggregates[0].name]
    assert int(got[second]) == want
    assert first not in got.index
