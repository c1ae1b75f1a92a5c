"""The exact 95% interval of integer noise and the interval conditional on being shown."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safestats.privacy.intervals import _tail, half_width, selective_half_width, selective_interval, sum_half_width


def _pmf_tail(mechanism: str, scale: float, x: int) -> float:
    n = np.arange(-int(80 * scale) - 10, int(80 * scale) + 11)
    logp = -np.abs(n) / scale if mechanism == "discrete_laplace" else -(n.astype(float) ** 2) / (2 * scale**2)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    return float(p[n >= x].sum())


@pytest.mark.parametrize(
    ("mechanism", "scale"),
    [("discrete_laplace", 0.7), ("discrete_laplace", 4.0), ("discrete_gaussian", 1.3), ("discrete_gaussian", 9.0)],
)
def test_tails_are_the_noise_distribution(mechanism, scale):
    for x in (-7, -1, 0, 1, 2, 5, 13):
        assert _tail(mechanism, scale, np.array([x]))[0] == pytest.approx(_pmf_tail(mechanism, scale, x), abs=1e-12)


@pytest.mark.parametrize(
    ("mechanism", "scale"),
    [("discrete_laplace", 2.0), ("discrete_laplace", 37.5), ("discrete_gaussian", 2.0), ("discrete_gaussian", 250.0)],
)
def test_half_width_is_the_smallest_95_percent_interval(mechanism, scale):
    a = half_width(mechanism, scale)

    def inside(w: int) -> float:
        return 1 - 2 * float(_tail(mechanism, scale, np.array([w + 1]))[0])

    assert inside(a) >= 0.95 > inside(a - 1)


def test_selective_widths_are_never_narrower_and_grow_towards_the_threshold():
    z = np.array([10, 11, 12, 14, 18, 25, 60, 500])
    w = selective_half_width(z, 10, "discrete_laplace", 2.0, 6.0)
    assert (w >= 6).all() and w[-1] == 6 and w[0] >= w[4]
    assert w[0] >= 10  # a cell just at the threshold may hold any count from 0


def _pmf(mechanism: str, scale: float, reach: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(-reach, reach + 1)
    logp = -np.abs(n) / scale if mechanism == "discrete_laplace" else -(n.astype(float) ** 2) / (2 * scale**2)
    p = np.exp(logp - logp.max())
    return n, p / p.sum()


@pytest.mark.parametrize(
    ("mechanism", "scale", "threshold"),
    [
        ("discrete_laplace", 4.0, 10),
        ("discrete_laplace", 2.0, 10),
        ("discrete_gaussian", 4.0, 10),
        ("discrete_gaussian", 3.0, 5),
        ("discrete_laplace", 200.0, 10),  # true counts every third one: ends rounded outwards
    ],
)
def test_the_interval_given_shown_covers_every_true_count_exactly_at_least_95_percent(mechanism, scale, threshold):
    """Exactly, from the noise's pmf (not sampled): for each true count v, the probability that
    a shown cell's interval holds v, given that it is shown, is at least 95% — and for Laplace,
    whose steps are small, at most 97% (equal tails gave 97.5% at v = 0 whatever the scale)."""
    a = half_width(mechanism, scale)
    reach = int(40 * scale) + 40
    n, p = _pmf(mechanism, scale, reach)
    worst, best = 1.0, 0.0
    for v in [0, 1, 3, 6, 9, 10, 11, 14, 20, 35, 60, 3 * a + threshold]:
        z = v + n
        keep = z >= threshold
        low, high = selective_interval(z[keep], threshold, mechanism, scale, a)
        w = p[keep] / p[keep].sum()
        cover = float(w[(low <= v) & (v <= high)].sum())
        worst, best = min(worst, cover), max(best, cover)
    assert worst >= 0.95 - 1e-9, worst
    if mechanism == "discrete_laplace" and scale < 100:
        assert best <= 0.97, best


def test_the_interval_is_the_plain_one_far_from_the_threshold_and_none_under_it():
    z = np.array([3, 9, 10, 11, 20, 200, 5000])
    low, high = selective_interval(z, 10, "discrete_laplace", 4.0, 12.0)
    assert np.isnan(low[:2]).all() and np.isnan(high[:2]).all()  # not shown: no interval
    assert (low[-2:] == z[-2:] - 12).all() and (high[-2:] == z[-2:] + 12).all()
    assert low[2] == 0 and (low[2:] <= z[2:]).all() and (z[2:] <= high[2:]).all()
    assert (np.diff(low[2:]) >= 0).all() and (np.diff(high[2:]) >= 0).all()  # monotone in z
    half = selective_half_width(z, 10, "discrete_laplace", 4.0, 12.0)
    assert np.isnan(half[:2]).all() and (half[2:] >= np.maximum(z[2:] - low[2:], high[2:] - z[2:])).all()


def test_huge_scales_cost_no_more_than_small_ones():
    """A tiny ε (scale ~10⁵) once made the interval a 10⁷-point sum per cell and timed out a
    query; the tails are closed forms now."""
    scale = 100_099.0
    a = half_width("discrete_laplace", scale)
    t = math.exp(-1 / scale)  # P(|N| ≤ a) = 1 − 2·t^(a+1)/(1+t)
    assert a == math.ceil(math.log(0.025 * (1 + t)) / math.log(t)) - 1
    z = np.random.default_rng(0).integers(10, 10**6, 20_000)
    w = selective_half_width(z, 10, "discrete_laplace", scale, a)
    assert np.isfinite(w).all() and (w >= a).all()


def _sum_inside(mechanism: str, scale: float, k: int, a: int) -> float:
    """P(|N₁ + … + N_k| ≤ a), by direct convolution of the pmf (no FFT)."""
    n = np.arange(-int(60 * scale) - 10, int(60 * scale) + 11)
    logp = -np.abs(n) / scale if mechanism == "discrete_laplace" else -(n.astype(float) ** 2) / (2 * scale**2)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    dist = p
    for _ in range(k - 1):
        dist = np.convolve(dist, p)
    centre = (len(dist) - 1) // 2
    return float(dist[centre - a : centre + a + 1].sum())


@pytest.mark.parametrize(
    ("mechanism", "scale"),
    [("discrete_laplace", 0.5), ("discrete_laplace", 4.0), ("discrete_gaussian", 1.3), ("discrete_gaussian", 6.0)],
)
@pytest.mark.parametrize("k", [1, 2, 3, 7, 16])
def test_the_sum_of_k_noises_gets_its_smallest_95_percent_interval(mechanism, scale, k):
    a = sum_half_width(mechanism, scale, k)
    assert _sum_inside(mechanism, scale, k, a) >= 0.95 - 1e-9
    assert a == 0 or _sum_inside(mechanism, scale, k, a - 1) < 0.95


def test_margins_of_few_laplace_cells_are_wider_than_the_normal_approximation():
    # the normal approximation 1.96·σ·√k covered 0.930 of a dense grid's margins (Laplace, ε = 1/4)
    scale = 4.0
    t = math.exp(-1 / scale)
    sigma = math.sqrt(2 * t) / (1 - t)
    for k in (2, 3, 5):
        normal = math.floor(1.96 * sigma * math.sqrt(k))
        assert _sum_inside("discrete_laplace", scale, k, normal) < 0.95
        assert sum_half_width("discrete_laplace", scale, k) > normal


def test_large_sums_use_the_corrected_normal_quantile_close_to_the_exact_one():
    from safestats.privacy import intervals

    exact = intervals.sum_half_width("discrete_laplace", 3.0, 400)
    limit = intervals.FFT_LIMIT
    try:
        intervals.FFT_LIMIT = 10
        intervals.sum_half_width.cache_clear()
        approx = intervals.sum_half_width("discrete_laplace", 3.0, 400)
    finally:
        intervals.FFT_LIMIT = limit
        intervals.sum_half_width.cache_clear()
    assert exact <= approx <= exact + 2
    with pytest.raises(ValueError, match="at least one"):
        intervals.sum_half_width("discrete_laplace", 3.0, 0)
