"""Derived frames that keep the marking: a pivot, new columns and sums of a released result.

Each returns a :class:`~safestats.result.ProtectedResult` with the release's provenance (marking,
audit record, the footer's counts of the release) and the symbols, reasons and dp intervals of its
new cells; the footer says how the frame was derived. A withheld input makes a withheld output.
pandas operations that lose the marking warn once (:class:`MarkingWarning`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from safestats.result import ProtectedResult

__all__ = ["MarkingWarning", "assign", "merge", "pivot", "sum_over", "warn_once"]


class MarkingWarning(UserWarning):
    """A pandas operation on a protected result that drops its marking or treats withheld cells
    as missing (``groupby``, ``pivot_table``): shown once per session."""


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A warning the first time a session does something that loses the marking."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, MarkingWarning, stacklevel=3)


def _values(r: ProtectedResult) -> list[str]:
    """The statistic columns (the rest are keys)."""
    return [c for c in r.provenance.symbols if c in r.columns]


def _derive(
    r: ProtectedResult,
    frame: pd.DataFrame,
    symbols: Mapping[str, Mapping[int, str]],
    reasons: Mapping[str, Mapping[int, str]],
    accuracy: Mapping[str, list[float | None]] | None,
    how: str,
    interval: Mapping[str, Mapping[str, list[float | None]]] | None = None,
) -> ProtectedResult:
    """A new marked frame: ``r``'s provenance with the symbols, reasons and intervals of the new cells."""
    p = r.provenance
    out = ProtectedResult(frame.reset_index(drop=True))
    out._provenance = replace(
        p,
        symbols={c: dict(v) for c, v in symbols.items()},
        reasons={c: dict(v) for c, v in reasons.items() if v},
        accuracy=accuracy,
        interval=interval,
        derived=f"{p.derived}; {how}" if p.derived else how,
    )
    out._session = getattr(r, "_session", None)
    return out


def pivot(
    r: ProtectedResult, *, index: str | Sequence[str], columns: str, values: str | None = None
) -> ProtectedResult:
    """A wide table of one statistic (``values``; the only one if there is one): a row per
    ``index`` value, a column per ``columns`` value, in the order the release has them.
    Withheld cells stay withheld with their symbol and reason, dp intervals follow their
    cells, and the marking and provenance are kept (the footer says how it was derived)."""
    stats = _values(r)
    values = values or (stats[0] if len(stats) == 1 else None)
    if values not in stats:
        raise ValueError(f"pivot needs values= one of {', '.join(stats)}")
    keys = [index] if isinstance(index, str) else list(index)
    long = pd.DataFrame(r).reset_index(drop=True)
    long[columns] = long[columns].astype(object).where(long[columns].notna(), "(empty)").astype(str)
    if long.duplicated([*keys, columns]).any():
        raise ValueError(f"{', '.join(keys)} and {columns} do not name one cell each: give more index keys")
    long["__sym"] = r.symbols[values].to_numpy() if values in r.symbols else ""
    long["__why"] = r.reasons[values].to_numpy() if values in r.reasons else ""
    acc = r.accuracy
    long["__acc"] = acc[values].to_numpy(dtype=float, na_value=float("nan")) if acc is not None else float("nan")
    ends = r.interval(values) if r.provenance.interval and values in r.provenance.interval else None
    for end in ("lower", "upper"):
        long[f"__{end}"] = ends[end].to_numpy(dtype=float, na_value=float("nan")) if ends is not None else float("nan")
    rows = long[keys].drop_duplicates()
    order = pd.MultiIndex.from_frame(rows) if len(keys) > 1 else pd.Index(rows[keys[0]])
    heads = list(dict.fromkeys(long[columns]))

    def wide(what: str) -> pd.DataFrame:
        return long.pivot(index=keys, columns=columns, values=what).reindex(index=order, columns=heads)

    sym, why, a = wide("__sym").fillna(""), wide("__why").fillna(""), wide("__acc")
    frame = wide(values).reset_index()
    frame.columns = [*keys, *heads]
    for c in heads:
        frame[c] = frame[c].astype(r[values].dtype)
    symbols = {c: {i: s for i, s in enumerate(sym[c]) if s} for c in heads}
    reasons = {c: {i: w for i, w in enumerate(why[c]) if w} for c in heads}
    accuracy = {c: [None if pd.isna(v) else float(v) for v in a[c]] for c in heads} if acc is not None else None
    interval = None
    if ends is not None:
        lo, hi = wide("__lower"), wide("__upper")
        interval = {
            c: {
                "lower": [None if pd.isna(v) else float(v) for v in lo[c]],
                "upper": [None if pd.isna(v) else float(v) for v in hi[c]],
            }
            for c in heads
        }
    how = f"pivot of {values} by {', '.join(keys)} × {columns}"
    return _derive(r, frame, symbols, reasons, accuracy, how, interval)


