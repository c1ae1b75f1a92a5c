"""The ``dp`` disclosure mode: differential privacy for one pupil (all their rows).

Planning turns the analyst's aggregates into *measurements*, each a vector of integer
aggregates over the full grid of public cells, with a sensitivity that follows from the
contribution bound the engine enforces (at most ``k`` rows per pupil, measures clipped to
their catalog bounds):

================  ======================  ========================
measurement       L1 sensitivity          L2 sensitivity
================  ======================  ========================
count of rows     k                       k
distinct pupils   k                       sqrt(k)
sum of measure    k * max(|low|, |high|)  k * max(|low|, |high|)
histogram bins    k                       k
================  ======================  ========================

A mean is a noisy sum over a noisy count; a quantile is OpenDP's exponential mechanism over
candidates from the catalog bounds, in every cell. The loss asked for is split exactly between
the measurements (sequential composition); one OpenDP measurement composed of them computes
the release, its privacy map certifying the loss (:mod:`safestats.privacy.accountant`). After
the noise, post-processing of noisy values only: clamping, rounding, suppression of noisy
counts under the threshold, means, margins, accuracy.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from safestats.disclosure.protect import Protected, densify, grid_counts
from safestats.disclosure.settings import Disclosure
from safestats.errors import DisclosureRefused, QueryError
from safestats.privacy import accountant
from safestats.privacy.accountant import Piece, QuantileNoise, bound, calibrate_quantile, sensitivity
from safestats.privacy.dp import Noise, Selection, calibrate, calibrate_selection
from safestats.privacy.intervals import envelope, selective_interval, sum_half_width
from safestats.query.model import Aggregate, Query
from safestats.query.validate import Key, Plan, selected_keys

__all__ = ["DpPlan", "Measurement", "exact_inputs", "plan_dp", "protect_dp"]

#: The noisy measurements an aggregate kind is post-processed from (query/aggregates.py
#: ``dp_inputs``): input -> (engine column, the exact aggregate the engine computes, its
#: sensitivity kind). One measurement per engine column, shared by every statistic that needs it.
INPUTS: dict[str, Any] = {
    "rows": lambda a: ("__count", Aggregate("count", name="__count"), "count"),
    "pupils": lambda a: ("__pupils", Aggregate("count_pupils", name="__pupils"), "pupils"),
    "sum": lambda a: (f"__sum_{a.column}", Aggregate("sum", a.column, name=f"__sum_{a.column}"), "sum"),
}

#: Most candidates of a quantile (bins of the measure's catalog range).
QUANTILE_BINS = 50
TOTAL = "Total"


@dataclass(frozen=True)
class Measurement:
    name: str  # engine column
    kind: str  # count | pupils | sum
    sensitivity: float
    noise: Noise

    @property
    def piece(self) -> Piece:
        return Piece(self.name, "vector", (self.noise.mechanism, self.noise.scale, _whole(self.sensitivity)))


@dataclass(frozen=True)
class Quantile:
    """One quantile aggregate: OpenDP's exponential mechanism in each cell."""

    name: str  # the analyst's aggregate name
    column: str
    noise: QuantileNoise


@dataclass(frozen=True)
class DpPlan:
    query: Query  # what the analyst asked for
    selection: Selection | None  # partition selection, for keys without a public domain
    plan: Plan  # the engine plan for the cell grid (bounded rows)
    histogram_plan: Plan | None  # the engine plan with a bin key, when quantiles are asked for
    measurements: tuple[Measurement, ...]
    quantiles: tuple[Quantile, ...]
    loss: Fraction
    unit: str
    k: int
    disclosure: Disclosure

    @property
    def delta(self) -> Fraction:
        """The δ this release spends (partition selection), 0 otherwise."""
        return Fraction(self.selection.delta) if self.selection is not None else Fraction(0)

    def describe(self) -> dict[str, Any]:
        out = {
            "unit": self.unit,
            "loss": str(self.loss),
            "max_rows_per_pupil": self.k,
            "measurements": [{"column": m.name, "kind": m.kind, **m.noise.describe()} for m in self.measurements]
            + [
                {"column": qt.column, "kind": "quantile", "name": qt.name, **qt.noise.describe()}
                for qt in self.quantiles
            ],
            "privacy_unit": accountant.PRIVACY_UNIT,
        }
        if self.selection is not None:
            out["measurements"] = [{"column": "__count", "kind": "selection", **self.selection.describe()}]
            out["delta"] = str(self.selection.delta)
        return out


