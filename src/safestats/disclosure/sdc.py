"""The sdc protect step with suppression: primary rules, margins, linked tables, attacker audit.

1. The engine's exact cells are laid on the public grid; with ``totals`` every margin is a
   cell too, computed by the engine (so its pupils and largest contributors are exact).
2. The primary rules of the policy run on every cell, in their declared order.
3. For each additive statistic (row count, distinct pupils, a sum) the table is described as
   sums over atoms and put beside the user's earlier releases of the same family
   (:mod:`safestats.disclosure.linked`); secondary suppression (Gaussian elimination) and the
   attacker audit (LP) choose what else to hide so no confidential cell of any of them can be
   recovered or narrowed below its protection: the threshold for counts, ``p`` % of the value
   for sums.
4. Rounding, if the policy asks for it.

Returns the protected table and the specs to record as published (before the audit record:
a spec of a release that then fails to be audited only makes later protection stricter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import combinations

import numpy as np
import pandas as pd

from safestats.access.policy import Disclosure
from safestats.catalog import Catalog
from safestats.disclosure.linked import (
    PRIMARY,
    PUBLISHED,
    SECONDARY,
    LinkStore,
    Spec,
    atoms_of,
    describe_release,
    family_of,
    merge_atoms,
    protect_linked,
    refinement,
)
from safestats.disclosure.protect import Protected, densify, primary_flags, round_counts
from safestats.engines.base import PUPILS
from safestats.errors import DisclosureRefused, QueryError
from safestats.query.validate import Plan, plan_query

__all__ = ["protect_sdc"]

TOTAL = "Total"


def protect_sdc(exact: pd.DataFrame, plan: Plan, disclosure: Disclosure, *, execute: Callable[[Plan], pd.DataFrame],
                catalog: Catalog, links: LinkStore | None, user: str,
                max_atoms: int = 200_000) -> tuple[Protected, list[Spec]]:  # fmt: skip
    q = plan.query
    names = [a.name for a in q.aggregates]
    grid = densify(exact, plan)
    if any(k.from_data for k in plan.keys):
        # no public domain: a cell's existence comes from the data, so small cells are left out
        grid = grid[grid[PUPILS].to_numpy() >= disclosure.threshold]
    grid = grid.reset_index(drop=True)
    n_inner = len(grid)
    if q.totals:
        grid = _with_margins(grid, plan, execute)
    flags = primary_flags(grid, plan, disclosure)
    primary = np.zeros((len(grid), len(names)), dtype=bool)
    for mask in flags.values():
        primary |= mask
    hide = primary.copy()
    specs: list[Spec] = []
    for i, agg in enumerate(q.aggregates):
        family = family_of(plan, agg)
        if family is None:
            continue
        statuses = [PRIMARY if primary[r, i] else PUBLISHED for r in range(len(grid))]
        spec = describe_release(plan, grid, statuses, agg)
        assert spec is not None
        earlier = links.earlier(user, family, spec.terms) if links is not None and disclosure.link_tables else []
        if earlier or q.totals:
            hidden = _secondary(grid, spec, earlier, i, agg, plan, disclosure, execute, catalog, max_atoms)
            statuses = [PRIMARY if primary[r, i] else SECONDARY if r in hidden else PUBLISHED for r in range(len(grid))]
            hide[:, i] |= np.array([s != PUBLISHED for s in statuses], dtype=bool)
            spec = replace(spec, cells=tuple((c, s) for (c, _), s in zip(spec.cells, statuses, strict=True)))
        specs.append(spec)
    return _table(grid, plan, disclosure, hide, flags, n_inner), specs


def _with_margins(grid: pd.DataFrame, plan: Plan, execute: Callable[[Plan], pd.DataFrame]) -> pd.DataFrame:
    """The inner cells then every margin (subtotals, then the grand total), from the engine."""
    q = plan.query
    kinds = [a.kind for a in q.aggregates]
    if len(kinds) != 1 or kinds[0] not in ("count", "sum") or not plan.keys:
        raise QueryError("totals in sdc mode are for one additive statistic (count() or sum()) grouped by at least "
                         "one key")  # fmt: skip
    if any(k.from_data for k in plan.keys):
        raise QueryError("totals need every key to have a public domain")
    key_names = [k.name for k in plan.keys]
    parts = [grid.astype({k: object for k in key_names})]
    for r in range(len(plan.keys) - 1, -1, -1):
        for kept in combinations(plan.keys, r):
            sub = replace(plan, keys=tuple(kept))
            margin = densify(execute(sub), sub)
            for k in key_names:
                if k not in {c.name for c in kept}:
                    margin[k] = TOTAL
            margin = margin.reindex(columns=grid.columns)
            extra = [c for c in grid.columns if c.startswith("_")]
            margin[extra] = margin[extra].fillna(0)
            parts.append(margin.astype({k: object for k in key_names}))
    return pd.concat(parts, ignore_index=True)


def _secondary(grid: pd.DataFrame, spec: Spec, earlier: list[Spec], i: int, agg, plan: Plan,  # type: ignore[no-untyped-def]
               disclosure: Disclosure, execute: Callable[[Plan], pd.DataFrame], catalog: Catalog,
               max_atoms: int) -> set[int]:  # fmt: skip
    """Rows of ``grid`` to hide as secondaries for aggregate ``i``, with the earlier specs in view."""
    ref_query, widths = refinement([spec, *earlier], replace(plan.query, aggregates=(agg,), totals=False))
    try:
        ref_plan = plan_query(ref_query, catalog=catalog, max_cells=max_atoms, max_group_keys=64, max_filters=64)
    except DisclosureRefused:
        raise DisclosureRefused(
            f"this table and your {len(earlier)} earlier table(s) of the same data need more than {max_atoms:,} "
            "cells to check together for differencing; nothing was released (group by fewer columns, or ask the "
            "data owner)") from None
    ref = densify(execute(ref_plan), ref_plan, structural_cells=True)
    atom_values = ref[agg.name].fillna(0).to_numpy(dtype=float)
    cell_atoms = atoms_of(spec, ref_plan, widths)
    offsets = [len(cell_atoms)]
    for s in earlier:
        cell_atoms += atoms_of(s, ref_plan, widths)
        offsets.append(len(cell_atoms))
    columns, of_atom = merge_atoms(cell_atoms, len(atom_values))
    class_values = np.zeros(int(of_atom.max()) + 1 if len(of_atom) else 0)
    np.add.at(class_values, of_atom[of_atom >= 0], atom_values[of_atom >= 0])
    values = [float(class_values[sorted(c)].sum()) if c else 0.0 for c in columns]
    n_now = offsets[0]
    primary = {r for r in range(n_now) if spec.cells[r][1] == PRIMARY}
    statuses = [s for e in earlier for _, s in e.cells]
    forced = {n_now + k for k, s in enumerate(statuses) if s == PUBLISHED}
    kept_hidden = {n_now + k for k, s in enumerate(statuses) if s != PUBLISHED}
    audited = primary | {n_now + k for k, s in enumerate(statuses) if s == PRIMARY}

    def width(j: int) -> float:
        if agg.kind == "sum":
            return max(1.0, disclosure.p / 100 * values[j])
        return float(disclosure.threshold)

    # publish margins first (what readers want), then the largest cells
    candidates = sorted((r for r in range(n_now) if r not in primary), key=lambda r: (-len(columns[r]), -values[r], r))
    hidden, _ = protect_linked(columns, values, primary=primary, candidates=candidates, forced=forced,
                               kept_hidden=kept_hidden, widths={j: width(j) for j in audited},
                               atom_values=class_values)  # fmt: skip
    return {j for j in hidden if j < n_now} - primary


def _table(grid: pd.DataFrame, plan: Plan, disclosure: Disclosure, hide: np.ndarray,
           flags: dict[str, np.ndarray], n_inner: int) -> Protected:  # fmt: skip
    names = [a.name for a in plan.query.aggregates]
    values = grid[names].copy()
    for i, (name, agg) in enumerate(zip(names, plan.query.aggregates, strict=True)):
        values[name] = values[name].astype("Int64" if agg.kind in ("count", "count_pupils", "sum") else "Float64")
        values.loc[hide[:, i], name] = pd.NA
    symbols = pd.DataFrame(np.where(hide, "c", ""), columns=names, index=values.index)
    for name, agg in zip(names, plan.query.aggregates, strict=True):
        if agg.kind in ("count", "count_pupils") and disclosure.rounding > 1:
            values[name], low = round_counts(values[name], disclosure.rounding)
            symbols.loc[low, name] = "low"
    secondary = hide & ~np.logical_or.reduce(list(flags.values())) if flags else hide
    checks = dict(flags) | {"secondary": secondary}
    table = pd.concat([grid[[k.name for k in plan.keys]], values], axis=1)
    return Protected(table=table, symbols=symbols, cells=len(table), suppressed=int(hide.any(axis=1).sum()),
                     checks=checks)  # fmt: skip