def assign(r: ProtectedResult, columns: Mapping[str, Any]) -> ProtectedResult:
    """pandas' ``assign``, marked: each new column is a statistic derived from the row's
    statistics; where it comes out empty in a row that has a withheld statistic it is withheld
    too (its symbol), never shown as an empty category; empty for another reason (the first
    row of a ``diff``) it is ``z``, not applicable. Derived columns carry no ± interval."""
    out = pd.DataFrame(r).assign(**{k: (v(r) if callable(v) else v) for k, v in columns.items()}).reset_index(drop=True)
    # everything below is by the new frame's rows (r may be a selection of the release's rows)
    sym = r.symbols.reset_index(drop=True)
    why = r.reasons.reset_index(drop=True)
    withheld = sym.ne("").any(axis=1) if not sym.empty else pd.Series(False, index=out.index)
    first = sym.apply(lambda row: next((s for s in row if s), ""), axis=1) if not sym.empty else withheld
    symbols = {c: {int(i): str(v) for i, v in sym[c].items() if v} for c in sym.columns if c not in columns}
    reasons = {c: {int(i): str(v) for i, v in why[c].items() if v} for c in why.columns if c not in columns}
    for name in columns:
        gone = out[name].isna() & withheld
        symbols[name] = {int(i): str(first[i]) for i in out.index[gone]}
        # empty for another reason (a first row's diff, a division by zero): not applicable
        symbols[name].update({int(i): "z" for i in out.index[out[name].isna() & ~withheld]})
        reasons[name] = {int(i): "derived" for i in out.index[gone]}

    def listed(frame: pd.DataFrame) -> dict[str, list[float | None]]:
        return {c: [None if pd.isna(v) else float(v) for v in frame[c]] for c in frame.columns if c not in columns}

    acc = r.accuracy
    accuracy = listed(acc) if acc is not None else None
    interval: dict[str, dict[str, list[float | None]]] | None = None
    if r.provenance.interval is not None:
        interval = {}
        for c in r.provenance.interval:
            e = r.interval(c) if c in out.columns and c not in columns else None
            if e is not None:
                interval[c] = {end: [None if pd.isna(v) else float(v) for v in e[end]] for end in ("lower", "upper")}
    return _derive(r, out, symbols, reasons, accuracy, "assign " + ", ".join(columns), interval)


def sum_over(r: ProtectedResult, by: str | Sequence[str], values: str | Sequence[str] | None = None) -> ProtectedResult:
    """Sums of statistics over the other keys, per ``by``: a group with any withheld cell is
    withheld ('c'), never the sum of what happens to be shown. No ± on the sums (use the
    query's ``with_totals()`` for margins with their exact intervals)."""
    keys = [by] if isinstance(by, str) else list(by)
    stats = _values(r) if values is None else ([values] if isinstance(values, str) else list(values))
    frame = pd.DataFrame(r).reset_index(drop=True)
    sym = r.symbols.reset_index(drop=True)
    groups = frame.groupby(keys, dropna=False, sort=True)
    out = groups[stats].sum(min_count=1).reset_index()
    symbols: dict[str, dict[int, str]] = {}
    for c in stats:
        hidden = (sym[c] != "") if c in sym else pd.Series(False, index=frame.index)
        any_hidden = hidden.groupby([frame[k] for k in keys], dropna=False, sort=True).any().reset_index(drop=True)
        out.loc[any_hidden.to_numpy(), c] = pd.NA
        symbols[c] = {int(i): "c" for i in out.index[any_hidden.to_numpy()]}
    reasons = {c: dict.fromkeys(v, "derived") for c, v in symbols.items()}
    return _derive(r, out, symbols, reasons, None, f"sum of {', '.join(stats)} by {', '.join(keys)}")


