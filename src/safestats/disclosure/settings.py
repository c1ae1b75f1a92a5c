"""How a group's results are protected: the settings the protect step reads (pure: the policy
file is parsed in access/policy.py, which re-exports this class)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from safestats.disclosure.rules import RULE_DEFAULTS, SDC_RULES, describe_params, strictest_params

__all__ = ["Disclosure"]


@dataclass(frozen=True)
class Disclosure:
    """How a group's results are protected.

    ``sdc``: exact values where safe. ``protection: suppression`` runs the primary ``rules`` in
    order (threshold; n,k dominance; p%), then secondary suppression and the attacker audit
    across the table's margins and — with ``link_tables`` — every earlier release of the same
    pupils in the disclosure ``domain``; ``protection: cell_key`` perturbs counts consistently from a public
    perturbation table (``ckey_max``, ``ckey_variance``, ``ckey_small``) instead.
    ``dp``: OpenDP noise (``laplace``: pure ε-DP; ``gaussian``: ρ-zCDP), each query spending
    ``per_query`` (ε or ρ) from a ``budget`` per ``period``; noisy counts under ``threshold``
    are suppressed and counts rounded to ``rounding``.
    """

    mode: str = "sdc"
    threshold: int = 10
    noise: str = "laplace"
    per_query: Fraction = Fraction(1, 2)
    budget: Fraction = Fraction(4)
    period: str = "quarter"
    rounding: int = 1
    #: dp: the δ a user may spend per period (partition selection), and the most one query may
    #: (well below 1/n for any census this size: n is the number of pupils)
    delta_budget: Fraction = Fraction(1, 10**6)
    max_delta: Fraction = Fraction(1, 10**9)
    rules: tuple[str, ...] = tuple(SDC_RULES)
    #: every sdc rule's parameters, by name (disclosure/rules.py declares them and their defaults)
    params: tuple[tuple[str, float], ...] = RULE_DEFAULTS
    protection: str = "suppression"
    link_tables: bool = True
    #: The disclosure domain: every sdc release in one domain is treated as seen together
    #: (published statistics are seen by everyone). ``published`` unless the policy declares a
    #: separate domain for work that is never published (checked on its own).
    domain: str = "published"
    ckey_max: int = 4
    ckey_variance: float = 2.0
    ckey_small: int = 2

    @property
    def rule_params(self) -> dict[str, float]:
        """The threshold and every rule parameter, by name (what the rules are applied with)."""
        return {"threshold": self.threshold, **dict(self.params)}

    def with_params(self, **values: float) -> Disclosure:
        """These settings with some rule parameters changed (``with_params(p=5)``)."""
        unknown = set(values) - {name for name, _ in self.params}
        if unknown:
            raise ValueError(f"no rule takes {', '.join(sorted(unknown))}")
        return replace(self, params=tuple((n, values.get(n, v)) for n, v in self.params))

    @property
    def unit(self) -> str:
        return "epsilon" if self.noise == "laplace" else "rho"

    def describe(self) -> dict[str, Any]:
        if self.mode == "sdc":
            if self.protection == "cell_key":
                return {
                    "mode": "sdc",
                    "protection": "cell_key",
                    "max_noise": self.ckey_max,
                    "variance": self.ckey_variance,
                    "small": self.ckey_small,
                    "rounding": self.rounding,
                }
            return {
                "mode": "sdc",
                "protection": "suppression",
                "threshold": self.threshold,
                "rules": list(self.rules),
                **describe_params(self.rule_params),
                "link_tables": self.link_tables,
                "domain": self.domain,
                "rounding": self.rounding,
            }
        return {
            "mode": "dp",
            "threshold": self.threshold,
            "noise": self.noise,
            "unit": self.unit,
            "per_query": str(self.per_query),
            "budget": str(self.budget),
            "period": self.period,
            "delta_budget": str(self.delta_budget),
            "max_delta": str(self.max_delta),
            "rounding": self.rounding,
        }

    @classmethod
    def strictest(cls, rules: list[Disclosure]) -> Disclosure:
        """DP wins over SDC (the first DP group's settings); else the strictest SDC settings."""
        if not rules:
            return cls()
        dp_rules = [r for r in rules if r.mode == "dp"]
        if dp_rules:
            return dp_rules[0]
        if any(r.protection == "suppression" for r in rules):  # suppression wins: exact where safe only
            rules = [r for r in rules if r.protection == "suppression"]
        first = rules[0]
        names = tuple(dict.fromkeys(n for r in rules for n in r.rules))
        return replace(
            first,
            threshold=max(r.threshold for r in rules),
            rounding=max(r.rounding for r in rules),
            rules=names,
            link_tables=any(r.link_tables for r in rules),
            domain="published" if any(r.domain == "published" for r in rules) else first.domain,
            params=strictest_params([dict(r.params) for r in rules]),
        )
