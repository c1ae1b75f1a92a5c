"""The judge of the adversarial suite: the raw census (read here, never through safestats) and
what an attacker recovers from released tables.

An attack *succeeds* when the numbers safestats released determine, exactly, the value of a
group of 1..threshold−1 pupils (a count, or a sum of a measure) that no released cell shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

THRESHOLD = 10
SPRING, SUMMER = "2017-spring", "2017-summer"


class Census:
    """The raw sample census, for judging (tests only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._tables: dict[str, pd.DataFrame] = {}

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            self._tables[name] = pd.read_parquet(self.folder / f"{name}.parquet")
        return self._tables[name]

    def rows(self, table: str = "PupilOnRoll", **where: Any) -> pd.DataFrame:
        df = self.table(table)
        for column, value in where.items():
            if isinstance(value, Not):
                df = df[df[column] != value.value]
            elif isinstance(value, list | tuple | set):
                df = df[df[column].isin(list(value))]
            else:
                df = df[df[column] == value]
        return df

    def pupils(self, table: str = "PupilOnRoll", **where: Any) -> int:
        return int(self.rows(table, **where)["pupil_id"].nunique())

    def count(self, table: str = "PupilOnRoll", **where: Any) -> int:
        return len(self.rows(table, **where))

    def total(self, measure: str, table: str = "PupilOnRoll", **where: Any) -> int:
        return int(self.rows(table, **where)[measure].sum())


class Not:
    """A ``!=`` condition for :meth:`Census.rows`."""

    def __init__(self, value: Any) -> None:
        self.value = value


def value(result: pd.DataFrame, column: str, **cell: Any) -> float | None:
    """The released value of one cell (None if withheld)."""
    df = pd.DataFrame(result)
    for k, v in cell.items():
        df = df[df[k].astype(object) == v]
    assert len(df) == 1, f"no single cell {cell} in the result"
    x = df[column].iloc[0]
    return None if pd.isna(x) else float(x)


def released(result: pd.DataFrame | None, column: str, **cell: Any) -> float | None:
    """Like :func:`value`, with a refused query (None) counting as withheld."""
    return None if result is None else value(result, column, **cell)


def recovered(parts: Iterable[tuple[float, float | None]]) -> float | None:
    """The attacker's linear combination sum(sign * value), or None if any value is withheld."""
    total = 0.0
    for sign, v in parts:
        if v is None:
            return None
        total += sign * v
    return total


def assert_not_disclosed(found: float | None, truth: float, *, pupils: int, what: str) -> None:
    """Fail if the attacker's combination equals a small group's true value."""
    assert 1 <= pupils < THRESHOLD, f"the attack targets a small group; {what} has {pupils} pupils"
    assert found is None or abs(found - truth) > 1e-9, (
        f"{what}: {pupils} pupils, value {truth} recovered exactly by differencing released tables"
    )


def lp_intervals(
    cells: list[tuple[np.ndarray, float]], targets: Mapping[str, np.ndarray], n: int
) -> dict[str, tuple[float, float]]:
    """The range each target (a 0/1 mask over ``n`` atoms) can take given published cells
    (mask, value) and non-negative atoms: the attacker's LP (HiGHS), fixing nothing else."""
    from scipy.optimize import linprog

    a_eq = np.array([m.astype(float) for m, _ in cells]) if cells else None
    b_eq = np.array([v for _, v in cells]) if cells else None
    out = {}
    for name, mask in targets.items():
        c = mask.astype(float)
        lo = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        hi = linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        out[name] = (float(lo.fun) if lo.status == 0 else 0.0, float(-hi.fun) if hi.status == 0 else float("inf"))
    return out
