"""One accountant: every dp release is one OpenDP measurement, charged exactly, certified by OpenDP.

The privacy unit is **one pupil** and the neighbouring relation is *one pupil added or removed,
with all their rows*. The engine enforces a contribution bound of ``k`` rows per pupil (an
integer; :func:`bound`), and :func:`sensitivity` turns that bound into each measurement's
sensitivity. Both the planner (which calibrates the noise) and the accountant (which states
each measurement's stability to OpenDP) call that one function.

A release is assembled as OpenDP's own combinators see it:

* the input is the exact grid of the query (a dict of integer vectors, one per engine
  aggregate, plus exact histograms for quantiles), a :func:`opendp.prelude.user_domain` whose
  distance is *pupils added or removed*;
* each measurement is ``extract vector`` (a user transformation whose stability map is
  ``d ↦ d × sensitivity``) chained with OpenDP's discrete Laplace or discrete Gaussian;
* a quantile is OpenDP's exponential mechanism (``make_private_quantile``) run in every cell;
* the release is :func:`opendp.combinators.make_composition` of those, and **the release is
  computed by invoking that composed measurement**. Its privacy map at ``d_in = 1`` is the loss
  OpenDP certifies; it must not exceed the exact fraction the ledger charges, or nothing is
  released.

The only privacy claims that are ours rather than OpenDP's are the stability maps (the
sensitivities) and the parallel composition of the per-cell quantile; both are pinned by
property tests on neighbouring datasets (``tests/adversarial/test_dp_neighbours.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np

from safestats.query.model import contribution_bound as bound

__all__ = [
    "PRIVACY_UNIT",
    "Piece",
    "QuantileNoise",
    "bound",
    "calibrate_quantile",
    "certify",
    "compose",
    "rho_to_epsilon",
    "run",
    "sensitivity",
]

PRIVACY_UNIT = "one pupil added or removed, with all their rows"
ALPHA = 0.05


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib", "honest-but-curious")
    return dp


def sensitivity(kind: str, k: int, noise: str, magnitude: int = 1) -> int | float:
    """How far one pupil can move a measurement: L1 for Laplace noise, L2 for Gaussian.

    ``kind`` is ``count`` (rows), ``pupils`` (distinct pupils per cell), ``sum`` (a measure
    clipped to ``±magnitude``) or ``histogram`` (rows per cell and bin). With at most ``k`` rows
    per pupil: their rows can all fall in one cell (count, sum, histogram: L1 = L2 = k·m), while
    a distinct-pupil count moves by at most 1 in each of at most ``k`` cells (L1 = k, L2 = √k).
    """
    k = bound(k)
    if isinstance(magnitude, bool) or int(magnitude) != magnitude or magnitude < 0:
        raise ValueError(f"a measure's magnitude is a whole number, not {magnitude!r}")
    if kind in ("count", "histogram"):
        l1, l2 = k, float(k)
    elif kind == "pupils":
        l1, l2 = k, math.sqrt(k)
    elif kind == "sum":
        l1, l2 = k * int(magnitude), float(k * int(magnitude))
    else:
        raise ValueError(f"no sensitivity for a {kind!r} measurement")
    if noise == "laplace":
        return l1
    if noise == "gaussian":
        return l2
    raise ValueError(f"unknown noise {noise!r}")


def _grid() -> tuple[Any, Any]:
    dp = _dp()
    domain = dp.user_domain("safestats.exact-grid", lambda x: isinstance(x, dict))
    return domain, dp.user_distance(PRIVACY_UNIT)


def _vector_piece(name: str, mechanism: str, scale: float, sens: int | float) -> Any:
    """``grid ↦ grid[name]`` (stability d ↦ d·sens) chained with OpenDP's integer noise."""
    dp = _dp()
    domain, metric = _grid()
    if mechanism == "discrete_laplace":
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"))

        def stability(d: Any) -> Any:
            return int(d) * int(sens)

        then = dp.m.then_laplace(scale=scale)
    else:
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"))

        def stability(d: Any) -> Any:
            return float(d) * float(sens)

        then = dp.m.then_gaussian(scale=scale)

    def extract(x: Any) -> Any:
        return np.array(x[name], dtype=np.int64, copy=True)

    return dp.t.make_user_transformation(domain, metric, *space, function=extract, stability_map=stability) >> then


@dataclass(frozen=True)
class QuantileNoise:
    """OpenDP's exponential mechanism for one quantile, calibrated for ``k`` rows per pupil."""

    alpha: float
    candidates: tuple[float, ...]
    scale: float
    k: int
    measure: str  # "max_divergence" (ε) or "zero_concentrated_divergence" (ρ)
    loss: Fraction
    certified: float
    rank_accuracy: float  # 95%: rows between the released candidate's rank and the best one's

    def describe(self) -> dict[str, object]:
        return {
            "mechanism": "exponential_quantile",
            "alpha": self.alpha,
            "scale": self.scale,
            "candidates": len(self.candidates),
            "loss": str(self.loss),
            "certified": self.certified,
            "rank_accuracy95": self.rank_accuracy,
        }


def _cell_quantile(candidates: tuple[float, ...], alpha: float, scale: float, measure: str) -> Any:
    dp = _dp()
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    out = dp.max_divergence() if measure == "max_divergence" else dp.zero_concentrated_divergence()
    return dp.m.make_private_quantile(domain, dp.symmetric_distance(), out, list(candidates), alpha, scale)


