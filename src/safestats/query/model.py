"""The query model: frozen, engine-free descriptions of aggregate queries.

Nodes check their own shape when they are built (an unknown operator or aggregate cannot
exist); checks that need the catalog or the policy happen in :mod:`safestats.query.validate`
and :mod:`safestats.access.policy`. A query has one canonical form, and its SHA-256 is the
query hash used in the audit log (and later for caching releases).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from safestats.errors import QueryError
from safestats.query.aggregates import KINDS, AggregateKind

__all__ = ["AGGREGATES", "INVALID", "OPS", "Aggregate", "Filter", "Query", "exact_fraction"]

#: Filter operators. Categories take ==, !=, in, not in; measures and dates take ranges.
OPS = ("==", "!=", "in", "not in", "between", "<", "<=", ">", ">=")
EQUALITY_OPS = ("==", "!=", "in", "not in")
RANGE_OPS = ("between", "<", "<=", ">", ">=")
#: Aggregates: rows, distinct pupils, and statistics of a bounded measure.
AGGREGATES = tuple(KINDS)
#: The public bucket for values outside a column's code list (validity checks group on it).
INVALID = "(invalid)"
WIRE_VERSION = 1


def _plain(value: Any) -> Any:
    """A JSON-able, canonical form of a filter value."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    raise QueryError(f"filter value {value!r} is not a string, number, boolean or date")


@dataclass(frozen=True)
class Filter:
    """``column op value``; ``value`` is a tuple for ``in``/``not in``, a pair for ``between``."""

    column: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise QueryError("a filter needs a column name")
        if self.op not in OPS:
            raise QueryError(f"unknown filter operator {self.op!r}; use one of {', '.join(OPS)}")
        if self.op in ("in", "not in"):
            values = self.value
            if isinstance(values, str) or not hasattr(values, "__iter__"):
                raise QueryError(f"filter {self.column} {self.op} needs a list of values")
            plain = sorted({_plain(v) for v in values}, key=lambda v: (v is None, str(type(v)), v))
            if not plain:
                raise QueryError(f"filter {self.column} {self.op} needs at least one value")
            object.__setattr__(self, "value", tuple(plain))
        elif self.op == "between":
            try:
                low, high = self.value
            except (TypeError, ValueError):
                raise QueryError(f"filter {self.column} between needs (low, high)") from None
            low, high = _plain(low), _plain(high)
            if low is None or high is None or not low <= high:
                raise QueryError(f"filter {self.column} between needs low <= high, got {low!r}, {high!r}")
            object.__setattr__(self, "value", (low, high))
        else:
            object.__setattr__(self, "value", _plain(self.value))
            if self.value is None and self.op in RANGE_OPS:
                raise QueryError(f"filter {self.column} {self.op} needs a value")

    def canonical(self) -> list[Any]:
        v = list(self.value) if isinstance(self.value, tuple) else self.value
        return [self.column, self.op, v]


@dataclass(frozen=True)
class Aggregate:
    """One statistic per cell. ``count`` counts rows, ``count_pupils`` distinct pupils."""

    kind: str
    column: str | None = None
    q: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise QueryError(f"unknown aggregate {self.kind!r}; use one of {', '.join(AGGREGATES)}")
        kind = KINDS[self.kind]
        if not kind.measure:
            if self.column is not None:
                raise QueryError(f"{self.kind} takes no column")
        elif not self.column:
            raise QueryError(f"{self.kind} needs a measure column")
        if kind.q:
            if isinstance(self.q, bool) or not isinstance(self.q, int | float) or not 0 < float(self.q) < 1:
                raise QueryError(f"quantile needs q between 0 and 1 (exclusive), got {self.q!r}")
            object.__setattr__(self, "q", float(self.q))
        elif self.q is not None:
            raise QueryError(f"{self.kind} takes no q")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    def default_name(self) -> str:
        return KINDS[self.kind].default_name(self.column, self.q)

    @property
    def spec(self) -> AggregateKind:
        """What this kind takes and how it is released (query/aggregates.py)."""
        return KINDS[self.kind]

    def canonical(self) -> list[Any]:
        return [self.kind, self.column, self.q, self.name]


