"""The sdc protect step with suppression: primary rules, margins, linked tables, attacker audit.

0. :func:`check_sdc` refuses, before anything runs, what the differencing check cannot cover:
   filters on measures or dates, keys without a public domain, distinct pupils across terms,
   joins that do not keep the left table's rows.
1. The engine's exact cells are laid on the public grid; with ``totals`` every margin is a
   cell too, computed by the engine (so its pupils and largest contributors are exact).
2. The primary rules of the policy run on every cell, in their declared order (and, for
   quantiles, the rank rule).
3. For each family a statistic is linked in (row counts; the sum of a measure — a mean or a
   quantile is linked in both) the table is described as sums over atoms and put beside every
   earlier release of the family in the disclosure domain
   (:mod:`safestats.disclosure.linked`); secondary suppression (Gaussian elimination) and the
   attacker audit (LP) choose what else to hide so that no confidential cell of any of them and
   no small atom of their common refinement can be recovered or narrowed below its
   protection: the threshold for counts, ``p`` % of the value for sums. A table that cannot be
   protected so, or whose tables are too large to check together, is refused.
4. Rounding, if the policy asks for it.

Returns the protected table and the specs to record as published (the service writes them in
one transaction with the release's audit record).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from safestats.catalog import Catalog, Column
from safestats.disclosure.linked import (
    LINKED,
    PRIMARY,
    PUBLISHED,
    SECONDARY,
    LinkStore,
    Spec,
    describe_release,
    families_of,
    merge_atoms,
    refinement,
)
from safestats.disclosure.linked_audit import protect_linked
from safestats.disclosure.protect import Protected, densify, primary_flags, withhold
from safestats.disclosure.rules import CellStats, apply_rules, top_column, tops_needed
from safestats.disclosure.settings import Disclosure
from safestats.errors import DisclosureRefused, QueryError
from safestats.query.columns import PUPILS
from safestats.query.model import RANGE_OPS
from safestats.query.validate import ATOM, Plan, margin_plans, plan_query

__all__ = ["REASONS", "check_sdc", "protect_sdc"]

TOTAL = "Total"
#: Why a cell is withheld, in the order a cell's first reason is chosen.
REASONS = ("threshold", "nk_dominance", "p_percent", "quantile", "secondary", "linked")


def check_sdc(plan: Plan, catalog: Catalog) -> None:
    """Refuse, before the engine runs, a suppression query the differencing check cannot cover."""
    q = plan.query
    hint = "; use dp mode (noise) or cell-key mode for this"
    for f in q.filters:
        col = plan.columns[f.column]
        if not col.groupable:
            raise DisclosureRefused(
                f"filters on {col.role}s ({f.column} {f.op} …) are refused for exact statistics: a "
                "range on a measure or date splits the pupils into groups no table shows, which "
                f"differencing could expose; group by a binned measure instead{hint}"
            )
    if any(k.from_data for k in plan.keys):
        names = ", ".join(k.name for k in plan.keys if k.from_data)
        raise DisclosureRefused(
            f"{names} has no public domain, so its cells cannot be checked for differencing against other tables{hint}"
        )
    if catalog.population_of(q.table, q.join) is None:
        raise DisclosureRefused(
            f"{q.table} joined with {q.join} does not keep {q.table}'s rows (the catalog does not "
            f"declare the join complete), so it cannot be linked with {q.table}'s other tables"
            f"{hint}"
        )
    pupils = [a for a in q.aggregates if a.kind == "count_pupils"]
    if pupils and "term" in plan.columns:
        keys = {k.name: k for k in plan.keys}
        in_scope = keys["term"].cells if "term" in keys else _terms_in_scope(plan)
        spans = len(in_scope) > 1 and ("term" not in keys or q.totals)
        if spans:
            raise DisclosureRefused(
                "distinct pupils across more than one term are not a sum of per-term counts, so "
                "they cannot be checked for differencing: filter to one term or group by term "
                f"(without totals), or count rows with count(){hint}"
            )


def _terms_in_scope(plan: Plan) -> tuple[object, ...]:
    col = plan.columns["term"]
    domain = tuple(col.domain or ())
    for f in plan.query.filters:
        if f.column == "term":
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            chosen = set(values)
            domain = tuple(t for t in domain if (t in chosen) == (f.op in ("==", "in")) or f.op in RANGE_OPS)
    return domain


def protect_sdc(
    exact: pd.DataFrame,
    plan: Plan,
    disclosure: Disclosure,
    *,
    execute: Callable[[Plan], pd.DataFrame],
    catalog: Catalog,
    links: LinkStore | None,
    snapshot_id: str = "",
    max_atoms: int = 200_000,
    max_seconds: float | None = None,
    margins: list[pd.DataFrame] | None = None,
) -> tuple[Protected, list[Spec]]:
    """Protect one sdc table; returns it and the specs it publishes (empty for a repeat of a
    release already recorded in the domain: it publishes nothing new). A suppression search
    still unfinished after ``max_seconds`` is refused (fail closed, in seconds not minutes).
    ``margins``: the exact aggregates of the table's margins (``margin_plans`` order) where the
    caller has them (the engine computes them with the cells); else they are executed here."""
    q = plan.query
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    names = [a.name for a in q.aggregates]
    grid = densify(exact, plan).reset_index(drop=True)
    n_inner = len(grid)
    if q.totals:
        check_margins(plan)
        grid = _with_margins(grid, plan, margins if margins is not None else [execute(m) for m in margin_plans(plan)])
    flags = primary_flags(grid, plan, disclosure)
    n = len(grid)
    linked_rules = [r for r in flags if r != "quantile"]
    hide = np.zeros((n, len(names)), dtype=bool)
    for mask in flags.values():
        hide |= mask
    secondary = np.zeros_like(hide)
    linked = np.zeros_like(hide)

    # one spec per family; every aggregate linked in a family is withheld where the family hides
    families: dict[str, tuple[tuple[str, str, str], list[int]]] = {}
    for i, agg in enumerate(q.aggregates):
        for fam in families_of(plan, agg, catalog):
            families.setdefault(fam[0], (fam, []))[1].append(i)
    repeat = links.same(disclosure.domain, q.hash, snapshot_id) if links is not None else {}
    if repeat and set(repeat) != set(families):
        repeat = {}
    specs: list[Spec] = []
    for key, (fam, members) in families.items():
        primary = np.zeros(n, dtype=bool)
        for i in members:
            for rule in linked_rules:
                primary |= flags[rule][:, i]
        if repeat:  # the same table again: the same cells, nothing new to check or record
            statuses = [s for _, s in repeat[key].cells]
        else:
            statuses = [PRIMARY if primary[r] else PUBLISHED for r in range(n)]
            spec = describe_release(plan, grid, statuses, fam)
            if q.totals:  # the table against itself first: its own secondaries
                spec = _pass(
                    spec,
                    [],
                    fam[2],
                    plan,
                    disclosure,
                    execute,
                    catalog,
                    grid=grid,
                    n_inner=n_inner,
                    status=SECONDARY,
                    deadline=deadline,
                )
            earlier = (
                links.earlier(disclosure.domain, key, spec.terms)
                if links is not None and disclosure.link_tables
                else []
            )
            if earlier:
                spec = _pass(
                    spec,
                    earlier,
                    fam[2],
                    plan,
                    disclosure,
                    execute,
                    catalog,
                    status=LINKED,
                    max_atoms=max_atoms,
                    deadline=deadline,
                )
            specs.append(spec)
            statuses = [s for _, s in spec.cells]
        for r, s in enumerate(statuses):
            if s in (SECONDARY, LINKED):
                for i in members:
                    (secondary if s == SECONDARY else linked)[r, i] = True
    hide |= secondary | linked
    protected = _table(
        grid,
        plan,
        disclosure,
        hide,
        flags,
        secondary & ~_any(flags, n, len(names)),
        linked & ~secondary & ~_any(flags, n, len(names)),
    )
    return protected, specs


def _any(flags: dict[str, np.ndarray], n: int, m: int) -> np.ndarray:
    out = np.zeros((n, m), dtype=bool)
    for mask in flags.values():
        out |= mask
    return out


def _population_columns(catalog: Catalog, population: str, plan: Plan) -> dict[str, Column]:
    """Every column of the population's tables (the refinement may use columns of each)."""
    out: dict[str, Column] = {}
    for t in catalog.tables.values():
        if t.population == population:
            out.update(t.columns)
    for j in catalog.joins:
        if j.complete and catalog.tables[j.left].population == population:
            out.update(catalog.tables[j.right].columns)
    out.update(plan.columns)
    return out


