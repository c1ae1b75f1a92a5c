"""Linked tables: every sdc release of a disclosure domain counts as published when
protecting the next one.

Two tables of the same population can be differenced: a one-way LA table minus the published
cells of a two-way LA × FSM table gives the suppressed cell back, and two tables that differ by
one filter (a *tracker*) isolate a group that no table shows as a cell. So every sdc release is
described by *what it published*, as sums over the atoms of a common refinement, and stored;
a new table is protected with every earlier table of its family in the domain in view, and
every small *atom* of the refinement — a group of pupils that only filters and differences
imply — is protected like a suppressed cell.

- The **domain** (policy ``domain``, default ``published``): releases seen together. Published
  statistics are seen by everyone, so by default every sdc user's releases are one domain.
- The **family** of a statistic: the dataset, the *population* (the records counted: a table,
  its ``*_Unrestricted`` view, a complete join to ``Nationality`` and the per-term
  ``Nationality`` table all count the pupils on roll, see the catalog's ``population``) and the
  additive quantity: ``count`` (row counts and distinct pupils, linked as row counts) or the sum
  of one measure. A mean or a quantile publishes its cell's count and sum as far as the check
  is concerned (it is linked in both families).
- Its **dimensions**: every category it groups or filters on, and every binned measure, the
  term included (tables of other terms link through the term dimension). A cell is a set of
  allowed values per dimension. The common refinement of several tables is the product of
  their dimensions' value classes; each cell is the sum of the atoms whose values it allows.
- Atoms that belong to exactly the same cells are merged (an attacker cannot tell them apart);
  the engine aggregates each merged atom directly (AtomMap), so its pupils are exact.

:func:`protect_linked` then runs secondary suppression with the earlier published cells forced
and the earlier suppressed cells kept hidden, and the attacker audit over everything, so no
suppressed cell and no small atom can be recovered or narrowed below its protection.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from safestats.audit.log import metadata
from safestats.catalog import Catalog, Column
from safestats.errors import DisclosureRefused
from safestats.query.model import EQUALITY_OPS, INVALID, Aggregate, Filter, Query
from safestats.query.validate import AtomMap, Plan

__all__ = ["LinkStore", "Refinement", "Spec", "describe_release", "families_of", "protect_linked", "refinement"]

#: The published structure of every sdc release (this version on: one row per release and family).
links_table = sa.Table(
    "sdc_published",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("domain", sa.String(200), nullable=False, index=True),
    sa.Column("family", sa.String(64), nullable=False, index=True),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("query_hash", sa.String(64), nullable=False, index=True),
    sa.Column("snapshot_id", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("audit_seq", sa.Integer, nullable=True),
    sa.Column("time_utc", sa.String(32), nullable=False),
)
#: The per-user table of the versions before domains (kept, no longer written).
legacy_links_table = sa.Table(
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

#: Cell statuses in a spec: a primary (a rule withheld it), a secondary withheld to protect
#: another cell of the same table, one withheld because of earlier tables or implied atoms
#: (linked), and published.
PRIMARY, SECONDARY, LINKED, PUBLISHED = "p", "s", "l", ""
COUNT = "count"


def _v(value: Any) -> str:
    """A dimension value as stored: JSON, so None, booleans, numbers and codes round-trip."""
    if value is not None and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        value = None
    return json.dumps(value)


@dataclass(frozen=True)
class Spec:
    """What one release published, for one family: cells as allowed values per dimension."""

    family: str
    terms: tuple[str, ...]
    dims: Mapping[str, Mapping[str, Any]]  # dim -> {"column": c, "width": w or None}
    cells: tuple[tuple[Mapping[str, tuple[str, ...]], str], ...]  # (allowed values per dim, status)
    population: str = ""
    stat: str = COUNT  # "count" or "sum:<measure>"

    def to_json(self) -> str:
        return json.dumps({"family": self.family, "terms": list(self.terms), "dims": self.dims,
                           "population": self.population, "stat": self.stat,
                           "cells": [[{d: list(v) for d, v in c.items()}, s] for c, s in self.cells]},
                          sort_keys=True)  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Spec:
        raw = json.loads(text)
        cells = tuple(({d: tuple(v) for d, v in c.items()}, s) for c, s in raw["cells"])
        return cls(family=raw["family"], terms=tuple(raw["terms"]), dims=raw["dims"], cells=cells,
                   population=raw.get("population", ""), stat=raw.get("stat", COUNT))  # fmt: skip

    @property
    def hidden(self) -> np.ndarray:
        return np.array([s != PUBLISHED for _, s in self.cells], dtype=bool)


def stats_of(agg: Aggregate) -> tuple[str, ...]:
    """The additive quantities a statistic publishes, as far as differencing goes: counts of
    rows and of distinct pupils are linked as row counts; a sum of a measure as that sum; a mean
    or a quantile as both its cell's count and its sum (an attacker who knows one learns the other)."""
    if agg.kind in ("count", "count_pupils"):
        return (COUNT,)
    if agg.kind == "sum":
        return (f"sum:{agg.column}",)
    return (COUNT, f"sum:{agg.column}")


