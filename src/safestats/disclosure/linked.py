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

:func:`safestats.disclosure.linked_audit.protect_linked` then runs secondary suppression with the
earlier published cells forced and the earlier suppressed cells kept hidden, and the attacker
audit over everything, so no suppressed cell and no small atom can be recovered or narrowed
below its protection.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from safestats.catalog import Catalog, Column
from safestats.errors import DisclosureRefused
from safestats.query.model import EQUALITY_OPS, INVALID, Aggregate, Filter, Query
from safestats.query.validate import AtomMap, Plan

__all__ = ["LinkStore", "Refinement", "Spec", "describe_release", "families_of", "refinement"]


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
        return json.dumps(
            {
                "family": self.family,
                "terms": list(self.terms),
                "dims": self.dims,
                "population": self.population,
                "stat": self.stat,
                "cells": [[{d: list(v) for d, v in c.items()}, s] for c, s in self.cells],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Spec:
        raw = json.loads(text)
        cells = tuple(({d: tuple(v) for d, v in c.items()}, s) for c, s in raw["cells"])
        return cls(
            family=raw["family"],
            terms=tuple(raw["terms"]),
            dims=raw["dims"],
            cells=cells,
            population=raw.get("population", ""),
            stat=raw.get("stat", COUNT),
        )

    @property
    def hidden(self) -> np.ndarray:
        return np.array([s != PUBLISHED for _, s in self.cells], dtype=bool)


def stats_of(agg: Aggregate) -> tuple[str, ...]:
    """The additive quantities a statistic publishes, as far as differencing goes: counts of
    rows and of distinct pupils are linked as row counts; a sum of a measure as that sum; a mean
    or a quantile as both its cell's count and its sum (an attacker who knows one learns the other)."""
    return tuple(COUNT if link == "rows" else f"sum:{agg.column}" for link in agg.spec.links)


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
    fixed = {d: tuple(sorted(v)) for d, v in base.items()}
    values = {k.name: table[k.name].tolist() for k, _, _ in key_dims}  # one pass per key, not per cell
    for i, status in enumerate(statuses):
        allowed = dict(fixed)
        for k, dim, all_cells in key_dims:
            value = values[k.name][i]
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
        return [math.prod(self.sizes[i + 1 :]) for i in range(len(self.sizes))]

    def query(self, catalog: Catalog, population: str, stat: str) -> Query:
        """The query over the population's rows whose groups are the refinement's dimensions
        (the engine then maps them to atoms, see :meth:`atom_map`)."""
        group = tuple(c for c, w in zip(self.columns, self.widths, strict=True) if w is None)
        bins = tuple((c, int(w)) for c, w in zip(self.columns, self.widths, strict=True) if w is not None)
        measure = stat.split(":", 1)[1] if stat != COUNT else None
        needed = {*self.columns, *([measure] if measure else []), catalog.privacy_unit}
        source = catalog.population_source(population, needed)
        if source is None:
            raise DisclosureRefused(
                f"no table of {population}'s records has every column these tables use "
                f"({', '.join(sorted(needed - {catalog.privacy_unit}))}), so they cannot be "
                "checked together for differencing; nothing was released"
            )
        filters = []
        for d, column in enumerate(self.columns):
            if self.widths[d] is None and self.restricted[d] and self.class_of[d]:
                # only the values some cell allows: the engine need not group the rest
                filters.append(Filter(column, "in", tuple(json.loads(v) for v in sorted(self.class_of[d]))))
        agg = Aggregate("count") if measure is None else Aggregate("sum", measure)
        return Query(
            table=source[0],
            join=source[1],
            dataset=catalog.dataset,
            aggregates=(agg,),
            group_by=group,
            bins=bins,
            filters=tuple(filters),
        )

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
        return AtomMap(
            classes=tuple(classes),
            strides=tuple(strides[d] for d in order),
            grid=() if grid is None else tuple(int(g) for g in grid),
            atom=() if atom is None else tuple(int(a) for a in atom),
        )

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
    ref = Refinement(
        dims=names,
        columns=[dims[n][0] for n in names],
        widths=[dims[n][1] for n in names],
        values=[],
        class_of=[],
        sizes=[],
        restricted=[],
    )
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
    """The published structure of every sdc release, per domain and family, as Specs.

    Storage is the store's (``store/published.py``: JSON rows and the domain lock); this class
    only turns rows into Specs and chooses which earlier tables a new one must be checked with.
    """

    def __init__(self, published: Any) -> None:
        self.published = published  # a safestats.store.published.PublishedStore

    def lock(self, domain: str) -> Any:
        """One protect-and-record at a time per domain (across processes on one store)."""
        return self.published.lock(domain)

    def earlier(self, domain: str, family: str, terms: Iterable[str]) -> list[Spec]:
        """The domain's earlier specs of ``family`` that can combine with a table of ``terms``:
        those sharing a term with it, and (transitively) those sharing a term with them."""
        specs = [Spec.from_json(text) for text in self.published.specs(domain, family)]
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
        return {f: Spec.from_json(text) for f, text in self.published.same(domain, query_hash, snapshot_id).items()}

    def add(
        self,
        domain: str,
        user: str,
        query_hash: str,
        snapshot_id: str,
        specs: Iterable[Spec],
        *,
        audit_seq: int | None = None,
        conn: Any = None,
    ) -> list[int]:
        """Record the specs of a release (in the release's transaction when ``conn`` is given)."""
        rows = [(spec.family, spec.to_json()) for spec in specs]
        ids: list[int] = self.published.add(domain, user, query_hash, snapshot_id, rows, audit_seq=audit_seq, conn=conn)
        return ids
