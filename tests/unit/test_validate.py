from __future__ import annotations

import pytest

from safestats.errors import DisclosureRefused, QueryError
from safestats.query.model import INVALID, Aggregate, Filter, Query
from safestats.query.validate import plan_query

IDENTIFIERS = ["pupil_id", "upn", "forename", "surname", "date_of_birth", "postcode"]


def plan(catalog, max_cells=100_000, **kw):
    kw.setdefault("aggregates", (Aggregate("count"),))
    return plan_query(Query(table=kw.pop("table", "PupilOnRoll"), **kw), catalog=catalog, max_cells=max_cells)


@pytest.mark.parametrize("ident", IDENTIFIERS)
def test_identifiers_are_never_grouped_filtered_or_aggregated(catalog, ident):
    with pytest.raises(QueryError, match=f"{ident} is an identifier"):
        plan(catalog, group_by=(ident,))
    with pytest.raises(QueryError, match=f"{ident} is an identifier"):
        plan(catalog, filters=(Filter(ident, "==", "x"),))
    with pytest.raises(QueryError, match=f"{ident} is an identifier"):
        plan(catalog, filters=(Filter(ident, "between", ("a", "b")),))
    with pytest.raises(QueryError, match=f"{ident} is an identifier"):
        plan(catalog, aggregates=(Aggregate("sum", ident),))


def test_grid_comes_from_public_domains_narrowed_by_filters(catalog):
    p = plan(catalog, group_by=("la_code", "phase"), filters=(Filter("phase", "in", ["Primary", "PRU"]),))
    la, phase = p.keys
    assert len(la.cells) == 152  # every LA (validated: no invalid bucket)
    assert phase.cells == ("Primary", "PRU")
    assert p.cells == 152 * 2


def test_nullable_columns_have_an_empty_cell(catalog):
    p = plan(catalog, table="Nationality", group_by=("proficiency_in_english",))
    assert p.keys[0].cells[-2:] == (INVALID, None)


def test_values_outside_the_code_list_are_refused_with_the_allowed_values(catalog):
    with pytest.raises(QueryError, match="'2017-sprng' is not a value of term; values are '2016-autumn'"):
        plan(catalog, filters=(Filter("term", "==", "2017-sprng"),))


def test_invalid_bucket_can_be_filtered(catalog):
    p = plan(catalog, table="Nationality", filters=(Filter("nationality", "==", INVALID),))
    assert len(p.codes["nationality"]) == 202


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"group_by": ("sessions_attended",)}, "is a measure: group by key or category"),
        ({"group_by": ("shoe_size",)}, "no column 'shoe_size'"),
        ({"filters": (Filter("phase", ">", "Primary"),)}, "is a category: filter it with"),
        ({"filters": (Filter("sessions_attended", "==", 3),)}, "filter it with a range"),
        ({"filters": (Filter("sessions_attended", ">", "lots"),)}, "filter it with numbers"),
        ({"aggregates": (Aggregate("mean", "age"),)}, "mean needs a measure; age is a category"),
        ({"table": "Pupils"}, "no table 'Pupils'"),
        ({"join": "PupilNoLongerOnRoll"}, "cannot be joined"),
        ({"group_by": ("nationality",)}, "no column 'nationality'"),
        ({"filters": (Filter("phase", "==", None),)}, "never empty"),
    ],
)
def test_refusals_say_what_is_allowed(catalog, kw, message):
    with pytest.raises(QueryError, match=message):
        plan(catalog, **kw)


def test_cell_limit(catalog):
    # 152 LA cells x 204 nationality cells (202 codes + invalid + empty)
    q = Query("PupilOnRoll", (Aggregate("count"),), ("la_code", "nationality"), join="Nationality")
    with pytest.raises(DisclosureRefused, match="would return 31,008 cells, more than the maximum of 10,000"):
        plan_query(q, catalog=catalog, max_cells=10_000)
    assert plan_query(q, catalog=catalog, max_cells=31_008).cells == 31_008


def test_school_register_is_a_groupable_key(catalog):
    p = plan(catalog, group_by=("school_urn",), filters=(Filter("la_code", "==", "201"),))
    assert len(p.keys[0].cells) > 100
