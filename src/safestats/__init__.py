"""safestats: aggregate-only, disclosure-controlled, labelled and audited access to the census.

import safestats as ss
s = ss.connect()
s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
"""

from safestats.__about__ import __version__
from safestats.client.session import Session, connect
from safestats.errors import (
    AccessDenied,
    AuditFailure,
    DisclosureRefused,
    QueryError,
    ReleaseError,
    SafestatsError,
    UserError,
)
from safestats.query.builder import (
    Condition,
    TableQuery,
    above,
    at_least,
    at_most,
    below,
    between,
    not_equal,
    not_in,
)
from safestats.query.model import INVALID, Aggregate, Filter, Query
from safestats.result import ProtectedResult

__all__ = [
    "AccessDenied",
    "Aggregate",
    "AuditFailure",
    "Condition",
    "DisclosureRefused",
    "Filter",
    "INVALID",
    "ProtectedResult",
    "Query",
    "QueryError",
    "ReleaseError",
    "SafestatsError",
    "Session",
    "TableQuery",
    "UserError",
    "__version__",
    "above",
    "at_least",
    "at_most",
    "below",
    "between",
    "connect",
    "not_equal",
    "not_in",
]
