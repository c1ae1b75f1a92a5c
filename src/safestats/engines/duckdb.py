"""The default engine: DuckDB over the census Parquet files, through Ibis.

The database is private to the engine (in memory) and only ever holds views over the files and
the engine's own per-census tables. Each request runs on a cursor of its own — a connection to
the same database — so requests' engine work runs side by side; plans with in-memory tables
(the sdc atom maps, which Ibis registers on its own connection) run on the main connection,
one at a time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import weakref
from typing import Any

import ibis
import pandas as pd

from safestats.dataset import Dataset
from safestats.engines.base import Memo, ScopeCache
from safestats.engines.compile import (
    compile_plan,
    compile_with_margins,
    execute_plan,
    execute_scope,
    expressions_key,
    multi_key,
    multi_rows,
    rank_rows,
    relation,
    rows_key,
    single_term,
)
from safestats.query.validate import Plan

__all__ = ["DuckDBEngine", "close_all", "ibis_frame", "plain_frame"]

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
        # never spill to disk (DuckDB's default is ./.tmp in the working directory): a query that
        # does not fit in memory fails rather than leave census rows in a file
        self._con.raw_sql("SET temp_directory = ''")
        self._tables = {}
        self._memory: list[int] = []  # descriptors of an encrypted census's files, decrypted in memory
        keys = dataset.decryption()
        # Without memfd_create an encrypted census is scanned through Arrow's decryption, registered
        # on the main connection (DuckDB 2.0 reads Arrow-encrypted Parquet only without filters):
        # its requests then run there, one at a time.
        self._shared = keys is not None and not hasattr(os, "memfd_create")
        for file in sorted(dataset.manifest["files"]):
            if file.endswith(".parquet"):
                name = file.removesuffix(".parquet")
                if self._shared:
                    assert keys is not None
                    self._con.con.register(name, keys.arrow_dataset(dataset.table_path(name)))
                    self._tables[name] = self._con.table(name)
                    continue
                if keys is not None:
                    self._memory.append(keys.decrypt_to_memory(dataset.table_path(name)))
                    path = f"/proc/self/fd/{self._memory[-1]}"
                else:
                    path = str(dataset.table_path(name)).replace("'", "''")
                # a view in the database (not Ibis' temporary one), so every cursor sees it
                self._con.raw_sql(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{path}')")
                self._tables[name] = self._con.table(name)
        self._lock = threading.Lock()  # the main connection is not safe to share across threads
        self._scopes = ScopeCache()  # records used, per scope, counted once
        self._sql: Memo[Any, str] = Memo(512)  # compiled SQL by expression (structural key)
        self._built: Memo[Any, Any] = Memo(256)  # built expressions by plan, less its privacy parameters
        _OPEN.add(self)

    def close(self) -> None:
        with self._lock:
            self._tables = {}
            if self._con is not None:
                self._con.disconnect()
            self._con = None  # drop the backend too, so DuckDB's objects are freed now
            for fd in self._memory:  # the decrypted files' memory is freed with their last descriptor
                os.close(fd)
            self._memory = []
        _OPEN.discard(self)

    def sql(self, plan: Plan) -> str:
        """The SQL this engine runs for ``plan`` (golden tests pin it)."""
        return str(ibis.to_sql(compile_plan(plan, self._tables), dialect="duckdb"))

    def execute(self, plan: Plan) -> pd.DataFrame:
        self._prepare(plan)
        return self._run(functools.partial(execute_plan, built=self._built), plan)

    def execute_with_margins(self, plan: Plan) -> list[pd.DataFrame] | None:
        """``execute`` of the plan and of each of its margins (``margin_plans`` order) from one
        query that reads the term once (compile.py: compile_with_margins), or None where that
        does not apply (the caller executes them one by one)."""
        self._prepare(plan)
        if plan.atoms is not None or self._shared:
            return None
        key = expressions_key(plan, self._tables)
        built = self._built.get(("margins", key), lambda: compile_with_margins(plan, self._tables))
        if built is None:
            return None
        union, parts = built

        def run(con: Any, tables: Any, lock: Any, plan: Plan) -> list[pd.DataFrame]:
            import pyarrow.compute as pc

            table = con.arrow(union)  # split in Arrow, so each part converts as it would alone
            return [
                con.to_pandas(table.filter(pc.equal(table["_set"], i)).select(part.columns), part)
                for i, part in enumerate(parts)
            ]

        return list(self._run(run, plan))

    def scope(self, plan: Plan) -> int:
        return self._scopes.get(plan, self._count_scope)

    def _count_scope(self, plan: Plan) -> int:
        self._prepare(plan)  # the per-relation tables make a one-term scope a count
        return int(self._run(execute_scope, plan))

    def _run(self, run: Any, plan: Plan) -> Any:
        """``run(con, tables, lock, plan)`` on a cursor of its own (queries in parallel), or on the
        main connection where Ibis registered what the plan reads there (atom maps, Arrow datasets)."""
        if plan.atoms is not None or self._shared:
            return run(self._con, self._tables, self._lock, plan)
        with self._lock:
            if self._con is None:
                raise RuntimeError("the engine is closed")
            cursor = self._con.con.cursor()
        try:
            return run(_Cursor(self._con, cursor, self._sql), self._tables, contextlib.nullcontext(), plan)
        finally:
            cursor.close()

    def _prepare(self, plan: Plan) -> None:
        """Build, once per relation, the pupils with several rows in a term and those rows
        (temporary tables that never leave the engine), for one-term plans: their contribution
        bound windows only those pupils' rows, and their distinct pupils and scope are counts
        less those pupils' repeats (compile.py: compile_decomposed, compile_counted,
        compile_scope)."""
        if not self._term_index or single_term(plan) is None or multi_key(plan) in self._tables:
            return
        base = relation(plan, self._tables)
        if "term" not in base.columns:
            return
        with self._lock:
            if multi_key(plan) not in self._tables:
                tag = hashlib.sha256(multi_key(plan).encode()).hexdigest()[:12]
                multi = self._con.create_table(f"_multi_{tag}", obj=multi_rows(base, plan.unit))
                rows = rank_rows(base.join(multi, [plan.unit, "term"]), plan.unit)  # those pupils' rows, ranked
                self._tables[rows_key(plan)] = self._con.create_table(f"_rows_{tag}", obj=rows)
                self._tables[multi_key(plan)] = multi

    def ping(self) -> None:
        """Raise unless the engine answers (readiness); reads no census rows."""
        with self._lock:
            if self._con is None:
                raise RuntimeError("the engine is closed")
            self._con.raw_sql("SELECT 1").fetchall()


class _Cursor:
    """Runs an Ibis expression on one DuckDB cursor, converting the result as Ibis does. The SQL
    of an expression seen before is reused: Ibis expressions compare structurally (the same
    tables, filters, literals and aggregates), so the same key is the same SQL."""

    def __init__(self, backend: Any, cursor: Any, sql: Memo[Any, str]) -> None:
        self._backend = backend
        self._cursor = cursor
        self._sql = sql

    def _compile(self, table_expr: Any) -> str:
        return self._sql.get(table_expr.op(), lambda: str(self._backend.compile(table_expr)))

    def execute(self, expr: Any) -> Any:
        return self.to_pandas(self.arrow(expr), expr)

    def arrow(self, expr: Any) -> Any:
        return self._cursor.sql(self._compile(expr.as_table())).to_arrow_table()

    def to_pandas(self, table: Any, expr: Any) -> Any:
        """An Arrow result as Ibis would give ``expr``'s."""
        if isinstance(expr, ibis.expr.types.Table) and (plain := plain_frame(table, expr.schema())) is not None:
            return plain
        return ibis_frame(table, expr)