def _rank(label: str) -> int:
    """A marking's place in order (a label marking.py does not know ranks highest)."""
    from safestats.marking import MARKINGS

    order = list(MARKINGS)
    return order.index(label) if label in order else len(order)


def merge(
    left: ProtectedResult,
    right: ProtectedResult,
    *,
    on: str | Sequence[str],
    how: str = "left",
    rename: Mapping[str, str] | None = None,
) -> ProtectedResult:
    """pandas' ``merge`` of two released results on their keys, marked: every statistic keeps
    its symbol, reason and dp interval from the row it came from; a row of ``left`` with no
    match in ``right`` shows ``x`` (not available) for ``right``'s statistics; the merged frame
    carries the higher of the two markings, and its footer names ``right``'s audit record.
    ``rename`` renames ``right``'s statistics (e.g. ``{"pupils": "leavers"}``)."""
    if not isinstance(right, ProtectedResult):
        raise TypeError(
            "merge() joins two released results; for other data use pandas after to_csv() or pd.DataFrame()"
        )
    keys = [on] if isinstance(on, str) else list(on)
    rename = dict(rename or {})
    l_stats, r_stats = _values(left), _values(right)
    unknown = [k for k in keys if k not in left.columns or k not in right.columns]
    if unknown:
        raise ValueError(f"merge on {', '.join(unknown)}: not a column of both results")
    r_named = {c: rename.get(c, c) for c in r_stats}
    clash = sorted(set(r_named.values()) & set(left.columns))
    if clash:
        raise ValueError(f"both results have {', '.join(clash)}: rename right's with rename={{...}}")
    lf = pd.DataFrame(left).reset_index(drop=True).assign(__left=lambda t: range(len(t)))
    rf = pd.DataFrame(right).reset_index(drop=True)[[*keys, *r_stats]].rename(columns=r_named)
    rf = rf.assign(__right=lambda t: range(len(t)))
    merged = lf.merge(rf, on=keys, how=how).reset_index(drop=True)
    li = merged.pop("__left")
    ri = merged.pop("__right")

    def carry(
        frame: pd.DataFrame, rows: pd.Series, names: Mapping[str, str], missing: str
    ) -> dict[str, dict[int, str]]:
        """Per new column, the marks of the rows each merged row came from (``missing`` where none)."""
        out: dict[str, dict[int, str]] = {}
        for c, new in names.items():
            col = frame[c].reset_index(drop=True) if c in frame else None
            marks: dict[int, str] = {}
            for i, r in rows.items():
                if pd.isna(r):
                    if missing:
                        marks[int(i)] = missing
                elif col is not None and col[int(r)]:
                    marks[int(i)] = str(col[int(r)])
            out[new] = marks
        return out

    same = {c: c for c in l_stats}
    symbols = {**carry(left.symbols, li, same, "x"), **carry(right.symbols, ri, r_named, "x")}
    reasons = {**carry(left.reasons, li, same, ""), **carry(right.reasons, ri, r_named, "")}

    def numbers(frame: pd.DataFrame | None, rows: pd.Series, names: Mapping[str, str]) -> dict[str, list[float | None]]:
        if frame is None:
            return {}
        col_of = {c: frame[c].reset_index(drop=True) for c in names if c in frame}
        return {
            names[c]: [None if pd.isna(r) or pd.isna(v[int(r)]) else float(v[int(r)]) for r in rows]
            for c, v in col_of.items()
        }

    accuracy = {**numbers(left.accuracy, li, same), **numbers(right.accuracy, ri, r_named)} or None
    interval: dict[str, dict[str, list[float | None]]] = {}
    for r, rows, names in ((left, li, same), (right, ri, r_named)):
        for c in r.provenance.interval or {}:
            if c in names:
                e = r.interval(c)
                assert e is not None
                interval[names[c]] = numbers(e, rows, {"lower": "lower", "upper": "upper"})
    out = _derive(
        left,
        merged,
        symbols,
        reasons,
        accuracy,
        f"merged with audit record {right.provenance.audit_id} on {', '.join(keys)}",
        interval or None,
    )
    lp, rp = left.provenance, right.provenance
    if _rank(rp.label) > _rank(lp.label):  # the higher marking of the two
        out._provenance = replace(
            out.provenance, label=rp.label, impact_level=rp.impact_level, handling=rp.handling, export=rp.export
        )
    return out
