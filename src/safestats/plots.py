"""Charts of protected results (matplotlib), carrying their marking wherever they go.

- suppressed cells are drawn as gaps, marked with their symbol (``c``) where the bar would be;
- error bars are the reported 95% intervals (dp mode; not centred on a count near the threshold);
- the protective marking is printed above and below the chart, and the provenance line and the
  handling caveat in the footer, so a saved image carries them; ``save`` also writes the marking into the file's
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


#: more categories than this are drawn as horizontal bars (labels stay readable)
HORIZONTAL_FROM = 25
FOOTER_PT = 8.0


def _wrap(text: str, width_in: float, points: float) -> list[str]:
    """``text`` in lines that fit ``width_in`` inches at ``points`` (an average glyph is ~0.55 em)."""
    import textwrap

    per_line = max(20, int(width_in * 72 / (0.55 * points)))
    return textwrap.wrap(text, per_line) or [""]


def bar(result: ProtectedResult, *, x: str, y: str, hue: str | None = None, title: str = "", ax: Any = None) -> Any:
    """A bar chart of column ``y`` by ``x`` (grouped by ``hue``); returns the figure.

    Up to :data:`HORIZONTAL_FROM` categories stand as vertical bars, more lie as horizontal ones
    (a chart of 152 LAs is tall, not 56 inches wide). The marking is above and below, the
    provenance and the handling caveat in a footer of at least 8 pt that the figure makes room
    for; withheld cells are marked with their symbol inside the axes."""
    import matplotlib.pyplot as plt

    if not isinstance(result, ProtectedResult):
        raise TypeError("plot a protected result (what .run() or .sql() returned)")
    for col in (x, y, *([hue] if hue else [])):
        if col not in result.columns:
            raise ValueError(f"no column {col!r}; columns are {list(result.columns)}")
    groups = [None] if hue is None else list(dict.fromkeys(result[hue].tolist()))
    categories = list(dict.fromkeys(result[x].tolist()))
    horizontal = len(categories) >= HORIZONTAL_FROM
    labels = [str(c) for c in categories]
    p = result.provenance
    if ax is None:
        if horizontal:
            width_in = 9.0
            height_in = min(60.0, max(5.0, 0.2 * len(categories) * max(1, len(groups) * 0.6) + 2.5))
        else:
            width_in, height_in = min(14.0, max(6.0, 0.45 * len(categories) * max(1, len(groups) * 0.5) + 3)), 5.0
        footer = _footer_lines(p, width_in)
        bottom_in = 0.45 + 0.16 * len(footer) + (0.0 if horizontal else 0.25 + 0.07 * max(map(len, labels)))
        height_in += bottom_in
        fig = plt.figure(figsize=(width_in, height_in))
        left_in = 0.3 + 0.075 * max(map(len, labels)) if horizontal else 0.9
        top_in = 0.55 + (0.3 if title else 0.0)
        ax = fig.add_axes(
            (
                left_in / width_in,
                bottom_in / height_in + (0.65 / height_in if horizontal else 0.0),
                1 - (left_in + 0.35) / width_in,
                1 - (bottom_in + top_in + (0.65 if horizontal else 0.0)) / height_in,
            )
        )
    else:
        fig = ax.figure
    symbols = result.symbols[y] if y in result.symbols else pd.Series("", index=result.index)
    accuracy = result.accuracy[y] if result.accuracy is not None and y in result.accuracy else None
    ends = result.interval(y) if accuracy is not None else None  # error bars: the interval's two ends
    width = 0.8 / len(groups)
    top = pd.to_numeric(result[y], errors="coerce").astype(float)
    ceiling = float(np.nanmax(top.to_numpy())) if top.notna().any() else 1.0
    if ends is not None:
        reach = ends["upper"].astype(float).reindex(top.index).to_numpy(na_value=np.nan)
        if np.isfinite(reach).any():
            ceiling = max(ceiling, float(np.nanmax(reach)))
    ceiling = ceiling if ceiling > 0 else 1.0
    draw = ax.barh if horizontal else ax.bar
    for i, group in enumerate(groups):
        rows = result if group is None else result[result[hue] == group]
        pos = np.array([categories.index(v) for v in rows[x]]) + (i - (len(groups) - 1) / 2) * width
        values = pd.to_numeric(rows[y], errors="coerce").astype(float).to_numpy()
        errors = None
        if ends is not None:
            lo = ends["lower"].astype(float).reindex(rows.index).to_numpy(na_value=np.nan)
            hi = ends["upper"].astype(float).reindex(rows.index).to_numpy(na_value=np.nan)
            errors = np.vstack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)])
        shown = ~np.isnan(values)
        bars = {"xerr" if horizontal else "yerr": None if errors is None else np.nan_to_num(errors[:, shown])}
        draw(
            pos[shown],
            values[shown],
            width * 0.95,
            label=None if group is None else str(group),
            capsize=2,
            **bars,
        )
        for at, s in zip(pos[~shown], symbols.loc[rows.index][~shown], strict=True):
            if horizontal:
                ax.text(ceiling * 0.01, at, s or "x", ha="left", va="center", fontsize=8, color="#505a5f")
            else:
                ax.text(at, ceiling * 0.01, s or "x", ha="center", va="bottom", fontsize=8, color="#505a5f")
    if horizontal:
        ax.set_yticks(range(len(categories)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylim(len(categories) - 0.5, -0.5)  # the first category on top
        ax.set_xlim(0, ceiling * 1.08)
        ax.set_ylabel(x)
        ax.set_xlabel(y)
    else:
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(labels, rotation=90 if len(categories) > 8 else 0, fontsize=8)
        ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_ylim(0, ceiling * 1.08)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    if hue is not None:
        ax.legend(title=hue, fontsize=8)
    if title:
        ax.set_title(title)
    _mark(fig, result)
    return fig


def _footer_lines(p: Any, width_in: float) -> list[str]:
    return [
        *_wrap(" · ".join(p.footer().split(" · ")), width_in - 0.4, FOOTER_PT),
        *_wrap(p.caveat, width_in - 0.4, FOOTER_PT),
    ]


def _mark(fig: Any, result: ProtectedResult) -> None:
    p = result.provenance
    colour = marking_colour(p.label)
    width_in, height_in = fig.get_size_inches()
    band = 0.22 / height_in  # the marking bands' centres, 0.22 in from the edges
    for ypos in (1 - band, band):
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
    provenance = _wrap(" · ".join(p.footer().split(" · ")), width_in - 0.4, FOOTER_PT)
    caveat = _wrap(p.caveat, width_in - 0.4, FOOTER_PT)
    line = 0.16 / height_in
    y = band + 0.3 / height_in
    for text, shade in [*((t, colour) for t in reversed(caveat)), *((t, "#505a5f") for t in reversed(provenance))]:
        fig.text(0.5, y, text, ha="center", va="bottom", fontsize=FOOTER_PT, color=shade)
        y += line
    fig._safestats_marking = p.marking  # noqa: SLF001 - read by save()
    fig._safestats_result = result  # noqa: SLF001 - save() protects the file as the result's would be


def save(fig: Any, path: str | Path, *, password: str | None = None, unencrypted: bool = False, **kwargs: Any) -> Path:
    """Save a chart made by this module; the marking is in the image and in its metadata. A chart
    of an OFFICIAL-SENSITIVE result is written as a protected archive (``<path>.zip``, as the
    result's ``to_csv`` would be) unless ``unencrypted=True``; returns where it went."""
    import io

    from safestats.exports import ExportPolicy, protected_name

    marking = getattr(fig, "_safestats_marking", None)
    if marking is None:
        raise ValueError("this figure has no protective marking; make it with safestats.plots")
    path = Path(path)
    metadata = {"Title": f"[{marking}] safestats chart", "Description": marking}
    if path.suffix.lower() == ".pdf":
        metadata = {"Title": f"[{marking}] safestats chart", "Subject": marking}
    buf = io.BytesIO()
    fig.savefig(buf, metadata=metadata, format=path.suffix.lstrip(".").lower() or None, **kwargs)
    result = getattr(fig, "_safestats_result", None)
    if result is None:  # pragma: no cover - every chart of this module has its result
        raise ValueError("this figure has no result to be protected as; make it with safestats.plots")
    result._export_bytes(buf.getvalue(), path, password=password, unencrypted=unencrypted)
    p = result.provenance
    return protected_name(path, ExportPolicy.from_meta(p.export)) if p.needs_protection and not unencrypted else path
