"""Charts of protected results (matplotlib), carrying their marking wherever they go.

- suppressed cells are drawn as gaps, marked with their symbol (``c``) where the bar would be;
- error bars come from the reported accuracy (95% interval half-widths, dp mode);
- the protective marking is printed above and below the chart, and the provenance line in the
  footer, so a saved image carries both; ``save`` also writes the marking into the file's
  metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safestats.marking import colour as marking_colour
from safestats.result import ProtectedResult

__all__ = ["bar", "save"]


def bar(result: ProtectedResult, *, x: str, y: str, hue: str | None = None, title: str = "", ax: Any = None) -> Any:
    """A bar chart of column ``y`` by ``x`` (grouped by ``hue``); returns the figure."""
    import matplotlib.pyplot as plt

    if not isinstance(result, ProtectedResult):
        raise TypeError("plot a protected result (what .run() or .sql() returned)")
    for col in (x, y, *([hue] if hue else [])):
        if col not in result.columns:
            raise ValueError(f"no column {col!r}; columns are {list(result.columns)}")
    fig = ax.figure if ax is not None else plt.figure(figsize=(max(6.0, 0.35 * result[x].nunique() + 3), 4.5))
    ax = ax or fig.add_axes((0.1, 0.22, 0.86, 0.64))
    symbols = result.symbols[y] if y in result.symbols else pd.Series("", index=result.index)
    accuracy = result.accuracy[y] if result.accuracy is not None and y in result.accuracy else None
    groups = [None] if hue is None else list(dict.fromkeys(result[hue].tolist()))
    categories = list(dict.fromkeys(result[x].tolist()))
    width = 0.8 / len(groups)
    top = pd.to_numeric(result[y], errors="coerce").astype(float)
    ceiling = float(np.nanmax(top.to_numpy())) if top.notna().any() else 1.0
    for i, group in enumerate(groups):
        rows = result if group is None else result[result[hue] == group]
        pos = np.array([categories.index(v) for v in rows[x]]) + (i - (len(groups) - 1) / 2) * width
        values = pd.to_numeric(rows[y], errors="coerce").astype(float).to_numpy()
        errors = None
        if accuracy is not None:
            errors = pd.to_numeric(accuracy.loc[rows.index], errors="coerce").astype(float).to_numpy()
        shown = ~np.isnan(values)
        ax.bar(
            pos[shown],
            values[shown],
            width=width * 0.95,
            label=None if group is None else str(group),
            yerr=None if errors is None else np.nan_to_num(errors[shown]),
            capsize=2,
        )
        for p, s in zip(pos[~shown], symbols.loc[rows.index][~shown], strict=True):
            ax.text(p, ceiling * 0.02, s or "x", ha="center", va="bottom", fontsize=8, color="#505a5f")
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels([str(c) for c in categories], rotation=90 if len(categories) > 8 else 0, fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if hue is not None:
        ax.legend(title=hue, fontsize=8)
    if title:
        ax.set_title(title)
    _mark(fig, result)
    return fig


def _mark(fig: Any, result: ProtectedResult) -> None:
    p = result.provenance
    colour = marking_colour(p.label)
    for ypos in (0.975, 0.015):
        fig.text(
            0.5,
            ypos,
            p.marking,
            ha="center",
            va="center",
            color="white",
            fontsize=10,
            fontweight="bold",
            bbox={"facecolor": colour, "edgecolor": colour, "boxstyle": "square,pad=0.3"},
        )
    parts = p.footer().split(" · ")
    half = (len(parts) + 1) // 2
    fig.text(
        0.5,
        0.065,
        " · ".join(parts[:half]) + "\n" + " · ".join(parts[half:]),
        ha="center",
        va="center",
        fontsize=5.5,
        color="#505a5f",
    )
    fig._safestats_marking = p.marking  # noqa: SLF001 - read by save()


def save(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Save a chart made by this module; the marking is in the image and in its metadata."""
    marking = getattr(fig, "_safestats_marking", None)
    if marking is None:
        raise ValueError("this figure has no protective marking; make it with safestats.plots")
    path = Path(path)
    metadata = {"Title": f"[{marking}] safestats chart", "Description": marking}
    if path.suffix.lower() == ".pdf":
        metadata = {"Title": f"[{marking}] safestats chart", "Subject": marking}
    fig.savefig(path, metadata=metadata, **kwargs)
    return path