def check_margins(plan: Plan) -> None:
    """Refuse totals sdc cannot protect (before the engine computes them)."""
    kinds = [a.kind for a in plan.query.aggregates]
    if len(kinds) != 1 or kinds[0] not in ("count", "sum") or not plan.keys:
        raise QueryError(
            "totals in sdc mode are for one additive statistic (count() or sum()) grouped by at least one key"
        )


def _with_margins(grid: pd.DataFrame, plan: Plan, margins: list[pd.DataFrame]) -> pd.DataFrame:
    """The inner cells then every margin (subtotals, then the grand total), from the engine's
    exact aggregates of each margin plan (``margin_plans`` order)."""
    key_names = [k.name for k in plan.keys]
    parts = [grid.astype({k: object for k in key_names})]
    for sub, exact in zip(margin_plans(plan), margins, strict=True):
        kept = {k.name for k in sub.keys}
        margin = densify(exact, sub)
        for k in key_names:
            if k not in kept:
                margin[k] = TOTAL
        margin = margin.reindex(columns=grid.columns)
        extra = [c for c in grid.columns if c.startswith("_")]
        margin[extra] = margin[extra].fillna(0)
        parts.append(margin.astype({k: object for k in key_names}))
    return pd.concat(parts, ignore_index=True)


def _pass(
    spec: Spec,
    earlier: list[Spec],
    stat: str,
    plan: Plan,
    disclosure: Disclosure,
    execute: Callable[[Plan], pd.DataFrame],
    catalog: Catalog,
    grid: pd.DataFrame | None = None,
    n_inner: int = 0,
    status: str = LINKED,
    max_atoms: int = 200_000,
    deadline: float | None = None,
) -> Spec:
    """One round of secondary suppression and the audit over ``spec`` and ``earlier``; cells it
    newly withholds get ``status``."""
    n_now = len(spec.cells)
    sensitive: dict[int, float] = {}
    if not earlier and grid is not None:
        # the table alone: its inner cells are the atoms, each a cell with its own primary rules
        value_column = _value_column(plan, stat)
        cell_atoms = _own_atoms(grid, plan, n_inner)
        atom_values = grid[value_column].iloc[:n_inner].fillna(0).to_numpy(dtype=float)
        columns, of_atom = merge_atoms(cell_atoms, n_inner)
        class_values = np.zeros(int(of_atom.max()) + 1 if of_atom.size and of_atom.max() >= 0 else 0)
        np.add.at(class_values, of_atom[of_atom >= 0], atom_values[of_atom >= 0])
    else:
        if len(spec.cells) + sum(len(e.cells) for e in earlier) > max_atoms:  # the work stays bounded
            raise DisclosureRefused(_too_large(earlier, disclosure, max_atoms, what="cells"))
        ref = refinement([spec, *earlier], _population_columns(catalog, spec.population, plan))
        if ref.cells >= 2**62:
            raise DisclosureRefused(_too_large(earlier, disclosure, max_atoms))
        ref_query = ref.query(catalog, spec.population, stat)
        ref_plan = plan_query(ref_query, catalog=catalog, max_cells=2**62, max_group_keys=64, max_filters=64)
        top_n = tops_needed(disclosure.rules, disclosure.rule_params) if stat != "count" else 0
        ref_plan = replace(ref_plan, pupils_per_cell=True, top_n=top_n)
        # the class-grid cells that hold rows (one pass), then the atoms: those lying in the same cells
        found = execute(replace(ref_plan, atoms=ref.atom_map()))
        present = found[ATOM].to_numpy(dtype=np.int64)
        if len(present) > max_atoms:
            raise DisclosureRefused(_too_large(earlier, disclosure, max_atoms))
        cell_atoms = ref.sparse_atoms(spec, present)
        for e in earlier:
            cell_atoms += ref.sparse_atoms(e, present)
        columns, of_atom = merge_atoms(cell_atoms, len(present))
        n_classes = int(of_atom.max()) + 1 if of_atom.size and of_atom.max() >= 0 else 0
        merged = np.bincount(of_atom[of_atom >= 0], minlength=n_classes) > 1
        if merged.any():  # some atoms span several class-grid cells: count their pupils exactly
            used = of_atom >= 0
            found = execute(replace(ref_plan, atoms=ref.atom_map(present[used], of_atom[used])))
        else:
            found = found.assign(**{ATOM: of_atom[np.arange(len(found))]})
            found = found[found[ATOM] >= 0]
        class_values, sensitive = _atom_stats(found, replace(ref_plan, atoms=None), n_classes, disclosure, stat)
    values = [float(class_values[sorted(c)].sum()) if c else 0.0 for c in columns]
    mine = [s for _, s in spec.cells]
    theirs = [s for e in earlier for _, s in e.cells]
    primary = {r for r, s in enumerate(mine) if s == PRIMARY}
    kept_hidden = {r for r, s in enumerate(mine) if s in (SECONDARY, LINKED)}
    kept_hidden |= {n_now + k for k, s in enumerate(theirs) if s != PUBLISHED}
    forced = {n_now + k for k, s in enumerate(theirs) if s == PUBLISHED}
    audited = primary | {n_now + k for k, s in enumerate(theirs) if s == PRIMARY}
    # a cell of no atom holds no rows: the refinement treats empty atoms as known, so a withheld
    # zero stays withheld but is not audited (the guarantee is for groups of 1..threshold−1)
    audited = {j for j in audited if columns[j]}
    # every small atom is a confidential cell of its own: never published, always audited
    atom_cells = {}
    for a, atom_width in sorted(sensitive.items()):
        atom_cells[len(columns)] = atom_width
        columns.append(frozenset({a}))
        values.append(float(class_values[a]))

    def width(j: int) -> float:
        if j in atom_cells:
            return atom_cells[j]
        if stat != "count":
            return max(1.0, disclosure.rule_params["p"] / 100 * values[j])
        return float(disclosure.threshold)

    audited |= set(atom_cells)
    kept_hidden |= set(atom_cells)
    # publish margins first (what readers want), then the largest cells
    candidates = sorted((r for r in range(n_now) if r not in primary), key=lambda r: (-len(columns[r]), -values[r], r))
    hidden, _ = protect_linked(
        columns,
        values,
        primary=primary | set(atom_cells),
        candidates=candidates,
        forced=forced,
        kept_hidden=kept_hidden,
        widths={j: width(j) for j in audited},
        atom_values=class_values,
        recheck={j for j in audited if j >= n_now},
        deadline=deadline,
    )
    statuses = [s if s != PUBLISHED else status if r in hidden else PUBLISHED for r, s in enumerate(mine)]
    return replace(spec, cells=tuple((c, s) for (c, _), s in zip(spec.cells, statuses, strict=True)))