def plan_dp(plan: Plan, disclosure: Disclosure, *, max_cells: int) -> DpPlan:
    """Decide the measurements, the contribution bound and the noise of a ``dp`` query."""
    q = plan.query
    unit = disclosure.unit
    asked = q.epsilon if unit == "epsilon" else q.rho
    other = q.rho if unit == "epsilon" else q.epsilon
    if other is not None:
        raise QueryError(
            f"your policy spends {unit} ({disclosure.noise} noise); give {unit}=..., not "
            f"{'rho' if unit == 'epsilon' else 'epsilon'}"
        )
    loss = Fraction(asked) if asked is not None else disclosure.per_query
    k = bound(q.max_rows_per_pupil if q.max_rows_per_pupil is not None else plan.default_max_rows)
    data_keys = selected_keys(plan.keys)
    if q.delta is not None and Fraction(q.delta) > disclosure.max_delta:
        raise QueryError(
            f"delta {q.delta} is more than one query may spend under your policy "
            f"({disclosure.max_delta}); ask for a smaller delta"
        )
    if data_keys or q.delta is not None:
        return _plan_selection(plan, disclosure, q, loss, k, data_keys)
    if q.bins and any(a.kind != "count" for a in q.aggregates):
        raise QueryError("a histogram (bins) takes count() only in dp mode")
    if q.totals and k > 1 and any(a.kind == "count_pupils" for a in q.aggregates):
        raise QueryError(
            f"totals of distinct pupils would count a pupil once for each of the up to {k} cells their "
            "rows fall in: ask for one term (one row per pupil), or totals of count()"
        )

    engine_aggs: dict[str, Aggregate] = {}
    kinds: dict[str, str] = {}
    for a in q.aggregates:
        for needed in a.spec.dp_inputs:  # the noisy measurements the kind is post-processed from
            if needed in INPUTS:  # (a histogram is planned below)
                name, engine_agg, kind = INPUTS[needed](a)
                engine_aggs[name], kinds[name] = engine_agg, kind
    if not any(k in ("count", "pupils") for k in kinds.values()):
        # sums or quantiles alone: a noisy count decides which cells are too small to show
        engine_aggs["__count"], kinds["__count"] = Aggregate("count", name="__count"), "count"
    quantile_aggs = [a for a in q.aggregates if "histogram" in a.spec.dp_inputs]
    quantile_columns = sorted({str(a.column) for a in quantile_aggs})
    n = len(engine_aggs) + len(quantile_aggs)
    share = loss / n

    measurements = []
    for name, kind in kinds.items():
        magnitude = 1
        if kind == "sum":
            low, high = plan.bounds[name.removeprefix("__sum_")]
            magnitude = max(abs(int(low)), abs(int(high)))
        sens = sensitivity(kind, k, disclosure.noise, magnitude)
        measurements.append(Measurement(name, kind, float(sens), calibrate(disclosure.noise, sens, share)))

    if k == 1 and "__pupils" in engine_aggs:
        # With one row per pupil, distinct pupils per cell are rows per cell: count them so.
        engine_aggs["__pupils"] = Aggregate("count", name="__pupils")
    # Every engine aggregate here is additive over rows (counts, sums), so values outside a
    # code list can be grouped as "(invalid)" after aggregating — unless pupils are counted
    # distinctly over several rows each.
    additive = all(a.kind in ("count", "sum") for a in engine_aggs.values())
    bounded = replace(plan, max_rows=k, pupils_per_cell=False, remap_in_engine=not additive)
    engine_plan = replace(bounded, query=_engine_query(q, tuple(engine_aggs.values())))
    histogram_plan = None
    quantiles: list[Quantile] = []
    if quantile_columns:
        if len(quantile_columns) > 1:
            raise QueryError("dp mode reads quantiles of one measure per query")
        col = quantile_columns[0]
        low, high = (int(b) for b in plan.bounds[col])
        width = max(1, math.ceil((high - low + 1) / QUANTILE_BINS))
        edges = tuple(range(low, high + 1, width))
        keys = [*plan.keys, Key(name=f"__bin_{col}", cells=edges, codes=None, bin=(col, low, width))]
        cells = math.prod(len(kk.cells) for kk in keys)
        if cells > max_cells:
            raise DisclosureRefused(f"the quantile needs {cells:,} cells of counts, more than {max_cells:,}")
        histogram_plan = replace(
            bounded, keys=tuple(keys), cells=cells, query=_engine_query(q, (Aggregate("count", name="__hist"),))
        )
        # Candidates lie between whole values (every edge − ½, and one past the top), so no
        # row sits on a candidate and every score is exact.
        candidates = tuple(float(e) - 0.5 for e in edges) + (float(edges[-1] + width) - 0.5,)
        measure = "max_divergence" if disclosure.noise == "laplace" else "zero_concentrated_divergence"
        for a in quantile_aggs:
            assert a.q is not None
            quantiles.append(Quantile(a.name, col, calibrate_quantile(float(a.q), candidates, k, share, measure)))
    return DpPlan(
        q, None, engine_plan, histogram_plan, tuple(measurements), tuple(quantiles), loss, unit, k, disclosure
    )


