"""The engine contract: one method that turns a plan into exact aggregates.

An engine runs inside the service only. What it returns never leaves the service without
passing the protect step (:mod:`safestats.disclosure`).

``execute(plan)`` returns a pandas DataFrame with one row per *non-empty* cell: a column per
group-by key (values outside a string column's code list grouped as ``INVALID``), a column per
aggregate (named as the aggregate), and ``_pupils``, the number of distinct privacy units in
the cell. Measures are clipped to their catalog bounds before aggregating. Filters are
null-safe: ``!=`` and ``not in`` keep rows whose value is empty.

:class:`~safestats.engines.memory.MemoryEngine` is the reference implementation in plain
pandas; the spec tests hold every engine to it.

For the sdc rules the plan may ask for more, never returned either:

- ``plan.top_n``: ``_top1_<m>`` … ``_top<n>_<m>`` for each measure in ``plan.top_measures``, the
  largest per-pupil totals of the (clipped) measure in the cell (0 where the cell has fewer
  contributors), and ``_top0_<m>``, the cell's total of the measure;
- ``plan.record_key``: ``_ckey``, the sum over the cell's rows of :func:`record_key` of their
  pupil, modulo ``RECORD_KEY_MODULUS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import pandas as pd

from safestats.query.columns import CELL_KEY, PUPILS, RECORD_KEY_MODULUS
from safestats.query.validate import Plan, margin_plans

K = TypeVar("K")
V = TypeVar("V")

__all__ = [
    "BOUND_ORDER",
    "CELL_KEY",
    "PUPILS",
    "RECORD_KEY_MODULUS",
    "Engine",
    "Memo",
    "execute_with_margins",
    "merge_tops",
    "record_key",
]

#: The order in which a pupil's rows are kept when the contribution bound drops some. It is
#: data-independent, and every engine must use the same one (tests/spec holds them to it).
BOUND_ORDER = ("term", "school_urn", "leaving_date")


def record_key(unit: int, params: tuple[int, int, int, int]) -> int:
    """A pupil's fixed record key: a keyed hash of its id, the same in every engine.

    ``((((id·a + b) mod M)² mod M)·c + d) mod M`` with M = 2³¹ − 1 and (a, b, c, d) derived from
    the service's secret key: integer arithmetic every SQL engine does exactly in int64.
    """
    a, b, c, d = params
    m = RECORD_KEY_MODULUS
    x = (unit * a + b) % m
    return ((x * x % m) * c + d) % m


def merge_tops(cells: pd.DataFrame, tops: list[pd.DataFrame], plan: Plan) -> pd.DataFrame:
    """Attach the per-measure top-contributor frames to the cells (keys may be empty values)."""
    from safestats.query.validate import ATOM

    names = [ATOM] if plan.atoms is not None else [k.name for k in plan.keys]
    for part in tops:
        if names:
            cells = cells.merge(part, on=names, how="left")
        else:
            cells = pd.concat([cells.reset_index(drop=True), part.reset_index(drop=True)], axis=1)
    return cells


class Memo(Generic[K, V]):
    """A bounded, thread-safe memo: ``get(key, make)`` returns what ``make()`` gave for ``key``
    the last time (the least recently used are dropped past ``size``). ``make`` runs outside
    the lock, so two threads may both make a missing value; the last one is kept."""

    def __init__(self, size: int) -> None:
        import threading
        from collections import OrderedDict

        self.size = size
        self._lock = threading.Lock()
        self._kept: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        value = make()
        with self._lock:
            self._kept[key] = value
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return value


class ScopeCache:
    """The records used of each scope seen (table, join, filters), so a census's common scopes
    (a term, an LA) are counted once per engine, not once per release. Thread-safe; bounded."""

    SIZE = 4096

    def __init__(self) -> None:
        self._seen: Memo[str, int] = Memo(self.SIZE)

    def get(self, plan: Plan, count: Callable[[Plan], int]) -> int:
        q = plan.query
        return self._seen.get(repr((q.table, q.join, plan.join_using, q.filters)), lambda: count(plan))


def execute_with_margins(engine: Engine, plan: Plan) -> list[pd.DataFrame]:
    """The exact aggregates of ``plan`` and of each of its margins (``margin_plans`` order): from
    one query where the engine can (``execute_with_margins``: DuckDB), else one query each."""
    together = getattr(engine, "execute_with_margins", None)
    found = together(plan) if together is not None else None
    return found if found is not None else [engine.execute(p) for p in [plan, *margin_plans(plan)]]


class Engine(Protocol):
    name: str

    def execute(self, plan: Plan) -> pd.DataFrame:
        """Exact aggregates per non-empty cell (see the module docstring)."""
        ...

    def scope(self, plan: Plan) -> int:
        """The number of distinct pupils whose rows the plan's filters select (its relation, joined
        as it asks, before any contribution bound): the records a release used. Never released;
        kept in the audit record for the data owner's reports."""
        ...

    def ping(self) -> None:
        """Raise unless the engine can answer (the service's readiness check); reads no rows."""
        ...