def ibis_frame(table: Any, expr: Any) -> Any:
    """An Arrow result converted as Ibis' DuckDB backend converts ``expr``'s."""
    import pyarrow.types as pat
    from ibis.backends.duckdb.converter import DuckDBPandasData

    df = pd.DataFrame(
        {
            name: (
                col.to_pylist()
                if pat.is_nested(col.type) or pat.is_dictionary(col.type) or col.null_count
                else col.to_pandas()
            )
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
    )
    return expr.__pandas_result__(DuckDBPandasData.convert_table(df, expr.as_table().schema()))


def plain_frame(table: Any, schema: Any) -> pd.DataFrame | None:
    """An Arrow table of integer, float, boolean and string columns as :func:`ibis_frame` converts
    it for ``schema`` (the same dtypes and values), without its per-column conversion chain (most of
    a small result's cost), or None where a column is of another kind or holds a null (integers
    and booleans) and Ibis' conversion is needed."""
    import pyarrow.types as pat

    columns: dict[str, Any] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        dtype = schema[name]
        if dtype.is_string() and pat.is_string(col.type):
            columns[name] = col.to_pandas()
        elif dtype.is_floating() and pat.is_float64(col.type):
            columns[name] = col.to_numpy()
        elif col.null_count:
            return None
        elif (dtype.is_integer() and pat.is_integer(col.type) and str(dtype) == str(col.type)) or (
            dtype.is_boolean() and pat.is_boolean(col.type)
        ):
            columns[name] = col.to_numpy()
        else:
            return None
    return pd.DataFrame(columns) if columns else None