def _plan_selection(
    plan: Plan, disclosure: Disclosure, q: Query, loss: Fraction, k: int, data_keys: list[str]
) -> DpPlan:
    """Keys without a public domain: one count, released by Laplace noise above a threshold."""
    if not data_keys:
        raise QueryError("delta is only for partition selection, when grouping on a key with no public domain")
    if q.delta is None:
        raise QueryError(
            f"{', '.join(data_keys)} has no public domain, so which cells exist would reveal the data; "
            "ask for DP partition selection with select_partitions(delta=...) (only cells with enough "
            "pupils appear, and the release is (ε, δ)-DP)"
        )
    if disclosure.noise != "laplace":
        raise QueryError("partition selection uses Laplace noise; your policy spends rho (Gaussian)")
    if len(q.aggregates) != 1 or q.aggregates[0].kind not in ("count", "count_pupils") or q.bins or q.totals:
        raise QueryError("partition selection releases one count (count or count_pupils), no histograms or totals")
    kind = "count" if q.aggregates[0].kind == "count" or k == 1 else "count_pupils"
    selection = calibrate_selection(k, loss, Fraction(q.delta))
    engine_plan = replace(
        plan,
        max_rows=k,
        pupils_per_cell=False,
        remap_in_engine=True,
        query=_engine_query(q, (Aggregate(kind, name="__count"),)),
    )
    return DpPlan(q, selection, engine_plan, None, (), (), loss, disclosure.unit, k, disclosure)


def _engine_query(q: Query, aggregates: tuple[Aggregate, ...]) -> Query:
    return replace(q, aggregates=aggregates, epsilon=None, rho=None, totals=False)


