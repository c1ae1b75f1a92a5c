"""The protect step: the only way anything computed from the data leaves the service.

It takes the engine's exact aggregates, lays them on the full grid of public cells (so which
cells exist never depends on the data, structural "(invalid)" and empty-value cells aside),
applies the disclosure rules of the caller's policy in order, and returns the released table
with the symbol of every withheld cell. The exact pupil counts it works from are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from safestats.access.policy import Disclosure
from safestats.disclosure.rules import CellStats, apply_rules, top_column
from safestats.engines.base import CELL_KEY, PUPILS, RECORD_KEY_MODULUS
from safestats.errors import DisclosureRefused, QueryError
from safestats.query.model import INVALID
from safestats.query.validate import Plan

__all__ = ["SYMBOLS", "Protected", "cell_stats", "densify", "margins", "primary_flags", "protect", "protect_cell_key",
           "protect_with_totals",
           "round_counts", "sdc_plan"]

#: GSS symbols for cells that are not released.
SYMBOLS = {
    "c": "confidential (suppressed to protect individuals)",
    "x": "unavailable",
    "z": "not applicable",
    "low": "rounds to zero but is not zero",
}


@dataclass(frozen=True)
class Protected:
    """What may leave the service: released values and a symbol per withheld cell."""

    table: pd.DataFrame  # key columns, then one column per aggregate (NA where withheld)
    symbols: pd.DataFrame  # same shape as the aggregate columns: "" or a GSS symbol
    cells: int
    suppressed: int
    accuracy: pd.DataFrame | None = None  # dp: 95% interval half-width per cell and aggregate
    privacy: dict[str, Any] | None = None  # dp: mechanism, parameters and loss
    #: sdc: check -> (cells × aggregates) mask of the statistics it withheld (output checking)
    checks: dict[str, np.ndarray] | None = None
    #: Notes for the output checker (e.g. earlier tables that could not be checked together).
    notes: tuple[str, ...] = ()


def sdc_plan(plan: Plan, disclosure: Disclosure) -> Plan:
    """The plan the engine runs in sdc mode: with the largest contributors the dominance rules need."""
    from dataclasses import replace

    dominance = [r for r in disclosure.rules if r != "threshold"]
    if not dominance:
        return plan
    return replace(plan, top_n=max(2, disclosure.nk_n))


def protect(exact: pd.DataFrame, plan: Plan, disclosure: Disclosure) -> Protected:
    """Apply ``disclosure`` to ``exact`` (the engine's output for ``plan``): the primary rules in
    their declared order, a statistic withheld (``c``) in every cell a rule flags for it."""
    names = [a.name for a in plan.query.aggregates]
    grid = densify(exact, plan)
    if any(k.from_data for k in plan.keys):
        # Keys without a public domain: a cell's very existence comes from the data, so small
        # cells are left out altogether rather than shown as suppressed.
        grid = grid[grid[PUPILS].to_numpy() >= disclosure.threshold]
    grid = grid.reset_index(drop=True)
    flags = primary_flags(grid, plan, disclosure)
    hide = np.zeros((len(grid), len(names)), dtype=bool)
    for mask in flags.values():
        hide |= mask
    values, symbols = withhold(grid, plan, hide, disclosure)
    keys = grid[[k.name for k in plan.keys]]
    table = pd.concat([keys, values], axis=1)
    return Protected(table=table, symbols=symbols, cells=len(table), suppressed=int(hide.any(axis=1).sum()),
                     checks=flags)  # fmt: skip


def withhold(grid: pd.DataFrame, plan: Plan, hide: np.ndarray,
             disclosure: Disclosure) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The released values (NA where ``hide``) and their symbols (``c``; ``low`` after rounding)."""
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
    return values, symbols


def cell_stats(grid: pd.DataFrame, plan: Plan) -> CellStats:
    """What the primary rules look at, from the engine's exact output laid on the grid."""
    totals, tops = {}, {}
    for m in plan.top_measures:
        totals[m] = grid[top_column(m, 0)].fillna(0).to_numpy(dtype=float)
        tops[m] = np.column_stack([grid[top_column(m, i + 1)].fillna(0).to_numpy(dtype=float)
                                   for i in range(plan.top_n)])  # fmt: skip
    return CellStats(pupils=grid[PUPILS].fillna(0).to_numpy(dtype=np.int64), totals=totals, tops=tops)


def primary_flags(grid: pd.DataFrame, plan: Plan, disclosure: Disclosure) -> dict[str, np.ndarray]:
    """Rule -> (cells × aggregates) mask of the statistics each primary rule withholds."""
    aggregates = plan.query.aggregates
    found = apply_rules(cell_stats(grid, plan), [r for r in disclosure.rules if r == "threshold" or plan.top_measures],
                        disclosure.rule_params)  # fmt: skip
    out = {}
    for rule, by_measure in found.items():
        mask = np.zeros((len(grid), len(aggregates)), dtype=bool)
        for i, a in enumerate(aggregates):
            if "*" in by_measure:
                mask[:, i] = by_measure["*"]
            elif a.kind in ("sum", "mean") and a.column in by_measure:
                mask[:, i] = by_measure[a.column]
        out[rule] = mask
    return out


def round_counts(counts: pd.Series, base: int) -> tuple[pd.Series, np.ndarray]:
    """Counts rounded to the nearest multiple of ``base`` (halves up); a count that is not zero
    but rounds to zero is withheld and marked ``low`` (GSS: rounds to zero but is not zero)."""
    raw = counts.astype("Float64")
    rounded = (np.floor(raw / base + 0.5) * base).astype("Int64")
    low = ((raw > 0) & (rounded == 0)).fillna(False).to_numpy(dtype=bool)
    rounded[low] = pd.NA
    return rounded, low


def densify(exact: pd.DataFrame, plan: Plan, *, structural_cells: bool = False) -> pd.DataFrame:
    """Scatter the non-empty cells onto the grid of public cells (empty cells get zeros).

    Structural cells ("(invalid)" codes, empty values) are kept only when they hold pupils,
    unless ``structural_cells`` (dp mode, where which cells exist must not depend on the data).
    """
    names = [a.name for a in plan.query.aggregates]
    if not plan.keys:
        if len(exact) == 0:
            return pd.DataFrame([{**dict.fromkeys(names, np.nan), PUPILS: 0}])
        return exact.reset_index(drop=True)
    key_names = [k.name for k in plan.keys]
    if not plan.remap_in_engine:
        exact = _remap_additive(exact, plan)
    if any(k.from_data for k in plan.keys):
        # The cells of keys without a public domain come from the data: cross the observed
        # values of those keys with the public cells of the others.
        observed_values = exact[[k.name for k in plan.keys if k.from_data]].drop_duplicates()
        public = [k for k in plan.keys if not k.from_data]
        if public:
            pub = pd.MultiIndex.from_product([list(k.cells) for k in public], names=[k.name for k in public])
            combos = observed_values.merge(pub.to_frame(index=False), how="cross")
        else:
            combos = observed_values
        index = pd.MultiIndex.from_frame(combos[key_names])
    else:
        index = pd.MultiIndex.from_product([list(k.cells) for k in plan.keys], names=key_names)
    observed = exact.set_index(key_names)
    observed.index = _align_index(observed.index, index)
    grid = observed.reindex(index)
    for a in plan.query.aggregates:
        if a.kind in ("count", "count_pupils", "sum"):
            grid[a.name] = grid[a.name].fillna(0)
    for c in grid.columns:
        if c.startswith("_top") or c == CELL_KEY:
            grid[c] = grid[c].fillna(0)
    grid = grid.reset_index()
    if structural_cells:
        return grid
    grid[PUPILS] = grid[PUPILS].fillna(0).astype("int64")
    # Structural cells ("(invalid)" codes, empty values) are listed only when they hold pupils.
    structural = np.zeros(len(grid), dtype=bool)
    for k in plan.keys:
        structural |= grid[k.name].isna().to_numpy() | (grid[k.name] == INVALID).to_numpy()
    return grid[~(structural & (grid[PUPILS] == 0))]


def _remap_additive(exact: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """Group values outside their code list as INVALID after aggregating (additive aggregates only)."""
    out = exact.copy()
    for k in plan.keys:
        if k.codes is not None:
            col = out[k.name].astype(object)
            ok = col.isna() | col.isin(k.codes)
            out[k.name] = col.where(ok, INVALID)
    keys = [k.name for k in plan.keys]
    return out.groupby(keys, dropna=False, sort=False).sum(numeric_only=True).reset_index()


def _align_index(observed: pd.Index, grid: pd.MultiIndex) -> pd.MultiIndex:
    """Match the engine's key types (e.g. numpy bools, NaN for None) to the grid's."""
    levels = []
    for i in range(grid.nlevels):
        values = observed.get_level_values(i) if isinstance(observed, pd.MultiIndex) else observed
        levels.append([None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in values])
    return pd.MultiIndex.from_arrays(levels, names=grid.names)


def margins(grid: pd.DataFrame, key_names: list[str]) -> list[tuple[dict[str, Any], frozenset[int]]]:
    """Every margin of a grid (subtotals over each subset of keys, then the grand total): its
    label (``Total`` for the keys summed over) and the grid rows it adds up."""
    from itertools import combinations

    keyframe = grid[key_names].astype(object)
    out = []
    for r in range(len(key_names) - 1, -1, -1):
        for kept in combinations(key_names, r):
            groups = keyframe.groupby(list(kept), sort=False, dropna=False).indices if kept else {
                (): np.arange(len(grid))}  # fmt: skip
            for key, idx in groups.items():
                key = key if isinstance(key, tuple) else (key,)
                values = dict(zip(kept, key, strict=True))
                label = {k: (None if pd.isna(values[k]) else values[k]) if k in kept else "Total" for k in key_names}
                out.append((label, frozenset(int(i) for i in idx)))
    return out


def protect_cell_key(exact: pd.DataFrame, plan: Plan, disclosure: Disclosure) -> Protected:
    """sdc with cell-key perturbation: every count moved by the public perturbation table, the
    move chosen by the cell's key (the sum of its records' keys), so the same cell always gets
    the same value. Margins are cells in their own right (their keys add up from the cells')."""
    from safestats.disclosure.cellkey import perturb, ptable

    q = plan.query
    kinds = {a.kind for a in q.aggregates}
    if kinds - {"count", "count_pupils"}:
        raise QueryError("your results use cell-key perturbation, which protects counts: ask for count() or "
                         "count_pupils(); sums, means and quantiles are not released under this policy")
    if any(k.from_data for k in plan.keys):
        raise QueryError("cell-key perturbation needs every key to have a public domain")
    if q.totals and (kinds != {"count"} or not plan.keys):
        raise QueryError("totals are for a row count (count()) grouped by at least one key")
    names = [a.name for a in q.aggregates]
    grid = densify(exact, plan).reset_index(drop=True)
    key_names = [k.name for k in plan.keys]
    rows = grid[[*key_names, *names, CELL_KEY]].astype(object)
    if q.totals:
        extra = []
        counts = grid[names[0]].to_numpy(dtype=np.int64)
        ckeys = grid[CELL_KEY].to_numpy(dtype=np.int64)
        for label, members in margins(grid, key_names):
            idx = np.fromiter(members, dtype=np.int64)
            key = int(ckeys[idx].sum() % RECORD_KEY_MODULUS)
            extra.append({**label, names[0]: int(counts[idx].sum()), CELL_KEY: key})
        rows = pd.concat([rows, pd.DataFrame(extra, columns=rows.columns, dtype=object)], ignore_index=True)
    table = ptable(disclosure.ckey_max, disclosure.ckey_variance, disclosure.ckey_small)
    out = rows[key_names].copy()
    symbols = pd.DataFrame("", index=out.index, columns=names)
    keys = rows[CELL_KEY].to_numpy(dtype=np.int64)
    for name in names:
        values = pd.array(perturb(rows[name].to_numpy(dtype=np.int64), keys, table), dtype="Int64")
        out[name] = values
        if disclosure.rounding > 1:
            out[name], low = round_counts(out[name], disclosure.rounding)
            symbols.loc[low, name] = "low"
    return Protected(table=out, symbols=symbols, cells=len(out), suppressed=0,
                     privacy={"method": "cell-key perturbation", "max_noise": table.max_noise,
                              "variance": table.variance, "small": table.small})  # fmt: skip


def protect_with_totals(exact: pd.DataFrame, plan: Plan, disclosure: Disclosure) -> Protected:
    """sdc tables with margins: the threshold rule, then secondary suppression and the attacker
    audit, so no suppressed cell can be recovered (or narrowed below the threshold) from the
    published cells and margins. Row counts only: their margins are sums of the cells."""
    from itertools import combinations

    from safestats.disclosure.secondary import protect_with_margins

    q = plan.query
    if [a.kind for a in q.aggregates] != ["count"] or not plan.keys:
        raise QueryError("totals in sdc mode are for one row count (count()) grouped by at least one key")
    if any(k.from_data for k in plan.keys):
        raise QueryError("totals need every key to have a public domain")
    name = q.aggregates[0].name
    grid = densify(exact, plan, structural_cells=False).reset_index(drop=True)
    key_names = [k.name for k in plan.keys]
    n_inner = len(grid)
    values = grid[name].fillna(0).astype("int64").tolist()
    pupils = grid[PUPILS].tolist()
    primary = {i for i in range(n_inner) if pupils[i] < disclosure.threshold}
    columns = [frozenset([i]) for i in range(n_inner)]
    labels: list[dict[str, Any]] = []
    keyframe = grid[key_names].astype(object)
    for r in range(len(key_names) - 1, -1, -1):
        for kept in combinations(key_names, r):
            groups = keyframe.groupby(list(kept), sort=False).indices if kept else {(): np.arange(n_inner)}
            for key, idx in groups.items():
                key = key if isinstance(key, tuple) else (key,)
                members = frozenset(int(i) for i in idx)
                total = sum(values[i] for i in members)
                columns.append(members)
                values.append(total)
                labels.append({k: (dict(zip(kept, key, strict=True))[k] if k in kept else "Total") for k in key_names})
                if total < disclosure.threshold:
                    primary.add(len(columns) - 1)
    try:
        hidden, _ = protect_with_margins(columns, values, primary, n_inner, width=disclosure.threshold)
    except RuntimeError as e:
        raise DisclosureRefused(str(e)) from None
    rows = [dict(keyframe.iloc[i]) for i in range(n_inner)] + labels
    table = pd.DataFrame(rows, columns=key_names).astype(object)
    table[name] = pd.array([None if j in hidden else values[j] for j in range(len(values))], dtype="Int64")
    symbols = pd.DataFrame({name: ["c" if j in hidden else "" for j in range(len(values))]})
    if disclosure.rounding > 1:  # each cell rounded on its own: totals may then not add up exactly
        table[name], low = round_counts(table[name], disclosure.rounding)
        symbols.loc[low, name] = "low"
    return Protected(table=table, symbols=symbols, cells=len(table), suppressed=len(hidden))