def _too_large(earlier: list[Spec], disclosure: Disclosure, max_atoms: int, what: str = "atoms") -> str:
    return (
        f"this table and the {len(earlier)} earlier table(s) of the same pupils in the '{disclosure.domain}' "
        f"domain need more than {max_atoms:,} {what} to check for differencing together; nothing was released "
        "(group by fewer or coarser columns, or ask the data owner to start a new disclosure domain)"
    )


def _value_column(plan: Plan, stat: str) -> str:
    """The aggregate of ``plan`` whose values a table alone uses for family ``stat``."""
    for a in plan.query.aggregates:
        if stat == "count" and a.spec.counts:
            return a.name
        if stat == f"sum:{a.column}" and a.kind == "sum":
            return a.name
    raise QueryError("totals in sdc mode are for one additive statistic")  # pragma: no cover


def _atom_stats(
    found: pd.DataFrame, plan: Plan, n_classes: int, disclosure: Disclosure, stat: str
) -> tuple[np.ndarray, dict[int, float]]:
    """Each merged atom's value, and the small ones with the interval width they need: atoms of
    1..threshold−1 pupils (and, for sums, atoms the dominance rules would withhold as cells)."""
    agg = plan.query.aggregates[0]
    values = np.zeros(n_classes)
    pupils = np.zeros(n_classes, dtype=np.int64)
    atoms = found[ATOM].to_numpy(dtype=np.int64)
    values[atoms] = found[agg.name].fillna(0).to_numpy(dtype=float)
    pupils[atoms] = found[PUPILS].fillna(0).to_numpy(dtype=np.int64)
    small = (pupils >= 1) & (pupils < disclosure.threshold)
    if stat != "count" and plan.top_n:
        m = stat.split(":", 1)[1]
        tops = np.zeros((n_classes, plan.top_n))
        totals = np.zeros(n_classes)
        totals[atoms] = found[top_column(m, 0)].fillna(0).to_numpy(dtype=float)
        for i in range(plan.top_n):
            tops[atoms, i] = found[top_column(m, i + 1)].fillna(0).to_numpy(dtype=float)
        stats = CellStats(pupils=pupils, totals={m: totals}, tops={m: tops})
        for by_measure in apply_rules(
            stats, [r for r in disclosure.rules if r != "threshold"], disclosure.rule_params
        ).values():
            small |= by_measure.get(m, np.zeros(n_classes, dtype=bool))
    out = {}
    p = disclosure.rule_params["p"]
    for a in np.nonzero(small)[0]:
        out[int(a)] = float(disclosure.threshold) if stat == "count" else max(1.0, p / 100 * values[a])
    return values, out


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
            for i, values in enumerate(
                zip(*(inner[k].tolist() for k in kept), strict=True) if kept else ((),) * n_inner
            ):
                groups.setdefault(tuple(_v(v) for v in values), []).append(i)
            index[kept] = groups
        key = tuple(_v(grid[k].iloc[r]) for k in kept)
        out.append(np.array(index[kept].get(key, []), dtype=np.int64))
    return out


def _table(
    grid: pd.DataFrame,
    plan: Plan,
    disclosure: Disclosure,
    hide: np.ndarray,
    flags: dict[str, np.ndarray],
    secondary: np.ndarray,
    linked: np.ndarray,
) -> Protected:
    values, symbols = withhold(grid, plan, hide, disclosure)
    checks = dict(flags) | {"secondary": secondary, "linked": linked}
    reasons = pd.DataFrame("", index=symbols.index, columns=symbols.columns, dtype=object)
    for reason in reversed(REASONS):  # the first reason in REASONS wins
        mask = checks.get(reason)
        if mask is not None and mask.any():
            reasons = reasons.mask(pd.DataFrame(mask, index=reasons.index, columns=reasons.columns), reason)
    table = pd.concat([grid[[k.name for k in plan.keys]], values], axis=1)
    return Protected(
        table=table,
        symbols=symbols,
        cells=len(table),
        suppressed=int(hide.any(axis=1).sum()),
        checks=checks,
        reasons=reasons,
    )