def protect_dp(exact: pd.DataFrame, histogram: pd.DataFrame | None, dp_plan: DpPlan) -> Protected:
    """Add noise to every measurement over the full grid, then post-process noisy values only."""
    if dp_plan.selection is not None:
        return _protect_selection(exact, dp_plan)
    plan, q, d = dp_plan.plan, dp_plan.query, dp_plan.disclosure
    key_names = [k.name for k in plan.keys]
    inputs = exact_inputs(exact, plan, [m.name for m in dp_plan.measurements])  # as the accountant reads them
    del exact
    pieces = [m.piece for m in dp_plan.measurements]
    n_cells = math.prod(len(k.cells) for k in plan.keys)
    if dp_plan.quantiles:
        assert dp_plan.histogram_plan is not None and histogram is not None
        inputs |= exact_inputs(histogram, dp_plan.histogram_plan, ["__hist"])
        del histogram
        bin_key = dp_plan.histogram_plan.keys[-1]
        edges = np.array(bin_key.cells, dtype=float)
        pieces += [Piece("__hist", "quantile", (qt.noise, n_cells, edges)) for qt in dp_plan.quantiles]
    release = accountant.compose(pieces)
    certified = accountant.certify(release, dp_plan.loss)
    outputs = accountant.run(release, inputs)
    del inputs  # exact values end here
    noisy = {m.name: np.asarray(v, dtype=np.int64) for m, v in zip(dp_plan.measurements, outputs, strict=False)}
    chosen = outputs[len(dp_plan.measurements) :]
    quantile_values = {qt.name: np.asarray(v, dtype=float) for qt, v in zip(dp_plan.quantiles, chosen, strict=True)}

    by_name = {m.name: m for m in dp_plan.measurements}
    ctx = _Noisy(noisy, by_name, quantile_values, d, plan)
    # Suppression on noisy counts only.
    suppress = _noisy_count_basis(noisy) < d.threshold
    names = [a.name for a in q.aggregates]
    table = _cell_index(_grid_keys(plan)).copy()
    symbols, acc, lower, upper = {}, {}, {}, {}
    for a in q.aggregates:
        value, half, low, high = POST[a.spec.dp_post](a, ctx)
        value = np.broadcast_to(np.asarray(value, dtype=float), (n_cells,))
        acc[a.name] = np.broadcast_to(np.asarray(half, dtype=float), (n_cells,)).copy()
        if low is None:  # symmetric about the value
            low, high = value - acc[a.name], value + acc[a.name]
        lower[a.name], upper[a.name] = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        shown = _typed(value, a)
        missing = np.asarray(shown.isna(), dtype=bool)
        shown[suppress] = pd.NA
        table[a.name] = shown
        symbols[a.name] = np.where(suppress, "c", np.where(missing, "x", ""))
        if not q.totals:  # a statistic not shown has no interval (below, with the margins)
            for f in (acc, lower, upper):
                f[a.name] = np.where(missing | suppress, np.nan, f[a.name])
    symbols = pd.DataFrame(symbols, index=table.index, columns=names)
    acc, lower, upper = (  # one float block each (cheaper to build than a column at a time)
        pd.DataFrame(np.column_stack([f[n] for n in names]).astype(float), index=table.index, columns=names)
        for f in (acc, lower, upper)
    )
    if q.totals:
        table, symbols, acc, lower, upper = _with_totals(
            table, symbols, acc, lower, upper, key_names, q, noisy, dp_plan
        )
        acc, lower, upper = _without_withheld(table, names, acc, lower, upper)
    privacy = {**dp_plan.describe(), "certified": certified}
    return Protected(
        table=table,
        symbols=symbols,
        cells=len(table),
        suppressed=int((symbols.to_numpy() == "c").all(axis=1).sum()),
        accuracy=acc,
        privacy=privacy,
        lower=lower,
        upper=upper,
    )


@dataclass(frozen=True)
class _Noisy:
    """What post-processing reads: the noisy measurements and the public parameters only."""

    values: dict[str, np.ndarray]  # engine column -> noisy values over the grid
    measurements: dict[str, Measurement]
    quantiles: dict[str, np.ndarray]  # statistic -> the chosen candidates
    disclosure: Disclosure
    plan: Plan


Post = tuple[Any, Any, Any, Any]  # values, ± half-width, interval low and high (None: value ± half)
Margin = tuple[Any, Any]  # values, ± half-width


def shown_count(z: np.ndarray, threshold: int, mechanism: str, scale: float, naive: float, d: Disclosure) -> Post:
    """Noisy counts as shown (clamped at 0, rounded), the ± and the interval's ends. A count is
    shown only when ``z ≥ threshold``, so its interval is the one conditional on that, moved to
    the value as shown and widened by the rounding; the ± is its symmetric envelope. The one
    place the interval of a released count is made (cells, partition selection, preview)."""
    low, high = selective_interval(z, threshold, mechanism, scale, naive)
    shown, slack = _count(z, d), rounding_slack(d)
    half = envelope(z, low, high, naive) + slack
    return shown, half, np.maximum(shown - (z - low) - slack, 0.0), shown + (high - z) + slack


