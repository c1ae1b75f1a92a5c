"""The payload a release is sent as (and its digest computed over): the protected table as JSON
columns, its dtypes, and the meta the client's result is built from (marking, audit record,
query, disclosure, dp spend, accuracy and interval ends, symbols, reasons). Nothing else of the
release leaves the service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from safestats.dataset import Dataset
from safestats.query.model import Query

__all__ = ["release_payload"]


def _column(values: pd.Series) -> list[Any]:
    """A column as JSON-able Python values, missing values as None."""
    if values.dtype.kind in "biuf" or isinstance(values.dtype, pd.StringDtype):  # numbers, text: in bulk
        out: list[Any] = values.to_numpy(dtype=object, na_value=None).tolist()
        return out
    out = values.astype(object).where(values.notna(), None).tolist()
    return [v.item() if hasattr(v, "item") else v for v in out]


def _columns(frame: pd.DataFrame | None) -> dict[str, list[Any]] | None:
    return None if frame is None else {c: _column(frame[c]) for c in frame.columns}


def _ends(lower: pd.DataFrame | None, upper: pd.DataFrame | None) -> dict[str, dict[str, list[Any]]] | None:
    """dp: each statistic's interval ends, as the payload carries them."""
    if lower is None or upper is None:
        return None
    return {c: {"lower": _column(lower[c]), "upper": _column(upper[c])} for c in lower.columns}


def _reasons(protected: Any) -> dict[str, dict[int, str]]:
    """sdc: why each withheld statistic is withheld, per column and row."""
    reasons = getattr(protected, "reasons", None)
    if reasons is None:
        return {}
    return {c: _marked(reasons[c]) for c in reasons.columns}


def _marked(marks: pd.Series) -> dict[int, str]:
    """Row number -> mark, for the rows with a mark (not "")."""
    keep = (marks != "").to_numpy(dtype=bool, na_value=False)
    return dict(zip(marks.index[keep].astype(int).tolist(), map(str, marks.to_numpy(dtype=object)[keep]), strict=True))


def release_payload(
    protected: Any, query: Query, record: Mapping[str, Any], impact: str, dataset: Dataset
) -> dict[str, Any]:
    table: pd.DataFrame = protected.table
    symbols = {col: _marked(protected.symbols[col]) for col in protected.symbols.columns}
    dtypes = {a.name: str(table[a.name].dtype) for a in query.aggregates}
    return {
        "table": {"columns": list(table.columns), "data": {c: _column(table[c]) for c in table.columns}},
        "dtypes": dtypes,
        "meta": {
            "label": record["label"],
            "impact_level": impact,
            "audit_id": None,  # set once the release is recorded
            "query": query.canonical(),
            "query_hash": query.hash,
            "dataset": query.dataset,
            "snapshot_id": dataset.snapshot_id,
            "user": record["user"],
            "time_utc": record["time_utc"],
            "disclosure": record["disclosure"],
            "privacy": record.get("privacy"),
            "accuracy": _columns(protected.accuracy),
            "interval": _ends(getattr(protected, "lower", None), getattr(protected, "upper", None)),
            "cells": protected.cells,
            "suppressed": protected.suppressed,
            "symbols": symbols,
            "reasons": _reasons(protected),
        },
    }
