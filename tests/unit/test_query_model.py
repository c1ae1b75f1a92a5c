from __future__ import annotations

import pytest

from safestats.errors import QueryError
from safestats.query.model import Aggregate, Filter, Query


def _q(**kw):
    return Query(table="PupilOnRoll", aggregates=(Aggregate("count"),), **kw)


def test_canonical_hash_ignores_filter_order_and_value_order():
    a = _q(filters=(Filter("term", "==", "2017-spring"), Filter("phase", "in", ["Secondary", "Primary"])))
    b = _q(filters=(Filter("phase", "in", ("Primary", "Secondary", "Primary")), Filter("term", "==", "2017-spring")))
    assert a.hash == b.hash and len(a.hash) == 64
    assert a.hash != _q(filters=(Filter("term", "==", "2017-summer"),)).hash


def test_group_order_matters_to_the_hash():
    assert _q(group_by=("phase", "sex")).hash != _q(group_by=("sex", "phase")).hash


def test_wire_round_trip():
    q = Query(
        table="PupilOnRoll",
        join="Nationality",
        filters=(Filter("age", "between", (5, 10)), Filter("phase", "not in", ["PRU"])),
        group_by=("la_code",),
        aggregates=(Aggregate("count"), Aggregate("quantile", "sessions_attended", 0.9)),
    )
    assert Query.from_wire(q.to_wire()) == q
    assert Query.from_wire(q.to_wire()).hash == q.hash


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Filter("term", "like", "x"), "unknown filter operator 'like'"),
        (lambda: Filter("phase", "in", "Primary"), "needs a list of values"),
        (lambda: Filter("phase", "in", []), "at least one value"),
        (lambda: Filter("age", "between", (10, 5)), "low <= high"),
        (lambda: Filter("age", "between", 5), r"needs \(low, high\)"),
        (lambda: Aggregate("max", "age"), "unknown aggregate 'max'"),
        (lambda: Aggregate("sum"), "needs a measure column"),
        (lambda: Aggregate("count", "age"), "takes no column"),
        (lambda: Aggregate("quantile", "sessions_attended", 1.5), "between 0 and 1"),
        (lambda: Query(table="PupilOnRoll", aggregates=()), "never returns rows"),
        (lambda: _q(group_by=("phase", "phase")), "repeat"),
        (lambda: Query(table="PupilOnRoll", aggregates=(Aggregate("count"), Aggregate("count"))), "repeat"),
        (lambda: Query.from_wire({"v": 99}), "unsupported query version"),
        (lambda: Query.from_wire({"v": 1, "aggregates": [["count", None, None, "n"]]}), "malformed query"),
        (lambda: Query.from_wire([1, 2]), "JSON object"),
    ],
)
def test_malformed_queries_cannot_be_built(build, message):
    with pytest.raises(QueryError, match=message):
        build()


def test_columns_used_by_purpose():
    q = Query(
        table="PupilOnRoll",
        filters=(Filter("term", "==", "2017-spring"),),
        group_by=("la_code",),
        aggregates=(Aggregate("mean", "sessions_attended"), Aggregate("count_pupils")),
    )
    assert q.columns_used() == {"filter": ("term",), "group": ("la_code",), "measure": ("sessions_attended",)}
    assert q.returned == ("la_code", "mean_sessions_attended", "pupils")


def test_a_release_digest_survives_the_wire():
    """The digest the audit record carries equals the one computed from the bundle's JSON, even
    with ten or more withheld rows (JSON turns row numbers into string keys, sorted as text)."""
    import json

    from safestats.releases import result_digest

    payload = {
        "table": {"columns": ["n"], "data": {"n": list(range(12))}},
        "dtypes": {"n": "Int64"},
        "meta": {"symbols": {"n": {i: "c" for i in range(12)}}, "label": "OFFICIAL", "query_hash": "q"},
    }
    assert result_digest(payload) == result_digest(json.loads(json.dumps(payload)))
    changed = json.loads(json.dumps(payload))
    changed["meta"]["symbols"]["n"]["11"] = "low"
    assert result_digest(changed) != result_digest(payload)


def test_every_aggregate_kind_is_declared_once_and_used_everywhere():
    """query/aggregates.py is the one table of kinds: the model, the builder and SQL build only
    those, and every property the protect step reads is declared for each."""
    from safestats.query.aggregates import KINDS
    from safestats.query.model import AGGREGATES

    assert AGGREGATES == tuple(KINDS) == ("count", "count_pupils", "sum", "mean", "quantile")
    for kind in KINDS.values():
        agg = Aggregate(kind.name, "sessions_attended" if kind.measure else None, 0.5 if kind.q else None)
        assert agg.spec is kind and agg.name == kind.default_name(agg.column, agg.q)
    with pytest.raises(QueryError, match="unknown aggregate 'variance'"):
        Aggregate("variance", "sessions_attended")
