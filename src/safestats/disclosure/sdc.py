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
    describe_release,
    family_of,
    merge_atoms,
    protect_linked,
    refinement,
)
from safestats.disclosure.protect import Protected, densify, primary_flags, withhold
from safestats.engines.base import PUPILS
from safestats.errors import DisclosureRefused, QueryError
from safestats.query.model import Aggregate
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
    unlinked = 0
    for i, agg in enumerate(q.aggregates):
        family = family_of(plan, agg)
        if family is None:
            continue
        statuses = [PRIMARY if primary[r, i] else PUBLISHED for r in range(len(grid))]
        spec = describe_release(plan, grid, statuses, agg)
        assert spec is not None
        earlier = links.earlier(user, family, spec.terms) if links is not None and disclosure.link_tables else []
        if earlier or q.totals:
            spec, missed = _secondary(grid, spec, earlier, agg, plan, disclosure, execute, catalog, max_atoms,
                                      n_inner)
            hide[:, i] |= np.array([s != PUBLISHED for _, s in spec.cells], dtype=bool)
            unlinked += missed
        specs.append(spec)
    protected = _table(grid, plan, disclosure, hide, flags, n_inner)
    if unlinked:
        protected = replace(protected, notes=(f"{unlinked} earlier table(s) of the same data were too large to check "
                                              "together with this one: review for differencing",))  # fmt: skip
    return protected, specs


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


def _secondary(grid: pd.DataFrame, spec: Spec, earlier: list[Spec], agg: Aggregate, plan: Plan,
               disclosure: Disclosure, execute: Callable[[Plan], pd.DataFrame], catalog: Catalog,
               max_atoms: int, n_inner: int) -> tuple[Spec, int]:  # fmt: skip
    """Protect ``spec`` (this table, one statistic) against itself and the earlier specs: first
    with as many earlier tables together as fit in ``max_atoms`` atoms (those sharing the most
    dimensions first, then the newest), then each remaining one with this table alone. Returns
    the spec with its secondaries marked, and how many earlier tables could not be checked even
    in a pair (the output checker is told)."""
    def fits(specs: list[Spec]) -> bool:
        return refinement(specs, plan.columns).cells <= max_atoms

    if not fits([spec]):
        raise DisclosureRefused(f"this table needs more than {max_atoms:,} cells to check for differencing; "
                                "nothing was released (group by fewer columns, or ask the data owner)")  # fmt: skip
    mine = set(spec.dims)
    ranked = sorted(range(len(earlier)), key=lambda k: (-len(mine & set(earlier[k].dims)), -k))
    together: list[Spec] = []
    rest: list[Spec] = []
    for k in ranked:
        (together if fits([spec, *together, earlier[k]]) else rest).append(earlier[k])
    unlinked = 0
    for group in [together] + [[e] for e in rest]:
        if group is not together and not fits([spec, *group]):
            unlinked += 1
            continue
        spec = _pass(spec, group, agg, plan, disclosure, execute, catalog, grid=grid, n_inner=n_inner)
    return spec, unlinked


