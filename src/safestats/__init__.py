"""safestats: aggregate-only, disclosure-controlled, labelled and audited access to the census.

import safestats as ss
s = ss.connect()
s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
"""

import typing as _typing

from safestats.__about__ import __version__
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

if _typing.TYPE_CHECKING:
    from safestats.client.session import Session, connect
    from safestats.result import ProtectedResult

#: loaded on first use, so `import safestats` (and every `safestats` command) stays quick:
#: pandas comes with the session or the first result, not with the import
_LAZY = {
    "Session": "safestats.client.session",
    "connect": "safestats.client.session",
    "ProtectedResult": "safestats.result",
}


def __getattr__(name: str) -> _typing.Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'safestats' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
