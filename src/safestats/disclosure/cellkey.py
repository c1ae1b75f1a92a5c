"""Cell-key perturbation: consistent noise on counts (the ABS / ONS method).

Every pupil has a fixed record key, a keyed hash of its id (:func:`safestats.engines.base.record_key`);
a cell's key is the sum of its records' keys modulo M, scaled to [0, 1). The published count is
read from a public *perturbation table*: for the exact count ``v``, the row of ``v`` gives a
distribution over published values, and the cell key picks one by its cumulative probability.
So the noise depends only on which records are in the cell: asking again, or asking another
table that contains the same cell, gives the same value, and averaging repeats wears nothing
away.

The perturbation table is built from three public parameters:

- ``max_noise`` D: the published value is within D of the exact count;
- ``variance`` V: the spread of the noise (before the constraints below);
- ``small`` s: counts 1..s are never published (a small count becomes 0 or more than s), and
  a zero stays zero (an empty cell has no records, so no key).

Each row is unbiased (its mean is exactly the exact count): weights ∝ exp(−(t−v)²/2V) over the
allowed targets, tilted by exp(λt) with λ solved so the mean is v — the maximum-entropy
distribution with that mean on that support.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from safestats.query.columns import RECORD_KEY_MODULUS

__all__ = ["PTable", "perturb", "ptable", "variance_of"]


@dataclass(frozen=True)
class PTable:
    """Rows 0..last of (targets, cumulative probabilities); counts past ``last`` use its shape."""

    max_noise: int
    variance: float
    small: int
    rows: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def last(self) -> int:
        return len(self.rows) - 1

    def row(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        if v <= self.last:
            return self.rows[v]
        targets, cdf = self.rows[self.last]
        return targets + (v - self.last), cdf

    def frame(self) -> pd.DataFrame:
        """The table in the usual long layout: i (exact), j (published), p, v (noise), p_int_ub."""
        out = []
        for i in range(self.last + 1):
            targets, cdf = self.rows[i]
            prob = np.diff(np.concatenate([[0.0], cdf]))
            out += [
                {"i": i, "j": int(t), "p": float(p), "v": int(t) - i, "p_int_ub": float(c)}
                for t, p, c in zip(targets, prob, cdf, strict=True)
            ]
        return pd.DataFrame(out)


def _row(v: int, d: int, variance: float, small: int) -> tuple[np.ndarray, np.ndarray]:
    if v == 0:
        return np.array([0]), np.array([1.0])
    targets = np.array([t for t in range(v - d, v + d + 1) if t == 0 or t > small])
    base = -((targets - v) ** 2) / (2 * variance)

    def mean(lam: float) -> float:
        w = np.exp(base + lam * (targets - v) - np.max(base + lam * (targets - v)))
        return float((w * targets).sum() / w.sum())

    low, high = -50.0, 50.0
    for _ in range(200):  # bisection: the mean is increasing in lambda
        mid = (low + high) / 2
        if mean(mid) < v:
            low = mid
        else:
            high = mid
    lam = (low + high) / 2
    logits = base + lam * (targets - v)
    w = np.exp(logits - logits.max())
    p = w / w.sum()
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    return targets, cdf


@lru_cache(maxsize=16)
def ptable(max_noise: int = 4, variance: float = 2.0, small: int = 2) -> PTable:
    """The perturbation table for the parameters (see the module docstring)."""
    if not 0 <= small < max_noise:
        raise ValueError("small must be below max_noise (else a count of 1 has nowhere unbiased to go)")
    last = max_noise + small + 1  # from here on every row has the full symmetric support
    rows = tuple(_row(v, max_noise, variance, small) for v in range(last + 1))
    return PTable(max_noise=max_noise, variance=variance, small=small, rows=rows)


def perturb(counts: np.ndarray, cell_keys: np.ndarray, table: PTable) -> np.ndarray:
    """The published counts: each exact count moved by the p-table row its cell key selects."""
    counts = np.asarray(counts, dtype=np.int64)
    keys = np.asarray(cell_keys, dtype=np.int64) % RECORD_KEY_MODULUS / RECORD_KEY_MODULUS
    out = np.empty_like(counts)
    for i, (v, u) in enumerate(zip(counts.tolist(), keys.tolist(), strict=True)):
        targets, cdf = table.row(int(v))
        out[i] = int(targets[min(int(np.searchsorted(cdf, u, side="right")), len(targets) - 1)])
    return out


def variance_of(table: PTable, v: int) -> float:
    """The noise variance of the row for ``v`` (shown with releases as their accuracy)."""
    targets, cdf = table.row(v)
    p = np.diff(np.concatenate([[0.0], cdf]))
    return float((p * (targets - v) ** 2).sum())
