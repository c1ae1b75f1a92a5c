"""Primary suppression: the threshold rule.

A cell with fewer than ``threshold`` distinct pupils is confidential: every statistic in it is
withheld and marked ``c``. Empty cells are below any threshold, so they are suppressed too
(a zero can be as disclosive as a one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["below_threshold"]


def below_threshold(pupils: pd.Series, threshold: int) -> np.ndarray:
    """Boolean mask of the cells to suppress: fewer than ``threshold`` pupils."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    return (pupils.to_numpy(dtype=np.int64) < threshold)
