"""A release's columns as JSON values, and its digest, are what they were before the fast paths:
each dtype the engines return gives the same Python values (missing as None), and the digest is
the one computed from the payload's wire form."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from safestats.releases import result_digest
from safestats.service.payload import _column


def _plain(values: pd.Series) -> list:
    out = values.astype(object).where(values.notna(), None).tolist()
    return [v.item() if hasattr(v, "item") else v for v in out]


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1.5, np.nan, 3.0]),
        pd.Series([1, 2, 3]),
        pd.Series([1, None, 3], dtype="Int64"),
        pd.Series([1.0, None], dtype="Float64"),
        pd.Series(["a", None, "b"], dtype="string[pyarrow]"),
        pd.Series(["a", None]),
        pd.Series([True, False]),
        pd.Series([True, None], dtype="boolean"),
        pd.Series([1, None], dtype=pd.ArrowDtype(pa.int64())),
        pd.Series([1.5, None], dtype=pd.ArrowDtype(pa.float64())),
        pd.Series([dt.date(2020, 1, 1), None]),
        pd.Series(pd.to_datetime(["2020-01-01", None])),
        pd.Series([np.int64(3), "a"], dtype=object),
    ],
    ids=lambda s: str(s.dtype),
)
def test_a_column_gives_the_python_values_it_always_did(values):
    got = _column(values)
    assert got == _plain(values) and [type(v) for v in got] == [type(v) for v in _plain(values)]
    json.dumps(got, default=str)  # JSON-able


def test_the_digest_is_the_wire_forms():
    payload = {
        "table": {"columns": ["la", "n"], "data": {"la": ["E1", None, "E3"] * 5, "n": [1.5, None, 2.0] * 5}},
        "dtypes": {"la": "str", "n": "float64"},
        "meta": {"symbols": {"n": {i: "c" for i in range(0, 15, 2)}}, "label": "OFFICIAL", "query_hash": "q"},
    }
    meta = payload["meta"]
    core = {k: payload[k] for k in ("table", "dtypes")} | {
        "symbols": meta["symbols"],
        "label": meta["label"],
        "query_hash": meta["query_hash"],
    }
    wire = json.loads(json.dumps(core, default=str))
    text = json.dumps(wire, sort_keys=True, separators=(",", ":"), default=str).encode()
    assert result_digest(payload) == hashlib.sha256(text).hexdigest()


@pytest.mark.parametrize(
    "marks",
    [
        pd.Series(["", "c", "", "low"]),
        pd.Series(["", "c", None], dtype="string[pyarrow]"),
        pd.Series(["x", ""], index=[5, 9]),
        pd.Series([], dtype=str),
    ],
)
def test_the_marks_are_the_rows_with_one(marks):
    from safestats.service.payload import _marked

    assert _marked(marks) == {int(i): str(s) for i, s in marks[marks != ""].items()}
