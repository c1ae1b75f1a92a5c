"""DuckDB's shortcut from an Arrow result to pandas (engines/duckdb.py: plain_frame) gives what
Ibis' own conversion gives, dtypes included, or steps aside."""

from __future__ import annotations

import ibis
import pandas as pd
import pyarrow as pa
import pytest

from safestats.engines.duckdb import ibis_frame, plain_frame

PLAIN = [
    pa.table({"phase": ["Primary", "Secondary", None], "__pupils": pa.array([3, 1, 2], pa.int64())}),
    pa.table({"la_code": ["201", "886"], "n": pa.array([1, 2], pa.int32()), "m": [0.5, None]}),
    pa.table({"fsm_eligible": [True, False], "s": pa.array([7, 8], pa.int16())}),
    pa.table({"phase": pa.array([], pa.string()), "__count": pa.array([], pa.int64())}),
]


@pytest.mark.parametrize("table", PLAIN, ids=["strings-with-null", "int32-float-null", "bools", "empty"])
def test_a_plain_result_converts_as_ibis_converts_it(table):
    expr = ibis.memtable(table)
    got = plain_frame(table, expr.schema())
    assert got is not None  # the shortcut is taken
    pd.testing.assert_frame_equal(got, ibis_frame(table, expr))


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"n": pa.array([1, None], pa.int64())}),  # Ibis turns it into floats
        pa.table({"b": pa.array([True, None])}),
        pa.table({"d": pa.array([1, 2], pa.date32())}),
    ],
    ids=["int-with-null", "bool-with-null", "date"],
)
def test_anything_else_is_left_to_ibis(table):
    assert plain_frame(table, ibis.memtable(table).schema()) is None
