"""Every aggregate kind, in one table: what it takes, what it is called, how it is released.

The query model validates against this table, and the planner, the protect step and the
engines read the properties here instead of testing kind names. A kind not in the table cannot
be built (``Aggregate`` refuses it), so no code path can meet an unknown kind.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "AggregateKind", "kind_of"]


@dataclass(frozen=True)
class AggregateKind:
    name: str
    measure: bool  # takes a measure column (else no column)
    q: bool  # takes a quantile level q in (0, 1)
    whole: bool  # released as whole numbers (Int64), else Float64
    counts: str | None  # "rows" or "pupils" for the two counts, None otherwise
    additive: bool  # a sum over rows: margins add up, and sdc can link it as a count or a sum
    description: str
    #: what the engine computes per cell, of the measure clipped to its bounds (engines/compile.py
    #: and engines/memory.py each have one function per reduction): rows, pupils, sum, mean, quantile
    reduction: str = ""
    #: dp: the noisy measurements it is post-processed from (rows, pupils, sum, histogram) and
    #: how (disclosure/dp.py has one function per post-processing: count, sum, mean, quantile)
    dp_inputs: tuple[str, ...] = ()
    dp_post: str = ""
    #: sdc: the additive quantities it publishes, as far as differencing goes (rows, sum), and
    #: whether the quantile rule (enough values either side) applies
    links: tuple[str, ...] = ()
    rank_rule: bool = False

    def default_name(self, column: str | None, q: float | None) -> str:
        if self.name == "count":
            return "count"
        if self.name == "count_pupils":
            return "pupils"
        if self.q:
            assert q is not None
            return f"p{round(q * 100):02d}_{column}"
        return f"{self.name}_{column}"


KINDS: dict[str, AggregateKind] = {
    k.name: k
    for k in (
        AggregateKind(
            "count",
            False,
            False,
            True,
            "rows",
            True,
            "rows in the cell",
            reduction="rows",
            dp_inputs=("rows",),
            dp_post="count",
            links=("rows",),
        ),
        AggregateKind(
            "count_pupils",
            False,
            False,
            True,
            "pupils",
            False,
            "distinct pupils in the cell",
            reduction="pupils",
            dp_inputs=("pupils",),
            dp_post="count",
            links=("rows",),
        ),
        AggregateKind(
            "sum",
            True,
            False,
            True,
            None,
            True,
            "sum of a measure (clipped to its bounds)",
            reduction="sum",
            dp_inputs=("sum",),
            dp_post="sum",
            links=("sum",),
        ),
        AggregateKind(
            "mean",
            True,
            False,
            False,
            None,
            False,
            "mean of a measure (a sum over a count)",
            reduction="mean",
            dp_inputs=("sum", "rows"),
            dp_post="mean",
            links=("rows", "sum"),
        ),
        AggregateKind(
            "quantile",
            True,
            True,
            False,
            None,
            False,
            "the q-quantile of a measure",
            reduction="quantile",
            dp_inputs=("histogram",),
            dp_post="quantile",
            links=("rows", "sum"),
            rank_rule=True,
        ),
    )
}


def kind_of(name: str) -> AggregateKind:
    """The aggregate kind called ``name`` (KeyError for any other: the model refuses those)."""
    return KINDS[name]