def contribution_bound(k: object) -> int:
    """A contribution bound: a whole number of rows per pupil, at least 1 — never a bool, a
    float or a string. Every entry point (builder, wire form, SQL, planner) goes through this
    one check, and the planner's sensitivities are computed from the int it returns."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"max_rows_per_pupil must be a whole number of rows (1, 2, ...), not {k!r}")
    return int(k)


@dataclass(frozen=True)
class Query:
    """An aggregate query over one catalog table, optionally joined along a declared key."""

    table: str
    aggregates: tuple[Aggregate, ...]
    group_by: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    join: str | None = None
    dataset: str = "school_census"
    #: Binned measures as extra group-by keys (histograms): ((column, bin width), ...)
    bins: tuple[tuple[str, int], ...] = ()
    #: Privacy loss to spend (dp mode), exact: a decimal or fraction string such as "1/3".
    epsilon: str | None = None
    rho: str | None = None
    #: Most rows one pupil may contribute (dp mode); default from the terms the query covers.
    max_rows_per_pupil: int | None = None
    #: Add margins (subtotals and the grand total) computed from the released cells.
    totals: bool = False
    #: dp mode: group on keys without a public domain by DP partition selection, at this δ.
    delta: str | None = None
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.table or not isinstance(self.table, str):
            raise QueryError("a query needs a table (a name)")
        if self.join is not None and not isinstance(self.join, str):
            raise QueryError(f"join takes one table name, not {self.join!r}")
        if not isinstance(self.dataset, str):
            raise QueryError(f"dataset is a name, not {self.dataset!r}")
        if not isinstance(self.totals, bool):
            raise QueryError(f"totals must be true or false, not {self.totals!r}")
        if self.max_rows_per_pupil is not None:
            object.__setattr__(self, "max_rows_per_pupil", contribution_bound(self.max_rows_per_pupil))
        object.__setattr__(self, "aggregates", tuple(self.aggregates))
        object.__setattr__(self, "group_by", tuple(self.group_by))
        object.__setattr__(self, "filters", tuple(self.filters))
        bins = []
        for b in self.bins:
            try:
                column, width = b
            except (TypeError, ValueError):
                raise QueryError(f"a histogram bin needs (column, width), got {b!r}") from None
            if isinstance(width, bool) or not isinstance(width, int):
                raise QueryError(f"a histogram bin width is a whole number, not {width!r}")
            if width < 1:
                raise QueryError(f"bin width of {column} must be at least 1")
            bins.append((str(column), width))
        object.__setattr__(self, "bins", tuple(bins))
        for name in ("epsilon", "rho"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(exact_fraction(value, name)))
        if self.delta is not None:
            d = exact_fraction(self.delta, "delta")
            if d >= Fraction(1, 1000):
                raise QueryError(f"delta must be below 1/1000 (it is a probability of failure), got {self.delta}")
            object.__setattr__(self, "delta", str(d))
        if self.epsilon is not None and self.rho is not None:
            raise QueryError("give epsilon (pure DP) or rho (zCDP), not both")
        if not self.aggregates:
            raise QueryError(
                "a query must ask for at least one aggregate (count, count_pupils, sum, mean or "
                "quantile); safestats never returns rows"
            )
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise QueryError(f"aggregate names repeat: {names}")
        keys = self.keys
        if len(set(keys)) != len(keys):
            raise QueryError(f"group-by columns repeat: {list(keys)}")
        clash = set(names) & set(keys)
        if clash:
            raise QueryError(f"aggregate names clash with group-by columns: {sorted(clash)}")

    # -- canonical form -------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The canonical form: filters sorted, everything else in the order asked."""
        return {
            "v": WIRE_VERSION,
            "dataset": self.dataset,
            "table": self.table,
            "join": self.join,
            "filters": sorted((f.canonical() for f in self.filters), key=json.dumps),
            "group_by": list(self.group_by),
            "bins": [list(b) for b in self.bins],
            "aggregates": [a.canonical() for a in self.aggregates],
            "epsilon": self.epsilon,
            "rho": self.rho,
            "max_rows_per_pupil": self.max_rows_per_pupil,
            "totals": self.totals,
            "delta": self.delta,
        }

    @property
    def hash(self) -> str:
        if not self._hash:
            text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_hash", hashlib.sha256(text.encode()).hexdigest())
        return self._hash

    def to_wire(self) -> dict[str, Any]:
        return self.canonical()

    @classmethod
    def from_wire(cls, wire: Any) -> Query:
        """Rebuild a query from its wire form, with clear errors for malformed input."""
        if not isinstance(wire, dict):
            raise QueryError("a query must be a JSON object")
        if wire.get("v") != WIRE_VERSION:
            raise QueryError(f"unsupported query version {wire.get('v')!r}; this service speaks {WIRE_VERSION}")
        try:
            filters = tuple(
                Filter(c, op, tuple(v) if isinstance(v, list) else v) for c, op, v in wire.get("filters", [])
            )
            aggregates = tuple(Aggregate(kind, col, q, name) for kind, col, q, name in wire.get("aggregates", []))
            return cls(
                table=str(wire["table"]),
                join=wire.get("join"),
                filters=filters,
                group_by=tuple(_name(g, "group_by") for g in wire.get("group_by", [])),
                aggregates=aggregates,
                dataset=str(wire.get("dataset", "school_census")),
                bins=tuple((_name(c, "bins"), w) for c, w in wire.get("bins", [])),
                epsilon=wire.get("epsilon"),
                rho=wire.get("rho"),
                max_rows_per_pupil=wire.get("max_rows_per_pupil"),
                totals=wire.get("totals", False),
                delta=wire.get("delta"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise QueryError(f"malformed query: {e}") from None

    def columns_used(self) -> dict[str, tuple[str, ...]]:
        """Field names used, by purpose (for access checks, labels and the audit log)."""
        return {
            "filter": tuple(sorted({f.column for f in self.filters})),
            "group": self.group_by,
            "measure": tuple(sorted({a.column for a in self.aggregates if a.column} | {c for c, _ in self.bins})),
        }

    @property
    def keys(self) -> tuple[str, ...]:
        """Output key columns: the group-by columns, then one ``<measure>_bin`` per histogram bin."""
        return (*self.group_by, *(f"{c}_bin" for c, _ in self.bins))

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table, self.join) if self.join else (self.table,)

    @property
    def returned(self) -> tuple[str, ...]:
        return (*self.keys, *(a.name for a in self.aggregates))


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise QueryError(f"{what} takes column names, not {value!r}")
    return value


def exact_fraction(value: Any, what: str = "value") -> Fraction:
    """An exact, positive rational from an int, a decimal string or a fraction string.

    >>> exact_fraction("1/3") + exact_fraction("1/3") + exact_fraction("1/3") == 1
    True
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Fraction) or len(str(value)) > 60:
        raise QueryError(f"{what} {str(value)[:60]!r} is not a number such as '0.5' or '1/3'")
    try:
        f = Fraction(str(value))  # str(0.1) is '0.1': a float means the decimal as typed
    except (ValueError, ZeroDivisionError, OverflowError):
        raise QueryError(f"{what} {value!r} is not a number such as '0.5' or '1/3'") from None
    if f <= 0:
        raise QueryError(f"{what} must be positive, got {value!r}")
    return f