def family_key(dataset: str, population: str, stat: str) -> str:
    text = json.dumps({"dataset": dataset, "population": population, "stat": stat}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def families_of(plan: Plan, agg: Aggregate, catalog: Catalog) -> list[tuple[str, str, str]]:
    """(family key, population, stat) of every family ``agg`` in ``plan`` is linked in."""
    found = catalog.population_of(plan.query.table, plan.query.join)
    if found is None:  # pragma: no cover - sdc_checks refuses such joins before anything runs
        raise DisclosureRefused("this join cannot be linked with other tables of the same pupils")
    population, _ = found
    return [(family_key(plan.query.dataset, population, st), population, st) for st in stats_of(agg)]


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


def describe_release(plan: Plan, table: pd.DataFrame, statuses: Sequence[str], family: tuple[str, str, str]) -> Spec:
    """The spec of what ``table`` (released cells, margins labelled ``Total``) publishes in
    ``family``; ``statuses`` per row: PRIMARY, SECONDARY, LINKED or PUBLISHED."""
    key, population, stat = family
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
    return Spec(family=key, terms=terms, dims=dims, cells=tuple(cells), population=population, stat=stat)


def _is_value(key: Any, value: str) -> bool:
    return value in key.cells


def _terms(plan: Plan, base: Mapping[str, set[str]]) -> tuple[str, ...]:
    if "term" not in plan.columns or not plan.columns["term"].domain:
        return ()
    every = [_v(t) for t in plan.columns["term"].domain]
    keep = base.get("term")
    return tuple(json.loads(t) for t in every if keep is None or t in keep)


@dataclass
class Refinement:
    """The common refinement of some specs: per dimension, the coarsest classes of values that
    every cell's allowed set is a union of; atoms are the product of the classes."""

    dims: list[str]
    columns: list[str]  # the column each dimension groups (a binned measure: its column)
    widths: list[int | None]  # the common bin width of a binned measure, else None
    values: list[list[str]]  # per dimension: its values (stored form; fine bins for a measure)
    class_of: list[dict[str, int]]  # per dimension: value -> class
    sizes: list[int]  # classes per dimension
    restricted: list[bool]  # every cell of every spec restricts the dimension (values outside are left out)

    @property
    def cells(self) -> int:
        return math.prod(self.sizes)

    def allowed_values(self, d: int, spec: Spec, allowed: Mapping[str, tuple[str, ...]]) -> list[str] | None:
        """The values of dimension ``d`` a cell allows (None: all)."""
        name = self.dims[d]
        if name not in allowed:
            return None
        if self.widths[d] is None:
            return list(allowed[name])
        width = int(spec.dims[name]["width"])
        bounds = [int(json.loads(b)) for b in allowed[name]]
        return [v for v in self.values[d] if any(b <= int(json.loads(v)) < b + width for b in bounds)]

    def atoms(self, spec: Spec) -> list[np.ndarray]:
        """For each cell of ``spec``: the atoms (C-order indices of the class grid) it sums."""
        strides = self.strides
        out = []
        for allowed, _ in spec.cells:
            idx = np.zeros(1, dtype=np.int64)
            for d, stride in enumerate(strides):
                chosen = self.allowed_values(d, spec, allowed)
                if chosen is None:
                    classes = np.arange(self.sizes[d])
                else:
                    found = {self.class_of[d][v] for v in chosen if v in self.class_of[d]}
                    classes = np.array(sorted(found), dtype=np.int64)
                idx = (idx[:, None] + classes[None, :] * stride).ravel()
            out.append(idx)
        return out

    @property
    def strides(self) -> list[int]:
        return [math.prod(self.sizes[i + 1:]) for i in range(len(self.sizes))]

    def query(self, catalog: Catalog, population: str, stat: str) -> Query:
        """The query over the population's rows whose groups are the refinement's dimensions
        (the engine then maps them to atoms, see :meth:`atom_map`)."""
        group = tuple(c for c, w in zip(self.columns, self.widths, strict=True) if w is None)
        bins = tuple((c, int(w)) for c, w in zip(self.columns, self.widths, strict=True) if w is not None)
        measure = stat.split(":", 1)[1] if stat != COUNT else None
        needed = {*self.columns, *([measure] if measure else []), catalog.privacy_unit}
        source = catalog.population_source(population, needed)
        if source is None:
            raise DisclosureRefused(f"no table of {population}'s records has every column these tables use "
                                    f"({', '.join(sorted(needed - {catalog.privacy_unit}))}), so they cannot be "
                                    "checked together for differencing; nothing was released")  # fmt: skip
        filters = []
        for d, column in enumerate(self.columns):
            if self.widths[d] is None and self.restricted[d] and self.class_of[d]:
                # only the values some cell allows: the engine need not group the rest
                filters.append(Filter(column, "in", tuple(json.loads(v) for v in sorted(self.class_of[d]))))
        agg = Aggregate("count") if measure is None else Aggregate("sum", measure)
        return Query(table=source[0], join=source[1], dataset=catalog.dataset, aggregates=(agg,),
                     group_by=group, bins=bins, filters=tuple(filters))  # fmt: skip

    def atom_map(self, grid: np.ndarray | None = None, atom: np.ndarray | None = None) -> AtomMap:
        """What the engine needs to aggregate by atom: each dimension's classes (in the order
        the refinement query lays its keys: groups, then bins) and, optionally, the merged atom
        of each class-grid cell (``grid`` → ``atom``); without them, per class-grid cell."""
        order = self._key_order()
        strides = self.strides
        classes = []
        for d in order:
            if self.widths[d] is None:
                classes.append(tuple((json.loads(v), c) for v, c in self.class_of[d].items()))
            else:
                classes.append(tuple((int(json.loads(v)), c) for v, c in self.class_of[d].items()))
        return AtomMap(classes=tuple(classes), strides=tuple(strides[d] for d in order),
                       grid=() if grid is None else tuple(int(g) for g in grid),
                       atom=() if atom is None else tuple(int(a) for a in atom))  # fmt: skip

    def _key_order(self) -> list[int]:
        order = [d for d in range(len(self.dims)) if self.widths[d] is None]
        return order + [d for d in range(len(self.dims)) if self.widths[d] is not None]

    def sparse_atoms(self, spec: Spec, present: np.ndarray) -> list[np.ndarray]:
        """For each cell of ``spec``: the positions in ``present`` (the class-grid cells that
        hold rows, C-order indices) of the cells it sums. Empty class-grid cells are left out
        (taken as known to be empty: the audit then assumes the attacker knows more, never less)."""
        classes = np.unravel_index(present, self.sizes) if self.sizes else ()
        everything = np.arange(len(present))
        groups: dict[tuple[int, ...], dict[tuple[int, ...], np.ndarray]] = {}
        out = []
        for allowed, _ in spec.cells:
            single: list[int] = []
            wanted: list[int] = []
            masks: list[tuple[int, np.ndarray]] = []
            for d in range(len(self.dims)):
                chosen = self.allowed_values(d, spec, allowed)
                if chosen is None:
                    continue
                found = sorted({self.class_of[d][v] for v in chosen if v in self.class_of[d]})
                if len(found) == 1:
                    single.append(d)
                    wanted.append(found[0])
                else:
                    lut = np.zeros(self.sizes[d], dtype=bool)
                    lut[found] = True
                    masks.append((d, lut))
            key = tuple(single)
            if key not in groups:
                index: dict[tuple[int, ...], list[int]] = {}
                if single:
                    for i, combo in enumerate(zip(*(classes[d].tolist() for d in single), strict=True)):
                        index.setdefault(combo, []).append(i)
                else:
                    index[()] = everything.tolist()
                groups[key] = {k: np.array(v, dtype=np.int64) for k, v in index.items()}
            idx = groups[key].get(tuple(wanted), np.zeros(0, dtype=np.int64))
            for d, lut in masks:
                idx = idx[lut[classes[d][idx]]]
            out.append(idx)
        return out


def refinement(specs: Sequence[Spec], columns: Mapping[str, Column]) -> Refinement:
    """The common refinement of ``specs`` (one family) over the catalog ``columns``."""
    dims: dict[str, tuple[str, int | None]] = {}
    for spec in specs:
        for name, meta in spec.dims.items():
            if meta["width"] is None:
                dims[name] = (meta["column"], None)
            else:
                _, w = dims.get(f"{meta['column']}_bin", (meta["column"], 0))
                dims[f"{meta['column']}_bin"] = (meta["column"], math.gcd(int(w or 0), int(meta["width"])))
    names = sorted(dims)
    ref = Refinement(dims=names, columns=[dims[n][0] for n in names], widths=[dims[n][1] for n in names],
                     values=[], class_of=[], sizes=[], restricted=[])  # fmt: skip
    for d, name in enumerate(names):
        column, width = dims[name]
        col = columns[column]
        if width is None:
            ref.values.append([_v(v) for v in domain_of(col)])
        else:
            assert col.bounds is not None
            ref.values.append([_v(v) for v in range(int(col.bounds[0]), int(col.bounds[1]) + 1, width)])
        signature: dict[str, list[int]] = {v: [] for v in ref.values[d]}
        seen: dict[tuple[str, ...], int] = {}
        for spec in specs:
            for allowed, _ in spec.cells:
                chosen = ref.allowed_values(d, spec, allowed) if name in spec.dims else None
                if chosen is None:
                    continue
                key = tuple(sorted(chosen))
                if key in seen:
                    continue
                seen[key] = len(seen)
                for v in chosen:
                    if v in signature:
                        signature[v].append(seen[key])
        # values in no allowed set of a restricted dimension are outside every cell: left out
        restricted_everywhere = all(name in allowed for spec in specs for allowed, _ in spec.cells)
        classes: dict[tuple[int, ...], int] = {}
        mapping = {}
        for v, sig in signature.items():
            if restricted_everywhere and not sig:
                continue
            mapping[v] = classes.setdefault(tuple(sig), len(classes))
        ref.class_of.append(mapping)
        ref.sizes.append(max(1, len(classes)))
        ref.restricted.append(restricted_everywhere)
    return ref


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
    """The published structure of every sdc release, per domain and family (in the service's store)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine  # the schema comes from safestats.store.migrations
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def lock(self, domain: str) -> Iterator[None]:
        """One protect-and-record at a time per domain, across threads *and* processes on one
        store, so two tables cannot pass unseen by each other: a PostgreSQL advisory lock held
        for the release, or an exclusive lock on a file beside the SQLite database."""
        with self._guard:
            local = self._locks.setdefault(domain, threading.Lock())
        key = int.from_bytes(hashlib.sha256(f"safestats sdc {domain}".encode()).digest()[:8], "big", signed=True)
        with local:
            if self.engine.dialect.name == "postgresql":
                with self.engine.connect() as conn:
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                    try:
                        yield
                    finally:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                return
            database = self.engine.url.database
            if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
                yield  # one process only can open this store
                return
            path = Path(database).with_name(f"{Path(database).name}.sdc-{key & 0xFFFFFFFF:08x}.lock")
            with path.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def earlier(self, domain: str, family: str, terms: Iterable[str]) -> list[Spec]:
        """The domain's earlier specs of ``family`` that can combine with a table of ``terms``:
        those sharing a term with it, and (transitively) those sharing a term with them."""
        with self.engine.connect() as conn:
            mine = (links_table.c.domain == domain) & (links_table.c.family == family)
            rows = conn.execute(sa.select(links_table.c.spec).where(mine).order_by(links_table.c.id)).all()
        specs = [Spec.from_json(r.spec) for r in rows]
        wanted = set(terms)
        if not wanted:
            return specs
        chosen: list[int] = []
        grew = True
        while grew:
            grew = False
            for i, s in enumerate(specs):
                if i not in chosen and (not s.terms or wanted & set(s.terms)):
                    chosen.append(i)
                    wanted |= set(s.terms)
                    grew = True
        return [specs[i] for i in sorted(chosen)]

    def same(self, domain: str, query_hash: str, snapshot_id: str) -> dict[str, Spec]:
        """The specs (by family) of an earlier release of the same query on the same snapshot."""
        with self.engine.connect() as conn:
            where = ((links_table.c.domain == domain) & (links_table.c.query_hash == query_hash)
                     & (links_table.c.snapshot_id == snapshot_id))  # fmt: skip
            rows = conn.execute(sa.select(links_table.c.family, links_table.c.spec).where(where)
                                .order_by(links_table.c.id)).all()  # fmt: skip
        out: dict[str, Spec] = {}
        for r in rows:
            out.setdefault(r.family, Spec.from_json(r.spec))
        return out

    def add(self, domain: str, user: str, query_hash: str, snapshot_id: str, specs: Iterable[Spec], *,
            audit_seq: int | None = None, conn: sa.Connection | None = None) -> list[int]:  # fmt: skip
        from safestats.audit.log import transaction

        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        ids = []
        with transaction(self.engine, conn) as conn:
            for spec in specs:
                row = {"domain": domain, "user": user, "family": spec.family, "query_hash": query_hash,
                       "snapshot_id": snapshot_id, "spec": spec.to_json(), "time_utc": now,
                       "audit_seq": audit_seq}  # fmt: skip
                result = conn.execute(links_table.insert().values(**row))
                ids.append(int(result.inserted_primary_key[0]))
        return ids


# -- secondary suppression and the audit across linked tables --------------------------------------

def protect_linked(columns: Sequence[frozenset[int]], values: Sequence[float], *, primary: set[int],
                   candidates: Sequence[int], forced: set[int], kept_hidden: set[int], widths: Mapping[int, float],
                   atom_values: np.ndarray | None = None, recheck: set[int] = frozenset(),  # type: ignore[assignment]
                   max_rounds: int = 60) -> tuple[set[int], dict[int, tuple]]:  # fmt: skip
    """Choose the cells to hide among ``candidates`` (in order of preference to publish).

    ``columns[j]`` is the set of atoms cell ``j`` sums; ``primary`` must be hidden, ``forced``
    is already published (earlier releases), ``kept_hidden`` was hidden before and stays so.
    Every cell in ``widths`` (the primaries, now and before) must keep an interval at least its
    width wide given everything published. Cells in ``recheck`` (earlier primaries, which passed
    with the earlier tables) are audited again only if this release publishes something the
    earlier ones did not imply: otherwise their intervals cannot have changed. Raises
    DisclosureRefused if no pattern protects every cell.
    """
    from safestats.disclosure.secondary import secondary_suppression

    must_hide = set(primary) | set(kept_hidden)
    for _ in range(max_rounds):
        order = [j for j in candidates if j not in must_hide]
        new: list[int] = []
        hidden = secondary_suppression(columns, must_hide, order, forced, new)
        audit = widths if new else {j: w for j, w in widths.items() if j not in recheck}
        intervals = audit_intervals(columns, values, hidden, audit, atom_values)
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
    published = [j for j in range(len(columns)) if j not in hidden]
    quick = _exchange_ranges(columns, published, audited, atom_values) if atom_values is not None else {}
    # cells that swaps between interchangeable atoms already move far enough need no LP
    pending = [j for j in audited if j not in quick or quick[j][1] - quick[j][0] < widths[j]]
    if not pending:
        return quick
    atoms = sorted(set().union(*(columns[j] for j in pending)))
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
    objective = {j: np.array(sorted(index[a] for a in columns[j]), dtype=np.int64) for j in pending}
    points: list[np.ndarray] = []
    if atom_values is not None:  # the truth is a feasible point
        points.append(np.array([float(atom_values[a]) for a in sorted(index)]))
    # capping atoms at the sum of everything published keeps every LP bounded; it can only make
    # the computed intervals narrower than the attacker's, never wider
    cap = max(1.0, float(sum(float(values[j]) for j in published))) * 2
    bounds = (0, cap)

    warm = _WarmLP.build(a_eq, b_eq, n, cap)

    def solve(c: np.ndarray) -> float | None:
        if warm is not None:
            found = warm.minimise(c)
            if found is None:
                return None
            points.append(found[1])
            return found[0]
        res = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        if res.status != 0:
            return None
        points.append(res.x)
        return float(res.fun)

    # two LPs over all audited cells at once: where the constraints decouple (the usual case)
    # they push every cell to its extremes together, and most cells need no LP of their own
    # then a few random weightings, which break the ties those leave (fixed seed: reproducible)
    rng = np.random.default_rng(len(pending))
    for round_ in range(1 + 2 * (len(pending) > 20)):
        together = np.zeros(n)
        for j in pending:
            together[objective[j]] += 1.0 if round_ == 0 else rng.random()
        solve(together)
        solve(-together)
    out = {j: quick[j] for j in audited if j not in pending}
    for j in pending:
        idx = objective[j]
        seen = [float(p[idx].sum()) for p in points]
        low, high = (min(seen), max(seen)) if seen else (math.inf, -math.inf)
        if high - low < widths[j]:
            c = np.zeros(n)
            c[idx] = 1.0
            found = solve(c)
            if found is not None:
                low = min(low, found)
            if high - low < widths[j]:
                found = solve(-c)
                if found is not None:
                    high = max(high, -found)
        out[j] = (low, high)
    return out


def _exchange_ranges(columns: Sequence[frozenset[int]], published: Sequence[int], audited: Sequence[int],
                     atom_values: np.ndarray) -> dict[int, tuple[float, float]]:  # fmt: skip
    """A range each audited cell can certainly take, with no LP: atoms that lie in exactly the
    same published cells are interchangeable (moving a count from one to the other changes no
    published value), so a cell can gain what its exchange partners outside it hold and lose
    what its own exchangeable atoms hold; an atom in no published cell is unbounded. The true
    interval contains this range, so a range wide enough proves the cell safe."""
    signature: dict[int, list[int]] = {}
    for j in published:
        for a in columns[j]:
            signature.setdefault(a, []).append(j)
    key_of: dict[int, tuple[int, ...]] = {}
    size: dict[tuple[int, ...], int] = {}
    total: dict[tuple[int, ...], float] = {}
    for a in set().union(*(columns[j] for j in audited)) | set(signature):
        key = tuple(signature.get(a, ()))
        key_of[a] = key
        size[key] = size.get(key, 0) + 1
        total[key] = total.get(key, 0.0) + float(atom_values[a])
    out = {}
    for j in audited:
        inside_n: dict[tuple[int, ...], int] = {}
        inside_sum: dict[tuple[int, ...], float] = {}
        for a in columns[j]:
            key = key_of[a]
            inside_n[key] = inside_n.get(key, 0) + 1
            inside_sum[key] = inside_sum.get(key, 0.0) + float(atom_values[a])
        value = sum(inside_sum.values())
        up = down = 0.0
        for key, n_in in inside_n.items():
            if not key:
                up = math.inf
            elif size[key] > n_in:  # partners outside the cell
                up += total[key] - inside_sum[key]
                down += inside_sum[key]
        out[j] = (value - down, value + up)
    return out


class _WarmLP:
    """One HiGHS model solved for many objectives, each starting from the last basis (the
    audit's LPs share their constraints). HiGHS as scipy ships it; the pinned scipy's private
    binding, with ``linprog`` as the fallback if it is ever missing."""

    def __init__(self, highs: Any, core: Any, n: int) -> None:
        self.highs, self.core, self.n = highs, core, n
        self.all = np.arange(n, dtype=np.int32)

    @classmethod
    def build(cls, a_eq: Any, b_eq: np.ndarray | None, n: int, cap: float) -> _WarmLP | None:
        try:
            from scipy.optimize._highspy import _core as core
        except ImportError:  # pragma: no cover - scipy moved its binding: fall back to linprog
            return None
        highs = core._Highs()
        highs.setOptionValue("output_flag", False)
        lp = core.HighsLp()
        lp.num_col_ = n
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.zeros(n)
        lp.col_upper_ = np.full(n, cap)
        if a_eq is not None:
            csc = a_eq.tocsc()
            lp.num_row_ = csc.shape[0]
            lp.row_lower_ = b_eq
            lp.row_upper_ = b_eq
            lp.a_matrix_.format_ = core.MatrixFormat.kColwise
            lp.a_matrix_.num_col_ = n
            lp.a_matrix_.num_row_ = csc.shape[0]
            lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
            lp.a_matrix_.index_ = csc.indices.astype(np.int32)
            lp.a_matrix_.value_ = csc.data.astype(float)
        highs.passModel(lp)
        return cls(highs, core, n)

    def minimise(self, c: np.ndarray) -> tuple[float, np.ndarray] | None:
        self.highs.changeColsCost(self.n, self.all, np.asarray(c, dtype=float))
        self.highs.run()
        if self.highs.getModelStatus() != self.core.HighsModelStatus.kOptimal:
            return None
        x = np.array(self.highs.getSolution().col_value)
        return float(np.dot(c, x)), x
