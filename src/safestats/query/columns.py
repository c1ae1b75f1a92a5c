"""The names of the columns a Plan asks an engine for beside the aggregates: the contract
between the planner, the engines and the protect step. None of them is ever returned."""

from __future__ import annotations

__all__ = ["CELL_KEY", "PUPILS", "RECORD_KEY_MODULUS", "top_column"]

#: The column of distinct privacy units per cell, used by the protect step and never returned.
PUPILS = "_pupils"

#: The column of summed record keys per cell (cell-key perturbation), never returned.
CELL_KEY = "_ckey"
#: Record keys are integers modulo this prime (2^31 - 1): squares stay within int64.
RECORD_KEY_MODULUS = 2_147_483_647


def top_column(measure: str, rank: int) -> str:
    """The engine's column of the ``rank``-th largest contribution to ``measure`` (1-based);
    rank 0 is the cell's total of the measure."""
    return f"_top{rank}_{measure}"