def _pass(spec: Spec, earlier: list[Spec], agg: Aggregate, plan: Plan, disclosure: Disclosure,
          execute: Callable[[Plan], pd.DataFrame], catalog: Catalog, grid: pd.DataFrame | None = None,
          n_inner: int = 0) -> Spec:  # fmt: skip
    """One round of secondary suppression and the audit over ``spec`` and ``earlier``."""
    if not earlier and grid is not None:
        # the table alone: its inner cells are the atoms, and their values are already here
        cell_atoms = _own_atoms(grid, plan, n_inner)
        atom_values = grid[agg.name].iloc[:n_inner].fillna(0).to_numpy(dtype=float)
        n_atoms = n_inner
    else:
        ref = refinement([spec, *earlier], plan.columns)
        ref_query = ref.query(replace(plan.query, aggregates=(agg,), totals=False))
        ref_plan = plan_query(ref_query, catalog=catalog, max_cells=2**62, max_group_keys=64, max_filters=64)
        atom_values = ref.atom_values(execute(replace(ref_plan, pupils_per_cell=False)), agg.name)
        cell_atoms = ref.atoms(spec)
        for e in earlier:
            cell_atoms += ref.atoms(e)
        n_atoms = ref.cells
    n_now = len(spec.cells)
    columns, of_atom = merge_atoms(cell_atoms, n_atoms)
    class_values = np.zeros(int(of_atom.max()) + 1 if of_atom.size and of_atom.max() >= 0 else 0)
    np.add.at(class_values, of_atom[of_atom >= 0], atom_values[of_atom >= 0])
    values = [float(class_values[sorted(c)].sum()) if c else 0.0 for c in columns]
    mine = [s for _, s in spec.cells]
    theirs = [s for e in earlier for _, s in e.cells]
    primary = {r for r, s in enumerate(mine) if s == PRIMARY}
    kept_hidden = {r for r, s in enumerate(mine) if s == SECONDARY}
    kept_hidden |= {n_now + k for k, s in enumerate(theirs) if s != PUBLISHED}
    forced = {n_now + k for k, s in enumerate(theirs) if s == PUBLISHED}
    audited = primary | {n_now + k for k, s in enumerate(theirs) if s == PRIMARY}

    def width(j: int) -> float:
        if agg.kind == "sum":
            return max(1.0, disclosure.p / 100 * values[j])
        return float(disclosure.threshold)

    # publish margins first (what readers want), then the largest cells
    candidates = sorted((r for r in range(n_now) if r not in primary), key=lambda r: (-len(columns[r]), -values[r], r))
    hidden, _ = protect_linked(columns, values, primary=primary, candidates=candidates, forced=forced,
                               kept_hidden=kept_hidden, widths={j: width(j) for j in audited},
                               atom_values=class_values, recheck={j for j in audited if j >= n_now})  # fmt: skip
    statuses = [s if s != PUBLISHED else SECONDARY if r in hidden else PUBLISHED for r, s in enumerate(mine)]
    return replace(spec, cells=tuple((c, s) for (c, _), s in zip(spec.cells, statuses, strict=True)))


def _own_atoms(grid: pd.DataFrame, plan: Plan, n_inner: int) -> list[np.ndarray]:
    """Each row of a table with margins as the inner rows it sums (inner rows: themselves)."""
    from safestats.disclosure.linked import _v

    names = [k.name for k in plan.keys]
    inner = grid.iloc[:n_inner]
    out = [np.array([r], dtype=np.int64) for r in range(n_inner)]
    index: dict[tuple[str, ...], dict[tuple[str, ...], list[int]]] = {}
    for r in range(n_inner, len(grid)):
        kept = tuple(k for k in names if not (isinstance(grid[k].iloc[r], str) and grid[k].iloc[r] == TOTAL))
        if kept not in index:
            groups: dict[tuple[str, ...], list[int]] = {}
            for i, values in enumerate(zip(*(inner[k].tolist() for k in kept), strict=True) if kept else
                                       ((),) * n_inner):  # fmt: skip
                groups.setdefault(tuple(_v(v) for v in values), []).append(i)
            index[kept] = groups
        key = tuple(_v(grid[k].iloc[r]) for k in kept)
        out.append(np.array(index[kept].get(key, []), dtype=np.int64))
    return out


def _table(grid: pd.DataFrame, plan: Plan, disclosure: Disclosure, hide: np.ndarray,
           flags: dict[str, np.ndarray], n_inner: int) -> Protected:  # fmt: skip
    values, symbols = withhold(grid, plan, hide, disclosure)
    secondary = hide & ~np.logical_or.reduce(list(flags.values())) if flags else hide
    checks = dict(flags) | {"secondary": secondary}
    table = pd.concat([grid[[k.name for k in plan.keys]], values], axis=1)
    return Protected(table=table, symbols=symbols, cells=len(table), suppressed=int(hide.any(axis=1).sum()),
                     checks=checks)  # fmt: skip
