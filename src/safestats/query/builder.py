"""The fluent query builder: immutable steps that end in a :class:`~safestats.query.model.Query`.

    s.table("PupilOnRoll").where(term="2017-spring", phase=["Primary", "Secondary"])
     .where(age=ss.between(5, 10)).group_by("la_code").count().mean("sessions_attended")

Each step returns a new builder; ``run()`` sends the query through the session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from safestats.errors import QueryError, did_you_mean
from safestats.query.model import Aggregate, Filter, Query, contribution_bound

if TYPE_CHECKING:
    from safestats.client.session import Session
    from safestats.result import ProtectedResult

__all__ = [
    "builder_text",
    "Condition",
    "TableQuery",
    "above",
    "at_least",
    "at_most",
    "below",
    "between",
    "not_equal",
    "not_in",
]


@dataclass(frozen=True)
class Condition:
    """A filter condition without its column: ``where(age=between(5, 10))``."""

    op: str
    value: Any


def between(low: Any, high: Any) -> Condition:
    """Inclusive range."""
    return Condition("between", (low, high))


def not_in(values: Iterable[Any]) -> Condition:
    return Condition("not in", tuple(values))


def not_equal(value: Any) -> Condition:
    return Condition("!=", value)


def at_least(value: Any) -> Condition:
    return Condition(">=", value)


def at_most(value: Any) -> Condition:
    return Condition("<=", value)


def above(value: Any) -> Condition:
    return Condition(">", value)


def below(value: Any) -> Condition:
    return Condition("<", value)


@dataclass(frozen=True)
class TableQuery:
    """A query under construction. Immutable: every method returns a new one."""

    session: Session | None
    table: str
    join_table: str | None = None
    filters: tuple[Filter, ...] = ()
    keys: tuple[str, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    dataset: str = "school_census"
    bins: tuple[tuple[str, int], ...] = ()
    totals: bool = False
    privacy: Mapping[str, Any] = field(default_factory=dict)

    # -- early checks (against what the session's describe() already said; nothing is asked) --
    def _check(self, *columns: str | None) -> None:
        known = self.session.usable_columns(*self.tables) if self.session is not None else None
        if known is None:
            return
        for c in columns:
            if c is None:
                continue
            if c not in known:
                raise QueryError(f"{' / '.join(self.tables)} has no column {c!r}{did_you_mean(c, known)}")
            if not known[c]:
                raise QueryError(
                    f"column {c!r} cannot be used: an identifier, or a column your groups may not read "
                    f"(usable: {', '.join(k for k, ok in known.items() if ok)}; granted since you connected? "
                    "s.tables() refreshes what the session knows)"
                )

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table,) + ((self.join_table,) if self.join_table else ())

    # -- shaping --------------------------------------------------------------------------
    def join(self, table: str) -> TableQuery:
        """Join another table along the key the catalog declares (e.g. Nationality)."""
        if self.join_table is not None:
            raise QueryError("a query joins at most one other table")
        return replace(self, join_table=table)

    def where(self, *conditions: Filter, **by_column: Any) -> TableQuery:
        """Filter rows: ``col=value``, ``col=[v1, v2]`` (any of), ``col=between(a, b)`` ..."""
        new = list(conditions)
        for column, value in by_column.items():
            if isinstance(value, Condition):
                new.append(Filter(column, value.op, value.value))
            elif isinstance(value, list | tuple | set | frozenset):
                new.append(Filter(column, "in", tuple(value)))
            else:
                new.append(Filter(column, "==", value))
        self._check(*(f.column for f in new))
        return replace(self, filters=self.filters + tuple(new))

    def group_by(self, *columns: str) -> TableQuery:
        self._check(*columns)
        return replace(self, keys=self.keys + tuple(columns))

    # -- aggregates -----------------------------------------------------------------------
    def _add(self, agg: Aggregate) -> TableQuery:
        self._check(agg.column)
        return replace(self, aggregates=self.aggregates + (agg,))

    def count(self, name: str = "") -> TableQuery:
        """Number of rows (registrations) per cell."""
        return self._add(Aggregate("count", name=name))

    def count_pupils(self, name: str = "") -> TableQuery:
        """Number of distinct pupils per cell."""
        return self._add(Aggregate("count_pupils", name=name))

    def sum(self, column: str, name: str = "") -> TableQuery:
        return self._add(Aggregate("sum", column, name=name))

    def mean(self, column: str, name: str = "") -> TableQuery:
        return self._add(Aggregate("mean", column, name=name))

    def quantile(self, column: str, q: float, name: str = "") -> TableQuery:
        return self._add(Aggregate("quantile", column, q, name=name))

    def median(self, column: str, name: str = "") -> TableQuery:
        return self.quantile(column, 0.5, name=name or f"median_{column}")

    def histogram(self, column: str, width: int) -> TableQuery:
        """Count rows per bin of a measure: adds a ``<column>_bin`` key (the bin's lower bound)."""
        self._check(column)
        return replace(self, bins=self.bins + ((column, width),))

    # -- privacy and presentation ---------------------------------------------------------
    def epsilon(self, value: str | int | float) -> TableQuery:
        """dp mode, Laplace noise: spend this ε (exactly; '1/3' is a third)."""
        return replace(self, privacy={**self.privacy, "epsilon": str(value)})

    def rho(self, value: str | int | float) -> TableQuery:
        """dp mode, Gaussian noise: spend this ρ (zCDP)."""
        return replace(self, privacy={**self.privacy, "rho": str(value)})

    def max_rows_per_pupil(self, k: int) -> TableQuery:
        """dp mode: the most rows one pupil may contribute (default: one per term in scope)."""
        return replace(self, privacy={**self.privacy, "max_rows_per_pupil": contribution_bound(k)})

    def select_partitions(self, delta: str | float = "1/1000000000") -> TableQuery:
        """dp mode: group on keys with no public domain (e.g. postcode_district) by DP
        partition selection: only cells whose noisy count clears a threshold appear, and the
        release is (ε, δ)-DP with this δ (default 10⁻⁹, the default policy's per-query cap;
        δ is charged to your δ budget like ε)."""
        return replace(self, privacy={**self.privacy, "delta": str(delta)})

    def with_totals(self) -> TableQuery:
        """dp mode: add margins and the grand total, summed from the released noisy cells."""
        return replace(self, totals=True)

    # -- the end of the chain -------------------------------------------------------------
    def to_query(self) -> Query:
        return Query(
            table=self.table,
            join=self.join_table,
            filters=self.filters,
            group_by=self.keys,
            aggregates=self.aggregates,
            dataset=self.dataset,
            bins=self.bins,
            totals=self.totals,
            epsilon=self.privacy.get("epsilon"),
            rho=self.privacy.get("rho"),
            max_rows_per_pupil=self.privacy.get("max_rows_per_pupil"),
            delta=self.privacy.get("delta"),
        )

    def preview(self) -> Any:
        """What this query would cost (ε/ρ, δ), its 95% accuracy per statistic and the budget
        left after it — computed from the query and the policy only: nothing is read, nothing spent."""
        if self.session is None:
            raise QueryError("this query is not attached to a session; use session.table(...)")
        return self.session.preview(self)

    def run(self) -> ProtectedResult:
        """Send the query to the service and return the protected result."""
        if self.session is None:
            raise QueryError("this query is not attached to a session; use session.table(...)")
        return self.session.run(self.to_query())

    def _repr_html_(self) -> str:
        """In a notebook: what the query will ask for, and how to see its cost before running it."""
        import html

        rows = [("table", self.table + (f" joined with {self.join_table}" if self.join_table else ""))]
        if self.filters:
            rows.append(("where", " and ".join(f"{f.column} {f.op} {f.value!r}" for f in self.filters)))
        if self.keys or self.bins:
            rows.append(("by", ", ".join([*self.keys, *(f"{c} in bins of {w}" for c, w in self.bins)])))
        rows.append(
            ("statistics", ", ".join(a.name for a in self.aggregates) or "none yet: add .count(), .mean(col) …")
        )
        if self.privacy:
            rows.append(("privacy", ", ".join(f"{k} {v}" for k, v in self.privacy.items())))
        if self.totals:
            rows.append(("totals", "margins and the grand total"))
        th = "<th style='text-align:left;padding-right:1em'>"
        body = "".join(f"<tr>{th}{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        hint = "Nothing has run yet: <code>.preview()</code> shows the cost and accuracy, <code>.run()</code> runs it."
        return f"<div class='safestats-query'><b>safestats query</b><table>{body}</table><i>{hint}</i></div>"

    def __repr__(self) -> str:
        parts = [f"table={self.table!r}"]
        if self.join_table:
            parts.append(f"join={self.join_table!r}")
        if self.filters:
            parts.append("where=" + " AND ".join(f"{f.column} {f.op} {f.value!r}" for f in self.filters))
        if self.keys:
            parts.append(f"group_by={list(self.keys)}")
        if self.aggregates:
            parts.append(f"aggregates={[a.name for a in self.aggregates]}")
        return f"TableQuery({', '.join(parts)})"


_CONDITIONS = {"!=": "not_equal", "not in": "not_in", ">=": "at_least", "<=": "at_most", ">": "above", "<": "below"}


def builder_text(query: Query) -> str:
    """The query as the notebook code that asks for it: ``s.table("T").where(...).group_by(...).count()``
    (what an output checker reads as the output's command)."""
    parts = [f"s.table({query.table!r})"]
    if query.join:
        parts.append(f".join({query.join!r})")
    simple, other = [], []
    for f in query.filters:
        if f.op == "==":
            simple.append(f"{f.column}={f.value!r}")
        elif f.op == "in":
            simple.append(f"{f.column}={list(f.value)!r}")
        elif f.op == "between":
            simple.append(f"{f.column}=ss.between({f.value[0]!r}, {f.value[1]!r})")
        else:
            value = list(f.value) if isinstance(f.value, tuple) else f.value
            other.append(f"{f.column}=ss.{_CONDITIONS.get(f.op, f.op)}({value!r})")
    if simple or other:
        parts.append(f".where({', '.join(simple + other)})")
    if query.group_by:
        parts.append(f".group_by({', '.join(repr(k) for k in query.group_by)})")
    for column, width in query.bins:
        parts.append(f".histogram({column!r}, {width})")
    for a in query.aggregates:
        if a.kind in ("count", "count_pupils"):
            parts.append(f".{a.kind}()")
        elif a.kind == "quantile":
            parts.append(f".quantile({a.column!r}, {a.q})")
        else:
            parts.append(f".{a.kind}({a.column!r})")
    if query.totals:
        parts.append(".with_totals()")
    return "".join(parts) + ".run()"
