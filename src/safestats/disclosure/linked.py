"""Linked tables: a user's earlier sdc releases count as published when protecting a new one.

Two tables of the same population can be differenced: a one-way LA table minus the published
cells of a two-way LA × FSM table gives the suppressed cell back. So every sdc release is
described by *what it published*, as sums over the atoms of a common refinement, and stored;
a new table of the same family is protected with all of them in view.

- The **family** of a table: dataset, table (and join), the statistic (row count, distinct
  pupils, or the sum of one measure) and any range filters on measures or dates. Only tables
  of one family are sums over the same records, so only they are linked.
- Its **dimensions**: every category it groups or filters on, and every binned measure. A cell
  is a set of allowed values per dimension (a group-by value, a filter's values, a margin's
  whole domain). The common refinement of several tables is the product of their dimensions'
  domains; each cell is the sum of the atoms whose values it allows.
- Atoms that belong to exactly the same cells are merged (an attacker cannot tell them apart),
  which keeps the linear system small.

:func:`protect_linked` then runs secondary suppression with the earlier published cells forced
and the earlier suppressed cells kept hidden, and the attacker audit over everything, so no
suppressed cell of any of the user's tables can be recovered or narrowed below its protection.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from safestats.audit.log import metadata
from safestats.catalog import Column
from safestats.errors import DisclosureRefused
from safestats.query.model import EQUALITY_OPS, INVALID, Aggregate, Filter, Query
from safestats.query.validate import Plan

__all__ = ["LinkStore", "Spec", "describe_release", "family_of", "protect_linked", "refinement"]

links_table = sa.Table(
    "sdc_releases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(200), nullable=False, index=True),
    sa.Column("family", sa.String(64), nullable=False, index=True),
    sa.Column("query_hash", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("audit_seq", sa.Integer, nullable=True),
    sa.Column("time_utc", sa.String(32), nullable=False),
)

PRIMARY, SECONDARY, PUBLISHED = "p", "s", ""


def _v(value: Any) -> str:
    """A dimension value as stored: JSON, so None, booleans, numbers and codes round-trip."""
    if value is not None and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        value = None
    return json.dumps(value)


@dataclass(frozen=True)
class Spec:
    """What one release published, for one statistic: cells as allowed values per dimension."""

    family: str
    terms: tuple[str, ...]
    dims: Mapping[str, Mapping[str, Any]]  # dim -> {"column": c, "width": w or None}
    cells: tuple[tuple[Mapping[str, tuple[str, ...]], str], ...]  # (allowed values per dim, status)

    def to_json(self) -> str:
        return json.dumps({"family": self.family, "terms": list(self.terms), "dims": self.dims,
                           "cells": [[{d: list(v) for d, v in c.items()}, s] for c, s in self.cells]},
                          sort_keys=True)  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Spec:
        raw = json.loads(text)
        cells = tuple(({d: tuple(v) for d, v in c.items()}, s) for c, s in raw["cells"])
        return cls(family=raw["family"], terms=tuple(raw["terms"]), dims=raw["dims"], cells=cells)


def family_of(plan: Plan, agg: Aggregate) -> str | None:
    """The family hash of ``agg`` in ``plan``, or None when it cannot be linked (not additive,
    or a key without a public domain)."""
    if agg.kind not in ("count", "count_pupils", "sum") or any(k.from_data for k in plan.keys):
        return None
    q = plan.query
    ranges = sorted(json.dumps(f.canonical()) for f in q.filters if not _is_dimension_filter(plan, f.column))
    text = json.dumps({"dataset": q.dataset, "table": q.table, "join": q.join, "stat": [agg.kind, agg.column],
                       "ranges": ranges}, sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def _is_dimension_filter(plan: Plan, column: str) -> bool:
    return plan.columns[column].groupable


def domain_of(col: Column) -> list[Any]:
    """The full public domain of a category as the query planner lays it out (codes, then
    "(invalid)" for unvalidated code lists, then empty)."""
    cells: list[Any] = list(col.domain or ())
    if col.type == "string" and col.domain_source.startswith("codelist:") and col.domain and not col.validated:
        cells.append(INVALID)
    if col.nullable:
        cells.append(None)
    return cells


def _allowed_by_filters(plan: Plan) -> dict[str, set[str]]:
    """Per filtered category: the values (stored form) the filters let through."""
    from safestats.query.validate import _in_range

    out: dict[str, set[str]] = {}
    for f in plan.query.filters:
        if not _is_dimension_filter(plan, f.column):
            continue
        domain = domain_of(plan.columns[f.column])
        values = f.value if isinstance(f.value, tuple) else (f.value,)
        if f.op in EQUALITY_OPS:
            chosen = {_v(v) for v in values}
            keep = {_v(d) for d in domain if (_v(d) in chosen) == (f.op in ("==", "in"))}
        else:
            keep = {_v(d) for d in domain if d is not None and d != INVALID and _in_range(d, f.op, f.value)}
        out[f.column] = keep if f.column not in out else out[f.column] & keep
    return out


def describe_release(plan: Plan, table: pd.DataFrame, statuses: Sequence[str], agg: Aggregate) -> Spec | None:
    """The spec of what ``table`` (released cells, margins labelled ``Total``) publishes for
    ``agg``; ``statuses`` per row: PRIMARY, SECONDARY or PUBLISHED."""
    family = family_of(plan, agg)
    if family is None:
        return None
    dims: dict[str, dict[str, Any]] = {}
    base = _allowed_by_filters(plan)
    for column in base:
        dims[column] = {"column": column, "width": None}
    key_dims = []
    for k in plan.keys:
        if k.bin is not None:
            dim = f"{k.bin[0]}_bin"
            dims[dim] = {"column": k.bin[0], "width": k.bin[2]}
        else:
            dim = k.name
            dims[dim] = {"column": k.name, "width": None}
        key_dims.append((k, dim, tuple(_v(c) for c in k.cells)))
    cells = []
    for i, status in enumerate(statuses):
        allowed = {d: tuple(sorted(v)) for d, v in base.items()}
        for k, dim, all_cells in key_dims:
            value = table[k.name].iloc[i]
            if isinstance(value, str) and value == "Total" and not _is_value(k, value):
                allowed[dim] = all_cells
            else:
                allowed[dim] = (_v(value),)
        cells.append((allowed, status))
    terms = _terms(plan, base)
    return Spec(family=family, terms=terms, dims=dims, cells=tuple(cells))


def _is_value(key: Any, value: str) -> bool:
    return value in key.cells


def _terms(plan: Plan, base: Mapping[str, set[str]]) -> tuple[str, ...]:
    if "term" not in plan.columns or not plan.columns["term"].domain:
        return ()
    every = [_v(t) for t in plan.columns["term"].domain]
    keep = base.get("term")
    return tuple(json.loads(t) for t in every if keep is None or t in keep)


def refinement(specs: Sequence[Spec], query: Query) -> tuple[Query, dict[str, int]]:
    """The query whose cells are the atoms of the common refinement of ``specs`` (same family):
    grouped by every category dimension, binned measures at the common (gcd) width."""
    columns: list[str] = []
    widths: dict[str, int] = {}
    for spec in specs:
        for meta in spec.dims.values():
            if meta["width"] is None:
                if meta["column"] not in columns:
                    columns.append(meta["column"])
            else:
                widths[meta["column"]] = math.gcd(widths.get(meta["column"], 0), int(meta["width"]))
    stat = query.aggregates[0]
    ranges = [f for f in query.filters if f.column not in columns and f.op not in EQUALITY_OPS
              and not _groupable_name(f.column, specs)]  # fmt: skip
    # atoms outside every cell of every table are in no constraint: leave them out of the grid
    for column in columns:
        union: set[str] = set()
        for spec in specs:
            for allowed, _ in spec.cells:
                if column not in allowed:
                    break
                union |= set(allowed[column])
            else:
                continue
            break
        else:
            if union:
                ranges.append(Filter(column, "in", tuple(json.loads(v) for v in sorted(union))))
    return Query(table=query.table, join=query.join, dataset=query.dataset, aggregates=(stat,),
                 group_by=tuple(columns), bins=tuple(sorted(widths.items())), filters=tuple(ranges)), widths


def _groupable_name(column: str, specs: Sequence[Spec]) -> bool:
    return any(meta["column"] == column for s in specs for meta in s.dims.values())


def atoms_of(spec: Spec, grid_plan: Plan, widths: Mapping[str, int]) -> list[np.ndarray]:
    """For each cell of ``spec``: the indices (in the refinement grid's C order) of its atoms."""
    dims = []
    for k in grid_plan.keys:
        if k.bin is not None:
            dims.append((f"{k.bin[0]}_bin", [int(c) for c in k.cells], k.bin[0]))
        else:
            dims.append((k.name, [_v(c) for c in k.cells], None))
    sizes = [len(values) for _, values, _ in dims]
    strides = np.array([int(np.prod(sizes[i + 1:])) for i in range(len(sizes))], dtype=np.int64)
    lookups = [{v: i for i, v in enumerate(values)} for _, values, _ in dims]
    out = []
    for allowed, _status in spec.cells:
        parts = []
        for (name, values, measure), lookup in zip(dims, lookups, strict=True):
            if measure is not None:  # a binned measure: the fine bins inside each allowed bin
                width = spec.dims.get(name, {}).get("width")
                if name not in allowed or width is None:
                    parts.append(np.arange(len(values)))
                    continue
                fine = [i for i, lo in enumerate(values) for b in allowed[name]
                        if int(json.loads(b)) <= lo < int(json.loads(b)) + int(width)]  # fmt: skip
                parts.append(np.array(sorted(set(fine)), dtype=np.int64))
            elif name in allowed:
                parts.append(np.array(sorted(lookup[v] for v in allowed[name] if v in lookup), dtype=np.int64))
            else:
                parts.append(np.arange(len(values)))
        idx = np.zeros(1, dtype=np.int64)
        for part, stride in zip(parts, strides, strict=True):
            idx = (idx[:, None] + part[None, :] * stride).ravel()
        out.append(idx)
    return out


def merge_atoms(cell_atoms: Sequence[np.ndarray], n_atoms: int) -> tuple[list[frozenset[int]], np.ndarray]:
    """Merge atoms that lie in exactly the same cells; returns each cell's classes and, per
    atom, its class (-1 for atoms in no cell)."""
    signature: list[list[int]] = [[] for _ in range(n_atoms)]
    for j, atoms in enumerate(cell_atoms):
        for a in atoms.tolist():
            signature[a].append(j)
    classes: dict[tuple[int, ...], int] = {}
    of_atom = np.full(n_atoms, -1, dtype=np.int64)
    for a, sig in enumerate(signature):
        if sig:
            of_atom[a] = classes.setdefault(tuple(sig), len(classes))
    columns = [frozenset(of_atom[atoms].tolist()) for atoms in cell_atoms]
    return columns, of_atom


class LinkStore:
    """The published structure of every sdc release, per user and family (in the service's store)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine  # the schema comes from safestats.store.migrations
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, user: str) -> threading.Lock:
        """One protect-and-record at a time per user, so two tables cannot pass unseen by each other."""
        with self._guard:
            return self._locks.setdefault(user, threading.Lock())

    def earlier(self, user: str, family: str, terms: Iterable[str]) -> list[Spec]:
        wanted = set(terms)
        with self.engine.connect() as conn:
            mine = (links_table.c.user == user) & (links_table.c.family == family)
            rows = conn.execute(sa.select(links_table.c.spec).where(mine).order_by(links_table.c.id)).all()
        specs = [Spec.from_json(r.spec) for r in rows]
        return [s for s in specs if not wanted or not s.terms or wanted & set(s.terms)]

    def add(self, user: str, query_hash: str, specs: Iterable[Spec]) -> list[int]:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        ids = []
        with self.engine.begin() as conn:
            for spec in specs:
                row = {"user": user, "family": spec.family, "query_hash": query_hash, "spec": spec.to_json(),
                       "time_utc": now}
                result = conn.execute(links_table.insert().values(**row))
                ids.append(int(result.inserted_primary_key[0]))
        return ids

    def set_audit(self, ids: Sequence[int], seq: int) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(links_table.update().where(links_table.c.id.in_(list(ids))).values(audit_seq=seq))


# -- secondary suppression and the audit across linked tables --------------------------------------

def protect_linked(columns: Sequence[frozenset[int]], values: Sequence[float], *, primary: set[int],
                   candidates: Sequence[int], forced: set[int], kept_hidden: set[int], widths: Mapping[int, float],
                   atom_values: np.ndarray | None = None,
                   max_rounds: int = 60) -> tuple[set[int], dict[int, tuple]]:  # fmt: skip
    """Choose the cells to hide among ``candidates`` (in order of preference to publish).

    ``columns[j]`` is the set of atoms cell ``j`` sums; ``primary`` must be hidden, ``forced``
    is already published (earlier releases), ``kept_hidden`` was hidden before and stays so.
    Every cell in ``widths`` (the primaries, now and before) must keep an interval at least its
    width wide given everything published. Raises DisclosureRefused if no pattern does.
    """
    from safestats.disclosure.secondary import secondary_suppression

    must_hide = set(primary) | set(kept_hidden)
    for _ in range(max_rounds):
        order = [j for j in candidates if j not in must_hide]
        hidden = secondary_suppression(columns, must_hide, order, forced)
        intervals = audit_intervals(columns, values, hidden, widths, atom_values)
        failing = sorted(j for j, (lo, hi) in intervals.items() if hi - lo < widths[j] - 1e-9)
        if not failing:
            return hidden, intervals
        added = False
        for j in failing:
            partner = _partner(j, columns, values, hidden, set(candidates) - forced)
            if partner is not None:
                must_hide.add(partner)
                added = True
        if not added:
            break
    raise DisclosureRefused("no suppression pattern protects every confidential cell of this table together with "
                            "your earlier tables of the same data; nothing was released (ask for fewer or coarser "
                            "cells)")


def _partner(j: int, columns: Sequence[frozenset[int]], values: Sequence[float], hidden: set[int],
             candidates: set[int]) -> int | None:  # fmt: skip
    """The cell to hide next to widen hidden cell ``j``: in the smallest published cell that
    bounds ``j``, the smallest published candidate beside ``j``; failing that, a published
    candidate overlapping ``j`` (a margin)."""
    cj = columns[j]
    bounding = sorted((m for m in range(len(columns)) if m not in hidden and columns[m] & cj),
                      key=lambda m: (len(columns[m]), m))  # fmt: skip
    for m in bounding:
        beside = [c for c in candidates if c not in hidden and c != m and columns[c] <= columns[m]
                  and not columns[c] & cj]  # fmt: skip
        if beside:
            return min(beside, key=lambda c: (values[c], c))
    overlapping = [c for c in candidates if c not in hidden and columns[c] & cj]
    return min(overlapping, key=lambda c: (len(columns[c]), values[c], c)) if overlapping else None


def audit_intervals(columns: Sequence[frozenset[int]], values: Sequence[float], hidden: set[int],
                    widths: Mapping[int, float],
                    atom_values: np.ndarray | None = None) -> dict[int, tuple[float, float]]:  # fmt: skip
    """The attacker audit: for each hidden cell with a required width, the range of values it
    can take given every published cell and non-negative atoms (HiGHS). Feasible points found
    on the way (the true values first) show many cells wide enough without solving for them:
    an interval is then reported as at least the spread seen."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix

    audited = [j for j in sorted(hidden) if j in widths]
    if not audited:
        return {}
    atoms = sorted(set().union(*(columns[j] for j in audited)))
    published = [j for j in range(len(columns)) if j not in hidden]
    # every atom reachable through a constraint from the audited cells matters
    relevant = set(atoms)
    changed = True
    while changed:
        changed = False
        for j in published:
            if columns[j] & relevant and not columns[j] <= relevant:
                relevant |= columns[j]
                changed = True
    index = {a: i for i, a in enumerate(sorted(relevant))}
    rows, cols, rhs = [], [], []
    r = 0
    for j in published:
        members = [index[a] for a in columns[j] if a in index]
        if not members:
            continue
        rows += [r] * len(members)
        cols += members
        rhs.append(float(values[j]))
        r += 1
    n = len(index)
    a_eq = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(r, n)) if r else None
    b_eq = np.array(rhs) if r else None
    objective = {j: np.array(sorted(index[a] for a in columns[j])) for j in audited}
    points: list[np.ndarray] = []
    if atom_values is not None:  # the truth is a feasible point
        points.append(np.array([float(atom_values[a]) for a in sorted(index)]))
    out = {}
    for j in audited:
        idx = objective[j]
        seen = [float(p[idx].sum()) for p in points]
        low, high = (min(seen), max(seen)) if seen else (math.inf, -math.inf)
        if high - low >= widths[j]:
            out[j] = (low, high)
            continue
        c = np.zeros(n)
        c[idx] = 1.0
        lo = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        if lo.status == 0:
            points.append(lo.x)
            low = min(low, float(lo.fun))
        if high - low < widths[j]:
            hi = linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
            if hi.status == 0:
                points.append(hi.x)
                high = max(high, float(-hi.fun))
            elif hi.status == 3:  # unbounded above
                high = math.inf
        out[j] = (low, high)
    return out
