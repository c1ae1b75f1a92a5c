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
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd

from safestats.query.validate import Plan

__all__ = ["BOUND_ORDER", "PUPILS", "Engine"]

#: The column of distinct privacy units per cell, used by the protect step and never returned.
PUPILS = "_pupils"

#: The order in which a pupil's rows are kept when the contribution bound drops some. It is
#: data-independent, and every engine must use the same one (tests/spec holds them to it).
BOUND_ORDER = ("term", "school_urn", "leaving_date")


class Engine(Protocol):
    name: str

    def execute(self, plan: Plan) -> pd.DataFrame:
        """Exact aggregates per non-empty cell (see the module docstring)."""
        ...
