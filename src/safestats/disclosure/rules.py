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
    "RULE_DEFAULTS",
    "RULES",
    "SDC_RULES",
    "CellStats",
    "Param",
    "SdcRule",
    "apply_rules",
    "describe_params",
    "nk_dominance",
    "p_percent",
    "parse_rule_params",
    "quantile_ranks",
    "strictest_params",
    "threshold",
    "top_column",
    "tops_needed",
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
class Param:
    """One number a rule takes from the policy: its name in a group's rule parameters, its
    default, and how groups' values combine into the strictest (``max`` or ``min``)."""

    name: str
    default: float
    strictest: Callable[[Sequence[float]], float]
    whole: bool = False


@dataclass(frozen=True)
class SdcRule:
    """A primary disclosure rule: its name in a policy's ``rules:`` list, how the output
    checker's record (ACRO's layout) names its finding, the function that applies it, and its
    parameters: the policy key that gives them (``nk: [2, 90]``; ``p: 10``; one parameter is a
    number, several a list), what a valid value is, and how many of a cell's largest
    contributors the engine must compute for it."""

    name: str
    acro: str
    apply: Rule
    description: str
    key: str | None = None
    params: tuple[Param, ...] = ()
    valid: str = ""  # what a valid value is, for the policy's error message
    label: str = ""  # how the message names the key, if not by the key alone
    check: Callable[[tuple[float, ...]], bool] = lambda values: True
    tops: Callable[[Mapping[str, float]], int] = lambda params: 0


#: Every primary rule, in one table. Adding a rule is one entry here: its function, ACRO name,
#: parameters (parsed from the policy, combined into the strictest, recorded in the release's
#: disclosure description) and the largest contributors it needs.
SDC_RULES: dict[str, SdcRule] = {
    r.name: r
    for r in (
        SdcRule("threshold", "threshold", _threshold, "fewer than `threshold` distinct pupils"),
        SdcRule(
            "nk_dominance",
            "nk-rule",
            _nk,
            "the `n` largest contributions are at least `k` % of the total",
            key="nk",
            params=(Param("nk_n", 2, max, whole=True), Param("nk_k", 90.0, min)),
            valid="[n, k] with n a whole number from 1 to 5 and 0 < k <= 100",
            check=lambda v: 1 <= v[0] <= 5 and 0 < v[1] <= 100,
            tops=lambda params: int(params["nk_n"]),
        ),
        SdcRule(
            "p_percent",
            "p-ratio",
            _p,
            "the second largest could estimate the largest to within `p` %",
            key="p",
            params=(Param("p", 10.0, max),),
            valid="a number with 0 < p <= 100",
            label="p (the p% rule)",
            check=lambda v: 0 < v[0] <= 100,
            tops=lambda params: 2,
        ),
    )
}
#: Every rule parameter at its default, as a group without its own settings has them.
RULE_DEFAULTS: tuple[tuple[str, float], ...] = tuple((p.name, p.default) for r in SDC_RULES.values() for p in r.params)


def parse_rule_params(raw: Mapping[str, object]) -> tuple[tuple[str, float], ...]:
    """A policy group's rule parameters from its settings (each rule's ``key``; defaults where
    absent). Raises ValueError with a one-line message naming the key and what it takes."""
    out: list[tuple[str, float]] = []
    for r in SDC_RULES.values():
        if r.key is None:
            continue
        given = raw.get(r.key, [p.default for p in r.params] if len(r.params) > 1 else r.params[0].default)
        values = given if isinstance(given, list) else [given]
        ok = len(values) == len(r.params) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and (not p.whole or isinstance(v, int))
            for v, p in zip(values, r.params, strict=False)
        )
        if (len(r.params) > 1) != isinstance(given, list) or not ok or not r.check(tuple(values)):  # type: ignore[arg-type]
            raise ValueError(f"{r.label or r.key} must be {r.valid}, got {given!r}")
        out += [(p.name, int(v) if p.whole else float(v)) for p, v in zip(r.params, values, strict=True)]
    return tuple(out)


def strictest_params(groups: Sequence[Mapping[str, float]]) -> tuple[tuple[str, float], ...]:
    """Each parameter at its strictest over several groups' (a user in several groups)."""
    return tuple((p.name, p.strictest([g[p.name] for g in groups])) for r in SDC_RULES.values() for p in r.params)


def describe_params(params: Mapping[str, float]) -> dict[str, object]:
    """The parameters as the policy gives them (``{"nk": [2, 90.0], "p": 10.0}``), for a
    release's recorded disclosure description."""
    out: dict[str, object] = {}
    for r in SDC_RULES.values():
        if r.key is not None:
            values = [params[p.name] for p in r.params]
            out[r.key] = values if len(values) > 1 else values[0]
    return out


def tops_needed(rules: Sequence[str], params: Mapping[str, float]) -> int:
    """How many of each cell's largest contributors the ``rules`` need (0: none)."""
    return max((SDC_RULES[r].tops(params) for r in rules if r in SDC_RULES), default=0)


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