def _post_count(a: Aggregate, n: _Noisy) -> Post:
    name = INPUTS[a.spec.dp_inputs[0]](a)[0]
    noise, d = n.measurements[name].noise, n.disclosure
    return shown_count(n.values[name], d.threshold, noise.mechanism, noise.scale, noise.accuracy, d)


def _post_sum(a: Aggregate, n: _Noisy) -> Post:
    name = f"__sum_{a.column}"
    return n.values[name], n.measurements[name].noise.accuracy, None, None


def _post_mean(a: Aggregate, n: _Noisy) -> Post:
    """A noisy sum over a noisy count, clipped to the measure's bounds (the delta method's ±)."""
    s_name = f"__sum_{a.column}"
    mean, half = _mean(
        n.values[s_name],
        n.values["__count"],
        n.measurements[s_name].noise.accuracy,
        n.measurements["__count"].noise.accuracy,
        n.plan.bounds[str(a.column)],
    )
    return mean, half, None, None


def _post_quantile(a: Aggregate, n: _Noisy) -> Post:
    """The candidate OpenDP's exponential mechanism chose; its accuracy is in ranks."""
    return n.quantiles[a.name], np.nan, None, None


#: One post-processing per ``dp_post`` of query/aggregates.py.
POST: dict[str, Any] = {"count": _post_count, "sum": _post_sum, "mean": _post_mean, "quantile": _post_quantile}


def _margin_count(a: Aggregate, g: pd.DataFrame, half: Any, cells: np.ndarray, d: Disclosure, plan: Plan) -> Margin:
    name = INPUTS[a.spec.dp_inputs[0]](a)[0]
    return _count(g[name].to_numpy(dtype=np.int64), d), half(name, cells) + rounding_slack(d)


def _margin_sum(a: Aggregate, g: pd.DataFrame, half: Any, cells: np.ndarray, d: Disclosure, plan: Plan) -> Margin:
    name = f"__sum_{a.column}"
    return g[name].to_numpy(), half(name, cells)


def _margin_mean(a: Aggregate, g: pd.DataFrame, half: Any, cells: np.ndarray, d: Disclosure, plan: Plan) -> Margin:
    n = g["__count"].to_numpy(dtype=float)
    sm = g[f"__sum_{a.column}"].to_numpy(dtype=float)
    low, high = plan.bounds[str(a.column)]
    mean = np.clip(np.where(n > 0, sm / np.maximum(n, 1), np.nan), float(low), float(high))
    spread = (half(f"__sum_{a.column}", cells) + np.abs(np.nan_to_num(mean)) * half("__count", cells)) / np.maximum(
        n, 1
    )
    return mean, np.where(n > 0, spread, np.nan)


#: A margin of each ``dp_post`` (summed noisy cells, then post-processed): (values, ± half-width).
MARGIN: dict[str, Any] = {"count": _margin_count, "sum": _margin_sum, "mean": _margin_mean}


def rounding_slack(d: Disclosure) -> int:
    """How far a count rounded to a multiple of ``d.rounding`` can be from the integer it rounds
    (``rounding // 2``: 15 rounds to 20 at a rounding of 10), added to its interval."""
    return int(d.rounding) // 2


