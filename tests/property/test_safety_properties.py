"""Generated requests against the safety properties of the safe query path.

- no released count (rows or pupils) is below the threshold;
- no identifier reaches any output: not as a column, not as a value;
- every request, answered or refused, yields exactly one audit record, and the chain verifies;
- a refusal changes nothing but the audit log.
"""

from __future__ import annotations

from fractions import Fraction

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safestats.errors import UserError
from safestats.query.model import Aggregate, Filter, Query
from safestats.result import result_from_payload

IDENTIFIERS = ["pupil_id", "upn", "forename", "surname", "date_of_birth", "postcode"]
GROUPABLE = [
    "la_code",
    "phase",
    "sex",
    "fsm_eligible",
    "sen_provision",
    "ethnicity",
    "nc_year",
    "term",
    "first_language",
    "age",
    "nationality",
    "proficiency_in_english",
    "school_urn",
]
VALUES = {
    "phase": ["Primary", "Secondary", "PRU"],
    "term": ["2016-autumn", "2017-spring"],
    "sex": ["F", "M"],
    "la_code": ["201", "886", "420", "330"],
    "sen_provision": ["E", "K"],
    "first_language": ["OTH"],
}
USERS = ["demo.analyst", "demo.unrestricted", "demo.researcher", "quality.reports"]
THRESHOLD = 10


@st.composite
def requests(draw):
    table = draw(st.sampled_from(["PupilOnRoll", "PupilNoLongerOnRoll", "PupilOnRoll_Unrestricted", "Nationality"]))
    join = "Nationality" if table == "PupilOnRoll" and draw(st.booleans()) else None
    group = draw(st.lists(st.sampled_from(GROUPABLE + IDENTIFIERS[:2]), max_size=2, unique=True))
    filters = []
    for col in draw(st.lists(st.sampled_from(sorted(VALUES) + IDENTIFIERS[1:3]), max_size=2, unique=True)):
        vals = VALUES.get(col, ["A123456789012"])
        filters.append(Filter(col, "in", tuple(draw(st.lists(st.sampled_from(vals), min_size=1, unique=True)))))
    aggs = draw(
        st.lists(
            st.sampled_from(
                [
                    Aggregate("count"),
                    Aggregate("count_pupils"),
                    Aggregate("mean", "sessions_attended"),
                    Aggregate("sum", "sessions_possible"),
                    Aggregate("quantile", "sessions_attended", 0.5),
                ]
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda a: a.name,
        )
    )
    user = draw(st.sampled_from(USERS))
    return user, Query(table, tuple(aggs), tuple(group), tuple(filters), join=join)


@pytest.fixture(scope="module", autouse=True)
def generous_budgets(module_service):
    """These tests are about safety, not budgets: give every dp user plenty."""
    for user in USERS:
        if module_service.policy.disclosure_for(module_service.identity(user)).mode == "dp":
            module_service.set_budget(user, Fraction(10**9))


def _run(service, user, query):
    identity = service.identity(user)
    return result_from_payload(service.query(query.to_wire(), identity=identity))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_every_request_is_safe_and_audited_once(request, module_service):
    user, query = request
    before = module_service.audit.count()
    try:
        result = _run(module_service, user, query)
    except UserError:
        result = None
    after = list(module_service.audit.records())
    assert len(after) == before + 1  # exactly one record, answered or refused
    last = after[-1]
    assert last["user"] == user and last["query_hash"] == query.hash
    if result is None:
        assert last["outcome"] == "refused" and last["fields_returned"] == []
        return
    assert last["outcome"] == "released"
    # no identifier as a column, nor as a value anywhere in the output
    assert not set(result.columns) & set(IDENTIFIERS)
    catalog = module_service.catalog
    for key in query.group_by:
        col = next(t.columns[key] for t in catalog.tables.values() if key in t.columns)
        assert not col.is_identifier
        assert all(col.in_domain(None if pd.isna(v) else v) or v == "(invalid)" for v in result[key].tolist())
    # no released count below the threshold; withheld cells carry their symbol
    for agg in query.aggregates:
        values = result[agg.name]
        withheld = result.symbols[agg.name] == "c"
        assert values[withheld].isna().all()
        if agg.kind in ("count", "count_pupils"):
            assert (values[~withheld].dropna() >= THRESHOLD).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_refusals_change_nothing_but_the_log(request, module_service):
    probe = Query("PupilOnRoll", (Aggregate("count"),), ("phase",))
    before = _run(module_service, "demo.analyst", probe)
    user, query = request
    try:
        _run(module_service, user, query)
    except UserError:
        pass
    after = _run(module_service, "demo.analyst", probe)
    pd.testing.assert_frame_equal(pd.DataFrame(before), pd.DataFrame(after))
    assert module_service.audit.verify().ok
