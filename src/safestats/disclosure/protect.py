"""What every sdc protect step shares: the public grid, the primary flags, withholding and rounding.

:func:`densify` lays the engine's exact aggregates on the full grid of public cells (so which
cells exist never depends on the data, structural "(invalid)" and empty-value cells aside);
:func:`primary_flags` runs the policy's primary rules; :func:`withhold` blanks the flagged
statistics with their GSS symbols and rounds. Suppression with linked tables is
:mod:`safestats.disclosure.sdc`; cell-key perturbation is :func:`protect_cell_key` here; dp is
:mod:`safestats.disclosure.dp`. The exact values they work from never leave.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from safestats.disclosure.rules import CellStats, apply_rules, top_column, tops_needed
from safestats.disclosure.settings import Disclosure
from safestats.errors import QueryError
from safestats.query.columns import CELL_KEY, PUPILS, RECORD_KEY_MODULUS
from safestats.query.model import INVALID
from safestats.query.validate import Plan

__all__ = [
    "SYMBOLS",
    "Protected",
    "cell_stats",
    "densify",
    "margins",
    "primary_flags",
    "protect_cell_key",
    "round_counts",
    "sdc_plan",
    "withhold",
]

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
    #: sdc: why each withheld statistic is withheld (same shape as ``symbols``; "" where shown)
    reasons: pd.DataFrame | None = None
    #: dp: the ends of each statistic's 95% interval (same shape as ``accuracy``; not centred on
    #: the value for counts near the threshold, where ``accuracy`` is their symmetric envelope)
    lower: pd.DataFrame | None = None
    upper: pd.DataFrame | None = None


def sdc_plan(plan: Plan, disclosure: Disclosure) -> Plan:
    """The plan the engine runs in sdc mode: with the largest contributors the dominance rules need."""
    from dataclasses import replace

    top_n = tops_needed(disclosure.rules, disclosure.rule_params)
    return replace(plan, top_n=top_n) if top_n else plan


def withhold(
    grid: pd.DataFrame, plan: Plan, hide: np.ndarray, disclosure: Disclosure
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The released values (NA where ``hide``) and their symbols (``c``; ``low`` after rounding)."""
    names = [a.name for a in plan.query.aggregates]
    values = grid[names].copy()
    for i, (name, agg) in enumerate(zip(names, plan.query.aggregates, strict=True)):
        values[name] = values[name].astype("Int64" if agg.spec.whole else "Float64")
        values.loc[hide[:, i], name] = pd.NA
    symbols = pd.DataFrame(np.where(hide, "c", ""), columns=names, index=values.index)
    for name, agg in zip(names, plan.query.aggregates, strict=True):
        if agg.spec.counts and disclosure.rounding > 1:
            values[name], low = round_counts(values[name], disclosure.rounding)
            symbols.loc[low, name] = "low"
    return values, symbols


def cell_stats(grid: pd.DataFrame, plan: Plan) -> CellStats:
    """What the primary rules look at, from the engine's exact output laid on the grid."""
    totals, tops = {}, {}
    for m in plan.top_measures:
        totals[m] = grid[top_column(m, 0)].fillna(0).to_numpy(dtype=float)
        tops[m] = np.column_stack(
            [grid[top_column(m, i + 1)].fillna(0).to_numpy(dtype=float) for i in range(plan.top_n)]
        )
    return CellStats(pupils=grid[PUPILS].fillna(0).to_numpy(dtype=np.int64), totals=totals, tops=tops)


def primary_flags(grid: pd.DataFrame, plan: Plan, disclosure: Disclosure) -> dict[str, np.ndarray]:
    """Rule -> (cells × aggregates) mask of the statistics each primary rule withholds."""
    aggregates = plan.query.aggregates
    found = apply_rules(
        cell_stats(grid, plan),
        [r for r in disclosure.rules if r == "threshold" or plan.top_measures],
        disclosure.rule_params,
    )
    out = {}
    for rule, by_measure in found.items():
        mask = np.zeros((len(grid), len(aggregates)), dtype=bool)
        for i, a in enumerate(aggregates):
            if "*" in by_measure:
                mask[:, i] = by_measure["*"]
            elif a.spec.measure and a.column in by_measure:
                mask[:, i] = by_measure[a.column]
        out[rule] = mask
    if any(a.spec.rank_rule for a in aggregates):
        from safestats.disclosure.rules import quantile_ranks

        mask = np.zeros((len(grid), len(aggregates)), dtype=bool)
        pupils = grid[PUPILS].fillna(0).to_numpy(dtype=np.int64)
        for i, a in enumerate(aggregates):
            if a.spec.rank_rule:
                assert a.q is not None
                mask[:, i] = quantile_ranks(pupils, a.q, minimum=disclosure.threshold)
        out["quantile"] = mask
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
        index = _product_index(tuple((k.name, k.cells) for k in plan.keys))
    observed = exact.set_index(key_names)
    observed.index = _align_index(observed.index, index)
    grid = observed.reindex(index)
    for a in plan.query.aggregates:
        if a.spec.additive or a.spec.counts:  # an empty cell counts (and sums to) zero
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


