"""The default engine: DuckDB over the census Parquet files, through Ibis.

The connection is private to the engine and only ever sees read-only views over the files.
"""

from __future__ import annotations

import hashlib
import threading
import weakref

import ibis
import pandas as pd

from safestats.dataset import Dataset
from safestats.engines.compile import (
    compile_plan,
    execute_plan,
    multi_key,
    multi_rows,
    relation,
    rows_key,
    single_term,
)
from safestats.query.validate import Plan

__all__ = ["DuckDBEngine", "close_all"]

_OPEN: weakref.WeakSet[DuckDBEngine] = weakref.WeakSet()


def close_all() -> None:
    """Close every DuckDB engine still open (at shutdown: DuckDB's bindings complain otherwise)."""
    for engine in list(_OPEN):
        engine.close()


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, dataset: Dataset, *, term_index: bool = True) -> None:
        self._term_index = term_index  # False: the contribution bound is always a window over every row
        self._con = ibis.duckdb.connect()
        self._tables = {}
        for file in sorted(dataset.manifest["files"]):
            if file.endswith(".parquet"):
                name = file.removesuffix(".parquet")
                self._tables[name] = self._con.read_parquet(dataset.table_path(name), table_name=name)
        self._lock = threading.Lock()  # one DuckDB connection is not safe to share across threads
        _OPEN.add(self)

    def close(self) -> None:
        with self._lock:
            self._tables = {}
            if self._con is not None:
                self._con.disconnect()
            self._con = None  # drop the backend too, so DuckDB's objects are freed now
        _OPEN.discard(self)

    def sql(self, plan: Plan) -> str:
        """The SQL this engine runs for ``plan`` (golden tests pin it)."""
        return str(ibis.to_sql(compile_plan(plan, self._tables), dialect="duckdb"))

    def execute(self, plan: Plan) -> pd.DataFrame:
        self._prepare(plan)
        return execute_plan(self._con, self._tables, self._lock, plan)

    def _prepare(self, plan: Plan) -> None:
        """Build, once per relation, the pupils with several rows in a term and those rows
        (temporary tables that never leave the engine), when the plan's contribution bound can
        use them (compile.py: the window over those pupils only, or the additive decomposition)."""
        if (
            not self._term_index
            or plan.max_rows is None
            or single_term(plan) is None
            or multi_key(plan) in self._tables
        ):
            return
        base = relation(plan, self._tables)
        if "term" not in base.columns:
            return
        with self._lock:
            if multi_key(plan) not in self._tables:
                tag = hashlib.sha256(multi_key(plan).encode()).hexdigest()[:12]
                multi = self._con.create_table(f"_multi_{tag}", obj=multi_rows(base, plan.unit), temp=True)
                rows = base.join(multi, [plan.unit, "term"])  # those pupils' rows in those terms
                self._tables[rows_key(plan)] = self._con.create_table(f"_rows_{tag}", obj=rows, temp=True)
                self._tables[multi_key(plan)] = multi

    def ping(self) -> None:
        """Raise unless the engine answers (readiness); reads no census rows."""
        with self._lock:
            if self._con is None:
                raise RuntimeError("the engine is closed")
            self._con.raw_sql("SELECT 1").fetchall()
