"""Primary disclosure rules: small pure functions over per-cell statistics, run in a declared order.

Each rule takes the statistics the engine computed for every cell (:class:`CellStats`) and its
parameters, and returns a boolean mask of the cells it finds confidential. The policy lists the
rules a group's ``sdc`` tables pass through (``rules: [threshold, nk_dominance, p_percent]``);
:func:`apply_rules` runs them in that order and says which rule flagged each cell (the output
checking record carries the reasons).

- ``threshold``: fewer than ``threshold`` distinct pupils in the cell (a zero is suppressed
  too: it can be as disclosive as a one).
- ``nk_dominance``: the largest ``n`` contributors hold at least ``k`` % of the cell's total.
- ``p_percent``: the rest of the cell (total − the two largest contributors) is less than
  ``p`` % of the largest, so the second largest could estimate the largest within ``p`` %.

Dominance rules apply to magnitude statistics (sums and means of a measure); the largest
contributions per cell come from the engine (``_top1_<measure>``, ``_top2_<measure>`` …), never
from released values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from safestats.query.columns import top_column

__all__ = [
    "ACRO_NAMES",
    "RULES",
    "SDC_RULES",
    "CellStats",
    "SdcRule",
    "apply_rules",
    "nk_dominance",
    "p_percent",
    "quantile_ranks",
    "threshold",
    "top_column",
]


@dataclass(frozen=True)
class CellStats:
    """What the rules may look at, one array entry per cell."""

    pupils: np.ndarray  # distinct pupils per cell
    totals: Mapping[str, np.ndarray] = field(default_factory=dict)  # measure -> the cell's sum
    tops: Mapping[str, np.ndarray] = field(default_factory=dict)  # measure -> (cells, n) largest, descending

    def __len__(self) -> int:
        return len(self.pupils)


def threshold(stats: CellStats, *, minimum: int) -> np.ndarray:
    """Cells with fewer than ``minimum`` distinct pupils."""
    if minimum < 1:
        raise ValueError("the threshold must be at least 1")
    return np.asarray(stats.pupils, dtype=np.int64) < minimum


def nk_dominance(total: np.ndarray, top: np.ndarray, *, n: int, k: float) -> np.ndarray:
    """Cells whose ``n`` largest contributions are at least ``k`` % of the total (total > 0)."""
    if not 1 <= n <= top.shape[1] or not 0 < k <= 100:
        raise ValueError(f"n,k dominance needs 1 <= n <= {top.shape[1]} and 0 < k <= 100")
    total = np.asarray(total, dtype=float)
    largest = top[:, :n].sum(axis=1)
    return np.asarray((total > 0) & (largest * 100 >= k * total), dtype=bool)


def p_percent(total: np.ndarray, top: np.ndarray, *, p: float) -> np.ndarray:
    """Cells where total − x1 − x2 < p % of x1: the second largest contributor could estimate
    the largest to within ``p`` %."""
    if top.shape[1] < 2 or not 0 < p <= 100:
        raise ValueError("the p% rule needs the two largest contributions and 0 < p <= 100")
    total = np.asarray(total, dtype=float)
    x1, x2 = top[:, 0], top[:, 1]
    return np.asarray((x1 > 0) & ((total - x1 - x2) * 100 < p * x1), dtype=bool)


def quantile_ranks(pupils: np.ndarray, q: float, *, minimum: int) -> np.ndarray:
    """Cells where the ``q`` quantile would not have ``minimum`` values on each side of it.

    The released quantile interpolates the values at ranks ``floor(q·(n−1))`` and
    ``ceil(q·(n−1))`` (0-based) of the cell's ``n`` values; it is withheld unless at least
    ``minimum`` ranks lie below the lower one and at least ``minimum`` above the upper one. So
    no minimum or maximum (or a value within ``minimum`` of them) is ever released, and the
    quantile of a small cell never is. ``n`` is the cell's distinct pupils.
    """
    n = np.asarray(pupils, dtype=np.int64)
    r = q * np.maximum(n - 1, 0)
    below = np.floor(r + 1e-12).astype(np.int64)
    above = n - 1 - np.ceil(r - 1e-12).astype(np.int64)
    return (n <= 0) | (below < minimum) | (above < minimum)


Rule = Callable[[CellStats, Mapping[str, float]], dict[str, np.ndarray]]


def _threshold(stats: CellStats, params: Mapping[str, float]) -> dict[str, np.ndarray]:
    mask = threshold(stats, minimum=int(params["threshold"]))
    return {measure: mask for measure in ("*", *stats.totals)}


def _nk(stats: CellStats, params: Mapping[str, float]) -> dict[str, np.ndarray]:
    return {
        m: nk_dominance(stats.totals[m], stats.tops[m], n=int(params["nk_n"]), k=float(params["nk_k"]))
        for m in stats.totals
    }


def _p(stats: CellStats, params: Mapping[str, float]) -> dict[str, np.ndarray]:
    return {m: p_percent(stats.totals[m], stats.tops[m], p=float(params["p"])) for m in stats.totals}


@dataclass(frozen=True)
class SdcRule:
    """A primary disclosure rule: its name in a policy's ``rules:`` list, how the output
    checker's record (ACRO's layout) names its finding, and the function that applies it."""

    name: str
    acro: str
    apply: Rule
    description: str


#: Every primary rule, in one table. Adding a rule is one entry here (and, if it takes
#: parameters, their fields in ``access/policy.py``'s Disclosure: parsing and the strictest value).
SDC_RULES: dict[str, SdcRule] = {
    r.name: r
    for r in (
        SdcRule("threshold", "threshold", _threshold, "fewer than `threshold` distinct pupils"),
        SdcRule("nk_dominance", "nk-rule", _nk, "the `n` largest contributions are at least `k` % of the total"),
        SdcRule("p_percent", "p-ratio", _p, "the second largest could estimate the largest to within `p` %"),
    )
}
#: The rules a policy may name, with a mask per measure ("*" for every statistic of the cell:
#: the threshold protects counts too).
RULES: dict[str, Rule] = {name: r.apply for name, r in SDC_RULES.items()}
#: How the output-checking record names each finding: the rules, and the protect step's own checks.
ACRO_NAMES = {name: r.acro for name, r in SDC_RULES.items()} | {
    "quantile": "quantile",
    "secondary": "secondary",
    "linked": "linked",
}


def apply_rules(
    stats: CellStats, order: Sequence[str], params: Mapping[str, float]
) -> dict[str, dict[str, np.ndarray]]:
    """Run the rules in ``order``; returns rule -> measure ("*" for all) -> mask of flagged cells."""
    unknown = [r for r in order if r not in RULES]
    if unknown:
        raise ValueError(f"unknown disclosure rules {unknown}; rules are {', '.join(RULES)}")
    return {name: RULES[name](stats, params) for name in order}