@lru_cache(maxsize=128)
def calibrate_quantile(
    alpha: float, candidates: tuple[float, ...], k: int, loss: Fraction, measure: str
) -> QuantileNoise:
    """The smallest scale at which OpenDP's map certifies ``loss`` for ``k`` rows in one cell.

    A pupil's ``k`` rows can fall in several cells; OpenDP's per-cell map is linear in the rows
    changed for ε and quadratic for ρ, so the cells together never lose more than one cell
    with all ``k`` rows (checked by ``test_quantile_map_composes_over_cells``).
    """
    dp = _dp()
    k = bound(k)
    scale = dp.binary_search_param(lambda s: _cell_quantile(candidates, alpha, s, measure), d_in=k, d_out=float(loss))
    cell = _cell_quantile(candidates, alpha, scale, measure)
    certified = float(cell.map(k))
    # OpenDP scores a candidate by how many rows its rank is off the α-quantile's, normalised so
    # that the mechanism picks a candidate r rows off with weight ∝ exp(−r / scale); a union
    # bound over the candidates gives the rank error at 95% (checked empirically in the tests).
    rank = scale * math.log(len(candidates) / ALPHA)
    return QuantileNoise(alpha, candidates, float(scale), k, measure, loss, certified, rank)


def _quantile_piece(name: str, noise: QuantileNoise, n_cells: int, edges: np.ndarray) -> Any:
    """OpenDP's exponential mechanism in every cell of ``grid[name]`` (counts per cell and bin).

    Each cell's rows are given to OpenDP as their bins' left edges (binning is a row-by-row map,
    so it changes no distance); candidates lie between edges, so a candidate's score is exact.
    The map is parallel composition over the cells at the bound ``k`` (see
    :func:`calibrate_quantile`).
    """
    dp = _dp()
    domain, metric = _grid()
    cell = _cell_quantile(noise.candidates, noise.alpha, noise.scale, noise.measure)
    measure = dp.max_divergence() if noise.measure == "max_divergence" else dp.zero_concentrated_divergence()

    def run(x: Any) -> Any:
        counts = np.asarray(x[name], dtype=np.int64).reshape(n_cells, len(edges))
        out = []
        for row in counts:
            values = np.repeat(edges, np.maximum(row, 0)).astype(float)
            out.append(float(cell(values)) if len(values) else float(cell(np.array([], dtype=float))))
        return out

    def privacy(d: Any) -> Any:
        return cell.map(int(d) * noise.k)

    return dp.m.make_user_measurement(domain, metric, measure, function=run, privacy_map=privacy)


def _selection_piece(name: str, scale: float, threshold: int, k: int) -> Any:
    dp = _dp()
    domain, metric = _grid()
    space = (
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
        dp.l01inf_distance(dp.absolute_distance(T="i64")),
    )

    def extract(x: Any) -> Any:
        return {str(key): int(v) for key, v in x[name].items()}

    def stability(d: Any) -> Any:
        return (int(d) * k, int(d) * k, int(d) * k)

    inner = dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold)
    return dp.t.make_user_transformation(domain, metric, *space, function=extract, stability_map=stability) >> inner


@dataclass(frozen=True)
class Piece:
    """One measurement of a release, before it is composed."""

    name: str  # the grid entry it reads
    kind: str  # vector | quantile | selection
    params: tuple[Any, ...]


def compose(pieces: Sequence[Piece]) -> Any:
    """The release as one OpenDP measurement (``make_composition`` of its pieces)."""
    dp = _dp()
    built = []
    for p in pieces:
        if p.kind == "vector":
            built.append(_vector_piece(p.name, *p.params))
        elif p.kind == "quantile":
            built.append(_quantile_piece(p.name, *p.params))
        elif p.kind == "selection":
            built.append(_selection_piece(p.name, *p.params))
        else:  # pragma: no cover - the planner builds the pieces
            raise ValueError(f"unknown measurement {p.kind!r}")
    return dp.c.make_composition(built)


def certify(measurement: Any, charged: Fraction, delta: Fraction = Fraction(0)) -> Any:
    """OpenDP's map of the composed release for one pupil; refuses if it exceeds the charge."""
    loss = measurement.map(1)
    eps, dlt = loss if isinstance(loss, tuple) else (loss, 0.0)
    # float rounding of OpenDP's map vs the exact charge: allow one part in 10^9
    if float(eps) > float(charged) * (1 + 1e-9) or float(dlt) > float(delta) * (1 + 1e-9):
        raise RuntimeError(f"OpenDP certifies {loss} for this release, more than the {charged} charged")
    return loss


def run(measurement: Any, grid: Mapping[str, Any]) -> list[Any]:
    """Invoke the certified measurement on the exact grid (the only place noise is drawn)."""
    return list(measurement(dict(grid)))


@lru_cache(maxsize=256)
def rho_to_epsilon(rho: Fraction, delta: Fraction) -> float:
    """The ε of (ε, δ)-DP that ρ-zCDP implies at this δ, by OpenDP's own conversion."""
    if rho <= 0:
        return 0.0
    dp = _dp()
    domain, metric = _grid()

    def privacy(d: Any) -> Any:
        return float(rho) * int(d) ** 2

    m = dp.m.make_user_measurement(
        domain, metric, dp.zero_concentrated_divergence(), function=lambda x: 0, privacy_map=privacy
    )
    return float(dp.c.make_zCDP_to_approxDP(m).map(1).epsilon(float(delta)))