def grid_counts(exact: pd.DataFrame, plan: Plan, names: list[str]) -> dict[str, np.ndarray] | None:
    """``densify(..., structural_cells=True)[name].fillna(0)`` as int64 arrays over the grid, for
    integer aggregates (counts, sums of whole measures) of keys that all have a public domain:
    each engine row is scattered onto its cell in the grid's row-major order (the order of
    :func:`densify`'s product index), rows outside every public cell dropped, as ``densify``
    drops them. Values outside a key's code list go to its "(invalid)" cell when the plan groups
    them after aggregating, and are added up there, as :func:`_remap_additive` does. ``None``
    when the grid is not that simple (keys from the data, non-integer values): use ``densify``.
    """
    if any(k.from_data for k in plan.keys):
        return None
    values: dict[str, np.ndarray] = {}
    for name in names:
        col = exact[name]
        v = col.fillna(0).to_numpy() if len(col) else np.zeros(0, dtype=np.int64)
        if v.dtype.kind not in "iub" and not (v.dtype.kind == "f" and bool(np.all(v == np.round(v)))):
            return None
        values[name] = v.astype(np.int64)
    size = math.prod(len(k.cells) for k in plan.keys)
    flat = np.zeros(len(exact), dtype=np.int64)
    kept = np.ones(len(exact), dtype=bool)
    for k in plan.keys:
        where = {_plain(c): i for i, c in enumerate(k.cells)}
        remap = k.codes is not None and not plan.remap_in_engine
        codes = set(k.codes or ())
        found, uniques = pd.factorize(exact[k.name], use_na_sentinel=False)
        position = np.full(len(uniques), -1, dtype=np.int64)
        for j, u in enumerate(uniques):
            u = _plain(u)
            if remap and u is not None and u not in codes:
                u = INVALID
            position[j] = where.get(u, -1)
        at = position[found]
        kept &= at >= 0
        flat = flat * len(k.cells) + np.maximum(at, 0)
    out = {}
    for name, v in values.items():
        grid = np.zeros(size, dtype=np.int64)
        np.add.at(grid, flat[kept], v[kept])
        out[name] = grid
    return out


def _plain(v: Any) -> Any:
    """A key value as the grid lists it: None for a missing value, Python scalars for numpy's."""
    if pd.isna(v):
        return None
    return v.item() if hasattr(v, "item") else v


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


@functools.lru_cache(maxsize=32)
def _product_index(keys: tuple[tuple[str, tuple[Any, ...]], ...]) -> pd.MultiIndex:
    """The grid of public cells of keys ``(name, cells)``, row-major: built once per grid (most
    of a small table's densifying), shared (a MultiIndex is immutable). A few dozen kept: one of
    100,000 cells holds its lookup table too, a few MB."""
    return pd.MultiIndex.from_product([list(cells) for _, cells in keys], names=[name for name, _ in keys])


def _align_index(observed: pd.Index, grid: pd.MultiIndex) -> pd.MultiIndex:
    """Match the engine's key types (e.g. numpy bools, NaN for None) to the grid's."""
    levels = []
    for i in range(grid.nlevels):
        values = observed.get_level_values(i) if isinstance(observed, pd.MultiIndex) else observed
        levels.append([_plain(v) for v in values])
    return pd.MultiIndex.from_arrays(levels, names=grid.names)


def margins(grid: pd.DataFrame, key_names: list[str]) -> list[tuple[dict[str, Any], frozenset[int]]]:
    """Every margin of a grid (subtotals over each subset of keys, then the grand total): its
    label (``Total`` for the keys summed over) and the grid rows it adds up."""
    from itertools import combinations

    keyframe = grid[key_names].astype(object)
    out = []
    for r in range(len(key_names) - 1, -1, -1):
        for kept in combinations(key_names, r):
            groups = (
                keyframe.groupby(list(kept), sort=False, dropna=False).indices if kept else {(): np.arange(len(grid))}
            )
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
        raise QueryError(
            "your results use cell-key perturbation, which protects counts: ask for count() or "
            "count_pupils(); sums, means and quantiles are not released under this policy"
        )
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
    return Protected(
        table=out,
        symbols=symbols,
        cells=len(out),
        suppressed=0,
        privacy={
            "method": "cell-key perturbation",
            "max_noise": table.max_noise,
            "variance": table.variance,
            "small": table.small,
        },
    )