def _without_withheld(table: pd.DataFrame, names: list[str], *frames: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """A statistic that is not shown has no interval: its width near the threshold, or a mean's,
    would be a function of the noisy value that was withheld."""
    out = []
    for f in frames:
        f = f.copy()
        for name in names:
            if name in f:
                f[name] = f[name].astype(float).where(table[name].notna().to_numpy(), np.nan)
        out.append(f)
    return tuple(out)


def _protect_selection(exact: pd.DataFrame, dp_plan: DpPlan) -> Protected:
    """Partition selection: noisy counts of non-empty cells, released above OpenDP's threshold."""
    assert dp_plan.selection is not None
    key_names = [k.name for k in dp_plan.plan.keys]
    name = dp_plan.query.aggregates[0].name
    encoded = {
        json.dumps([_json(v) for v in row[:-1]]): int(row[-1])
        for row in exact[[*key_names, "__count"]].itertuples(index=False)
    }
    del exact
    sel = dp_plan.selection
    release = accountant.compose([Piece("__count", "selection", (sel.scale, sel.threshold, sel.sensitivity))])
    certified = accountant.certify(release, dp_plan.loss, dp_plan.delta)
    released = {str(k): int(v) for k, v in accountant.run(release, {"__count": encoded})[0].items()}
    rows = [json.loads(k) + [v] for k, v in sorted(released.items())]
    table = pd.DataFrame(rows, columns=[*key_names, name])
    raw = table[name].to_numpy(dtype=np.int64)
    counts = _count(raw, dp_plan.disclosure)
    keep = raw >= dp_plan.disclosure.threshold  # cells that exist only by the data: drop, don't mark
    table = table[keep].reset_index(drop=True)
    table[name] = pd.array(counts[keep], dtype="Int64")
    symbols = pd.DataFrame("", index=table.index, columns=[name])
    # a cell exists only because its noisy count cleared both thresholds: the interval
    # conditional on that, about the value as shown
    cut = max(int(sel.threshold), int(dp_plan.disclosure.threshold))
    _, half, low, high = shown_count(raw[keep], cut, "discrete_laplace", sel.scale, sel.accuracy, dp_plan.disclosure)
    acc, lower, upper = (pd.DataFrame({name: v}) for v in (half, low, high))
    return Protected(
        table=table,
        symbols=symbols,
        cells=len(table),
        suppressed=0,
        accuracy=acc,
        privacy={**dp_plan.describe(), "certified": list(certified)},
        lower=lower,
        upper=upper,
    )


def _json(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _typed(values: Any, agg: Aggregate) -> Any:
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        floats = pd.array(values.astype(float), dtype="Float64")  # NaN -> NA
    else:
        floats = pd.array(pd.to_numeric(pd.Series(values, dtype=object)), dtype="Float64")
    if agg.spec.whole:
        return floats.round().astype("Int64")
    return floats


def exact_inputs(exact: pd.DataFrame, plan: Plan, names: list[str]) -> dict[str, np.ndarray]:
    """The engine's exact integer aggregates over the full grid of public cells (zeros where empty)."""
    arrays = grid_counts(exact, plan, names)
    if arrays is None:
        grid = densify(exact, plan, structural_cells=True)
        arrays = {name: grid[name].fillna(0).to_numpy(dtype=np.int64) for name in names}
    return arrays


def _grid_keys(plan: Plan) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    return tuple((k.name, tuple(k.cells)) for k in plan.keys)


@functools.lru_cache(maxsize=64)
def _cell_index(keys: tuple[tuple[str, tuple[Any, ...]], ...]) -> pd.DataFrame:
    """The public cells' keys in the grid's order (public: kept, and copied by each release)."""
    if not keys:
        return pd.DataFrame(index=[0])
    index = pd.MultiIndex.from_product([list(cells) for _, cells in keys], names=[name for name, _ in keys])
    return index.to_frame(index=False)


def _count(noisy: np.ndarray, d: Disclosure) -> np.ndarray:
    out = np.asarray(np.maximum(noisy, 0), dtype=np.int64)
    if d.rounding > 1:
        out = (np.floor(out / d.rounding + 0.5) * d.rounding).astype(np.int64)
    return out


def _mean(
    s: np.ndarray, n: np.ndarray, acc_s: float, acc_n: float, bounds: tuple[Any, Any]
) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    mean = np.clip(mean, float(bounds[0]), float(bounds[1]))
    half = np.where(n > 0, (acc_s + np.abs(np.nan_to_num(mean)) * acc_n) / np.maximum(n, 1), np.nan)
    return mean, half


def _noisy_count_basis(noisy: dict[str, np.ndarray]) -> np.ndarray:
    """The smallest noisy count of each cell: every released count clears the threshold."""
    counts = [np.maximum(noisy[name], 0) for name in ("__pupils", "__count") if name in noisy]
    return np.asarray(np.minimum.reduce(counts), dtype=np.int64)


def _whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _with_totals(
    table: pd.DataFrame,
    symbols: pd.DataFrame,
    acc: pd.DataFrame,
    lower: pd.DataFrame,
    upper: pd.DataFrame,
    key_names: list[str],
    q: Query,
    noisy: dict[str, np.ndarray],
    dp_plan: DpPlan,
) -> tuple[pd.DataFrame, ...]:
    """Margins for every subset of keys, summed from the noisy cells *before* they are clamped
    at zero (so a margin is unbiased: clamping each of many small cells first would add their
    noise's positive part), then post-processed like a cell.

    Margins are post-processing of the noisy cells, so they cost no budget. Their accuracy is
    the exact 95% interval of the sum of as many independent noises as the margin has cells
    (``sum_half_width``: the normal approximation under-covers Laplace margins of few cells);
    small margins are suppressed like cells. The empty value of a nullable key is a margin of
    its own.
    """
    if any(a.spec.dp_post not in MARGIN for a in q.aggregates):
        raise QueryError("totals with quantiles are not available; ask for the quantile without totals")
    from itertools import combinations

    d = dp_plan.disclosure
    noises = {m.name: m.noise for m in dp_plan.measurements}

    def half(name: str, cells: np.ndarray) -> np.ndarray:
        n = noises[name]
        widths = {k: float(sum_half_width(n.mechanism, n.scale, k)) for k in np.unique(cells).tolist()}
        return np.array([widths[k] for k in cells.tolist()], dtype=float)

    base = table[key_names].copy().astype(object)
    parts = dict(noisy)
    frame = pd.concat([base, pd.DataFrame(parts)], axis=1)
    frame["__cells"] = 1
    rows, sym_rows, acc_rows = [table.astype(object)], [symbols], [acc]
    low_rows, high_rows = [lower], [upper]
    for r in range(len(key_names) - 1, -1, -1):
        for kept in combinations(key_names, r):
            cols = [*parts, "__cells"]
            g = (
                frame.groupby(list(kept), sort=False, dropna=False)[cols].sum().reset_index()
                if kept
                else frame[cols].sum().to_frame().T
            )
            for k in key_names:
                if k not in kept:
                    g[k] = TOTAL
            out, a_out = g[key_names].copy(), pd.DataFrame(index=g.index)
            cells = g["__cells"].to_numpy(dtype=np.int64)
            for a in q.aggregates:  # totals of quantiles are refused above
                out[a.name], a_out[a.name] = MARGIN[a.spec.dp_post](a, g, half, cells, d, dp_plan.plan)
            small = np.zeros(len(g), dtype=bool)
            for name in ("__pupils", "__count"):
                if name in g:
                    small |= g[name].to_numpy(dtype=float) < d.threshold
            sym = pd.DataFrame("", index=out.index, columns=symbols.columns)
            for a in q.aggregates:
                out[a.name] = out[a.name].astype(object)
                out.loc[small, a.name] = None
                sym.loc[small, a.name] = "c"
            rows.append(out.astype(object))
            sym_rows.append(sym)
            acc_rows.append(a_out)
            values = {a.name: pd.to_numeric(out[a.name], errors="coerce").to_numpy(dtype=float) for a in q.aggregates}
            low_rows.append(pd.DataFrame({c: v - a_out[c].to_numpy(dtype=float) for c, v in values.items()}))
            high_rows.append(pd.DataFrame({c: v + a_out[c].to_numpy(dtype=float) for c, v in values.items()}))
    table = pd.concat(rows, ignore_index=True)
    for a in q.aggregates:
        table[a.name] = _typed(table[a.name], a)
    low_all, high_all = pd.concat(low_rows, ignore_index=True), pd.concat(high_rows, ignore_index=True)
    for a in q.aggregates:
        if a.spec.counts:  # a count is never negative
            low_all[a.name] = low_all[a.name].clip(lower=0.0)
    return (
        table,
        pd.concat(sym_rows, ignore_index=True),
        pd.concat(acc_rows, ignore_index=True),
        low_all,
        high_all,
    )
