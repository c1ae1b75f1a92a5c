"""What ``s.budget()`` and ``q.preview()`` return: the service's answer, as numbers and as text.

Both are dicts of the service's JSON answer (exact amounts as strings, so nothing is lost on
the wire), with the amounts also as :class:`fractions.Fraction` and ``float`` attributes, and
a short text for a notebook.
"""

from __future__ import annotations

import html
from fractions import Fraction
from typing import Any

__all__ = ["Budget", "Preview"]

_SYMBOL = {"epsilon": "ε", "rho": "ρ"}


def _frac(value: Any) -> Fraction | None:
    return None if value is None else Fraction(str(value))


class Budget(dict[str, Any]):
    """Your privacy budget this period. ``b.left`` is a Fraction, ``b.left_float`` a float."""

    @property
    def total(self) -> Fraction | None:
        return _frac(self.get("total"))

    @property
    def spent(self) -> Fraction | None:
        return _frac(self.get("spent"))

    @property
    def left(self) -> Fraction | None:
        return _frac(self.get("left"))

    @property
    def delta_left(self) -> Fraction | None:
        return _frac(self.get("delta_left"))

    @property
    def left_float(self) -> float | None:
        left = self.left
        return None if left is None else float(left)

    def __str__(self) -> str:
        if self.get("mode") != "dp":
            return str(self.get("message", "no privacy budget"))
        u = _SYMBOL.get(str(self.get("unit")), str(self.get("unit")))
        text = (
            f"{u} budget {self['period']}: {_show(self.spent)} of {_show(self.total)} spent, "
            f"{_show(self.left)} left; δ {_show(_frac(self.get('delta_spent')))} of "
            f"{_show(_frac(self.get('delta_total')))} spent"
        )
        conv = self.get("epsilon_at_delta")
        if conv:
            text += (
                f" (ρ-zCDP implies (ε, δ)-DP at δ={conv['delta']}: ε {conv['spent']:.3g} spent of {conv['total']:.3g})"
            )
        return text

    def _repr_html_(self) -> str:
        return f"<div class='safestats-budget'>{html.escape(str(self))}</div>"


class Preview(dict[str, Any]):
    """What a query would cost and how accurate it would be; nothing was read or spent."""

    @property
    def cost(self) -> Fraction:
        return Fraction(str(self.get("cost", "0")))

    @property
    def left_after(self) -> Fraction | None:
        return _frac(self.get("left_after"))

    def half_width(self, statistic: str) -> float | None:
        """The 95% interval half-width of ``statistic`` in each cell (None: see the entry)."""
        value = self["statistics"][statistic].get("half_width95")
        return None if value is None else float(value)

    def lines(self) -> list[str]:
        out = [f"{self['cells']:,} cells by {', '.join(self['keys']) or '(no keys)'}"]
        if self.get("mode") != "dp":
            return [*out, str(self.get("message", ""))]
        u = _SYMBOL.get(str(self.get("unit")), str(self.get("unit")))
        if self.get("cached"):
            out.append(f"answered from your earlier identical release: costs {u} 0")
        else:
            extra = f" and δ {self['delta']}" if self.get("delta") != "0" else ""
            out.append(f"costs {u} {_show(self.cost)}{extra}")
        out.append(
            f"budget left {_show(_frac(self['left']))} → {_show(self.left_after)}"
            + ("  (would be refused: not enough budget)" if self.get("would_refuse") else "")
        )
        for name, st in self["statistics"].items():
            if st.get("half_width95") is not None:
                line = f"{name}: ± {float(st['half_width95']):.3g} (95%)"
                if st.get("at_threshold95"):
                    lo, hi = st["at_threshold95"]
                    line += f"; near the threshold wider and not centred, e.g. {self['threshold']} ({lo:.0f}–{hi:.0f})"
                out.append(line)
            elif "rank_accuracy95" in st:
                out.append(f"{name}: within {float(st['rank_accuracy95']):.3g} rows of rank (95%)")
            elif "half_width95_at_n" in st:
                at = ", ".join(f"n={n}: ± {float(v):.3g}" for n, v in st["half_width95_at_n"].items())
                out.append(f"{name}: ± depends on the cell's rows ({at})")
        out.append(f"noisy counts under {self['threshold']} will be shown as c")
        return out

    def __str__(self) -> str:
        return "\n".join(["Preview (nothing read from the data, nothing spent)", *self.lines()])

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(x)}</li>" for x in self.lines())
        return f"<div class='safestats-preview'><b>Preview</b> (nothing read, nothing spent)<ul>{items}</ul></div>"


def _show(x: Fraction | None) -> str:
    if x is None:
        return "?"
    if x.denominator == 1:
        return str(x.numerator)
    return f"{x} (≈{float(x):.4g})" if x.denominator > 1000 else str(x)
