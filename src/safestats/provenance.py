"""Where a released result came from: its marking, audit record, query, disclosure and dp
intervals, and the one-line footer that says so (shown under every result, chart and export)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from safestats.marking import caveat, marking_text

__all__ = ["Provenance", "show_amount"]


@dataclass(frozen=True)
class Provenance:
    label: str
    impact_level: str
    audit_id: int
    query: Mapping[str, Any]
    query_hash: str
    dataset: str
    snapshot_id: str
    user: str
    time_utc: str
    disclosure: Mapping[str, Any]
    cells: int
    suppressed: int
    symbols: Mapping[str, Mapping[int, str]] = field(default_factory=dict)  # column -> row -> symbol
    sql: str = ""
    privacy: Mapping[str, Any] | None = None  # dp: mechanism, parameters, spend, budget left
    accuracy: Mapping[str, list[float | None]] | None = None  # dp: 95% half-width per cell
    #: dp: the ends of each cell's 95% interval ({"lower": [...], "upper": [...]} per column)
    interval: Mapping[str, Mapping[str, list[float | None]]] | None = None
    cached_from: int | None = None  # audit record of the first release of the same query
    reasons: Mapping[str, Mapping[int, str]] = field(default_factory=dict)  # sdc: column -> row -> why withheld
    handling: str = ""  # the policy's handling caveat for the label (older releases: marking.py's)
    export: Mapping[str, Any] | None = None  # how a protected file of it is written (the policy's exports:)
    derived: str = ""  # how this frame was made from the release (pivot, assign, sum_over), if it was

    @property
    def marking(self) -> str:
        return marking_text(self.label, self.impact_level)

    @property
    def needs_protection(self) -> bool:
        """Whether a file of this result is written as a protected archive (its marking is above
        the lowest, as the service said; a result from before it said: anything not OFFICIAL)."""
        return bool((self.export or {}).get("required", self.label != "OFFICIAL"))

    @property
    def caveat(self) -> str:
        """How to handle this result: printed under the marking wherever the result goes."""
        return self.handling or caveat(self.label)

    def footer(self) -> str:
        d = self.disclosure
        if d.get("mode") == "dp" and self.privacy:
            p = self.privacy
            mech = ", ".join(sorted({m["mechanism"].replace("_", " ") for m in p.get("measurements", [])}))
            unit = "ε" if p.get("unit") == "epsilon" else "ρ"
            spent = f"0 (cached release of record {self.cached_from})" if self.cached_from else p.get("spent")
            if p.get("delta"):
                mech += f", partition selection δ={float(Fraction(p['delta'])):.0e}"
            rule = (
                f"dp ({mech}, ≤{p.get('max_rows_per_pupil')} rows per pupil), {unit} spent {show_amount(spent)}, "
                f"{show_amount(p.get('left'))} of {show_amount(p.get('budget'))} left in {p.get('period')}; "
                f"noisy counts under {d.get('threshold')} shown as c; ± is a 95% interval"
            )
            if self.interval:
                rule += " (a–b for a count near the threshold: its interval given that it is shown)"
        elif self.reasons or d.get("protection") == "suppression":
            rule = f"{d.get('mode', '')}, withheld (c): " + self.withheld_by_reason()
            if (d.get("rounding") or 1) > 1:
                rule += f", counts rounded to base {d['rounding']}"
        else:
            rule = f"{d.get('mode', '')}, cells under {d.get('threshold')} pupils suppressed (c)"
            if (d.get("rounding") or 1) > 1:
                rule += f", counts rounded to base {d['rounding']}"
        derived = f" · derived: {self.derived}" if self.derived else ""
        return (
            f"safestats · {self.dataset} snapshot {self.snapshot_id[:12]} · audit record "
            f"{self.audit_id} · query {self.query_hash[:12]} · {rule} · {self.suppressed} of "
            f"{self.cells} cells suppressed · {self.user} · {self.time_utc[:19]}Z{derived}"
        )

    def withheld_by_reason(self) -> str:
        """The withheld cells counted by reason, e.g. '3 under 10 pupils, 2 secondary'."""
        words = {
            "threshold": f"under {self.disclosure.get('threshold')} pupils",
            "nk_dominance": "dominance (n,k)",
            "p_percent": "dominance (p%)",
            "quantile": "too few values either side of a quantile",
            "secondary": "secondary (protect cells of this table)",
            "linked": "linked (protect earlier tables or groups they imply)",
            "derived": "derived from a withheld cell",
        }
        counts: dict[str, int] = {}
        for column in self.reasons.values():
            for reason in column.values():
                counts[reason] = counts.get(reason, 0) + 1
        if not counts:
            return "none"
        order = list(words)
        return ", ".join(
            f"{counts[r]} {words.get(r, r)}"
            for r in sorted(counts, key=lambda r: (order.index(r) if r in order else len(order), r))
        )


def show_amount(text: Any) -> str:
    """An exact amount for people: '1/2' as 0.5, '1/3' as 1/3 (≈0.333)."""
    try:
        f = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return str(text)
    d = f.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:
        return f"{float(f):g}" if f.denominator != 1 else str(f.numerator)
    return f"{f} (≈{float(f):.3g})"
