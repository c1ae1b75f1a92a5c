"""OpenDP behind a narrow API: integer noise on integer vectors, and its accuracy.

Only OpenDP's exact integer samplers are used: discrete Laplace for pure ε-DP (L1
sensitivity) and discrete Gaussian for ρ-zCDP (L2 sensitivity). The scale is the smallest
OpenDP accepts for the sensitivity and the loss asked for, so the loss OpenDP certifies never
exceeds what the ledger charges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["Noise", "Selection", "add_noise", "calibrate", "calibrate_selection"]

ALPHA = 0.05  # accuracy is reported as the half-width of a 95% interval
PARALLEL_FROM = 8192  # vectors at least this long are sampled in two threads


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass(frozen=True)
class Noise:
    """A calibrated mechanism for one vector of integer aggregates."""

    mechanism: str  # "discrete_laplace" or "discrete_gaussian"
    scale: float
    sensitivity: float
    loss: Fraction  # the ε or ρ this measurement is charged
    certified: float  # the loss OpenDP's privacy map certifies (<= float(loss))
    accuracy: float  # 95% interval half-width of each noisy cell

    def describe(self) -> dict[str, object]:
        return {
            "mechanism": self.mechanism,
            "scale": self.scale,
            "sensitivity": self.sensitivity,
            "loss": str(self.loss),
            "certified": self.certified,
            "accuracy95": self.accuracy,
        }


@lru_cache(maxsize=512)
def calibrate(kind: str, sensitivity: float, loss: Fraction) -> Noise:
    """The noise for ``sensitivity`` and a loss of ``loss`` (ε for "laplace", ρ for "gaussian")."""
    dp = _dp()
    if kind == "laplace":
        if sensitivity != int(sensitivity):
            raise ValueError("L1 sensitivity of integer aggregates is a whole number")
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"))
        d_in: float | int = int(sensitivity)

        def make(scale: float) -> Any:
            return space >> dp.m.then_laplace(scale=scale)

        scale = _search(make, d_in, float(loss), d_in / float(loss))  # OpenDP's map: ε = Δ / scale
        mechanism = "discrete_laplace"
    elif kind == "gaussian":
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"))
        d_in = float(sensitivity)

        def make(scale: float) -> Any:
            return space >> dp.m.then_gaussian(scale=scale)

        scale = _search(make, d_in, float(loss), d_in / math.sqrt(2 * float(loss)))  # ρ = Δ² / (2·scale²)
        mechanism = "discrete_gaussian"
    else:
        raise ValueError(f"unknown noise {kind!r}")
    certified = float(make(scale).map(d_in))
    from safestats.privacy.intervals import half_width

    accuracy = half_width(mechanism, float(scale))  # exact for integer noise (OpenDP's is a bound)
    if certified > float(loss) * (1 + 1e-12):  # pragma: no cover - _search checked the map already
        raise RuntimeError("OpenDP certified more loss than asked for")
    return Noise(mechanism, float(scale), float(sensitivity), loss, certified, float(accuracy))


def _search(make: Any, d_in: float, d_out: float, guess: float) -> float:
    """The least scale whose OpenDP privacy map at ``d_in`` is at most ``d_out``: the closed form
    ``guess`` (or a hair above it, where rounding put its map a hair over), as OpenDP's map
    certifies it; OpenDP's binary search if that fails. One or two measurements built, where the
    search builds about seventy (most of a fresh small release's time)."""
    for scale in (guess, guess * (1 + 1e-12)):
        if float(make(scale).map(d_in)) <= d_out:
            return scale
    return float(_dp().binary_search_param(make, d_in=d_in, d_out=d_out))


def add_noise(values: np.ndarray, noise: Noise) -> np.ndarray:
    """``values`` (integers) plus fresh noise from OpenDP's sampler, outside any release (the
    sampler's own tests and benchmarks; releases draw through ``privacy.accountant.run``)."""
    dp = _dp()
    ints = np.array(values, dtype=np.int64, copy=True)  # OpenDP needs a writable buffer
    if noise.mechanism == "discrete_laplace":
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"))
        meas = space >> dp.m.then_laplace(scale=noise.scale)
    else:
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"))
        meas = space >> dp.m.then_gaussian(scale=noise.scale)
    if len(ints) == 0:
        return ints
    if len(ints) < PARALLEL_FROM:
        return np.asarray(meas(ints), dtype=np.int64)
    # The noise is independent per cell: sample halves of a long vector in two threads
    # (OpenDP releases the GIL). The privacy accounting is for the whole vector, once.
    from concurrent.futures import ThreadPoolExecutor

    chunks = np.array_split(ints, 2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(lambda c: np.asarray(meas(np.array(c, copy=True)), dtype=np.int64), chunks))
    return np.concatenate(parts)


@dataclass(frozen=True)
class Selection:
    """DP partition selection: Laplace noise on each non-empty cell, released above a threshold."""

    scale: float
    threshold: int
    sensitivity: int  # rows (and cells) one pupil can touch
    loss: Fraction  # ε charged
    delta: Fraction
    certified: tuple[float, float]  # (ε, δ) OpenDP certifies
    accuracy: float

    def describe(self) -> dict[str, object]:
        return {
            "mechanism": "laplace_threshold",
            "scale": self.scale,
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "loss": str(self.loss),
            "delta": str(self.delta),
            "certified": list(self.certified),
            "accuracy95": self.accuracy,
        }


def _threshold_space() -> tuple[Any, Any]:
    dp = _dp()
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    return domain, dp.l01inf_distance(dp.absolute_distance(T="i64"))


@lru_cache(maxsize=128)
def calibrate_selection(sensitivity: int, loss: Fraction, delta: Fraction) -> Selection:
    """Smallest scale for ε = ``loss``, then the smallest threshold for δ = ``delta``."""
    dp = _dp()
    domain, metric = _threshold_space()
    d_in = (sensitivity, sensitivity, sensitivity)

    def make(scale: float, threshold: int) -> Any:
        return dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=threshold)

    high = 1 << 30
    scale = dp.binary_search(lambda s: make(s, high).map(d_in)[0] <= float(loss), bounds=(1e-6, 1e9))
    threshold = dp.binary_search(
        lambda t: make(scale, t).map(d_in)[1] <= float(delta), T=int, bounds=(sensitivity, high)
    )
    eps, dlt = make(scale, threshold).map(d_in)
    accuracy = dp.discrete_laplacian_scale_to_accuracy(scale, ALPHA)
    return Selection(float(scale), int(threshold), sensitivity, loss, delta, (float(eps), float(dlt)), float(accuracy))
