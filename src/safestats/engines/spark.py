"""The Spark engine: the same Ibis plans on Apache Spark, for censuses that outgrow one machine.

Data are read from the census Parquet files; filters, contribution bounding, clipping and the
aggregation all run in Spark (the plan compiles to one Spark SQL job through Ibis's PySpark
backend), and only the aggregates come back to the service for protection. ``spark_master``
points at a cluster (``spark://host:7077``, ``yarn``, ``k8s://…``) or runs in process
(``local[2]``, the default and what the tests use); ``spark_options`` passes Spark settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Any

import pandas as pd

from safestats.dataset import Dataset
from safestats.engines.base import ScopeCache
from safestats.engines.compile import compile_plan, execute_plan, execute_scope
from safestats.errors import ConfigError, DataError
from safestats.query.validate import Plan

__all__ = ["SparkEngine", "parse_options"]

#: Spark settings that suit aggregate queries over one census in process; options override them.
DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.ansi.enabled": "false",
}


def parse_options(text: str) -> dict[str, str]:
    """``key=value,key=value`` (the spark_options setting) as a dict, with a clear error."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise ConfigError(f"spark_options: {part!r} is not spark.<name>=<value>")
        out[key.strip()] = value.strip()
    return out


def _check_rows(spark: Any, where: str, table: str, expected: Any) -> None:
    """Refuse a table at ``where`` whose row count is not the manifest's (from the Parquet footers)."""
    if expected is None:
        return
    want = sum(expected.values()) if isinstance(expected, dict) else int(expected)
    try:
        got = spark.read.parquet(where).count()
    except Exception as e:  # noqa: BLE001 - unreadable or missing at the URI
        raise DataError(f"the spark engine cannot read {table} at {where}: {type(e).__name__}") from None
    if got != want:
        raise DataError(f"{table} at {where} has {got} rows; the manifest in data_dir says {want}: not this census")


class SparkEngine:
    name = "spark"

    def __init__(self, dataset: Dataset, *, master: str = "local[2]", options: str = "", data_uri: str = "") -> None:
        if dataset.encrypted and not data_uri and not master.startswith("local"):
            raise ConfigError(
                "a Spark cluster cannot read an encrypted census folder (it is decrypted into this "
                "process's memory, which only a local[...] master reads): give the cluster its copy on "
                "storage it encrypts (spark_data_uri), or use a local master, duckdb or memory"
            )
        try:
            import ibis
            from pyspark.sql import SparkSession
        except ImportError:
            raise ConfigError(
                "the spark engine needs the spark extra: pip install 'safestats[spark]' (and Java 17)"
            ) from None
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        self._warehouse = tempfile.mkdtemp(prefix="safestats-spark-")
        builder = SparkSession.builder.master(master).appName("safestats")
        for key, value in {**DEFAULTS, "spark.sql.warehouse.dir": self._warehouse, **parse_options(options)}.items():
            builder = builder.config(key, value)
        self._spark = builder.getOrCreate()
        self._spark.sparkContext.setLogLevel("ERROR")
        self._con = ibis.pyspark.connect(self._spark)
        self._tables: dict[str, Any] = {}
        self._memory: list[int] = []  # an encrypted census's files, decrypted into anonymous memory
        keys = None if data_uri else dataset.decryption()
        for file in sorted(dataset.manifest["files"]):
            if file.endswith(".parquet"):
                name = file.removesuffix(".parquet")
                where = f"{data_uri.rstrip('/')}/{file}" if data_uri else str(dataset.table_path(name))
                if keys is not None:  # the local JVM reads this process's memfd through /proc
                    self._memory.append(keys.decrypt_to_memory(dataset.table_path(name)))
                    where = f"file:///proc/{os.getpid()}/fd/{self._memory[-1]}"
                if data_uri:  # files the service cannot checksum: their row counts must be the manifest's
                    _check_rows(self._spark, where, name, dataset.manifest.get("row_counts", {}).get(name))
                self._tables[name] = self._con.read_parquet(where, table_name=name)
        self._lock = threading.Lock()
        self._scopes = ScopeCache()

    def close(self) -> None:
        with self._lock:
            self._tables = {}
            self._spark.stop()  # the session is the process's: close one Spark engine per process
            shutil.rmtree(self._warehouse, ignore_errors=True)
            for fd in self._memory:
                os.close(fd)
            self._memory = []

    def sql(self, plan: Plan) -> str:
        import ibis

        return str(ibis.to_sql(compile_plan(plan, self._tables), dialect="pyspark"))

    def execute(self, plan: Plan) -> pd.DataFrame:
        return execute_plan(self._con, self._tables, self._lock, plan)

    def scope(self, plan: Plan) -> int:
        return self._scopes.get(plan, lambda p: execute_scope(self._con, self._tables, self._lock, p))

    def ping(self) -> None:
        """Raise unless the Spark session answers (readiness); reads no census rows."""
        self._spark.sql("SELECT 1").collect()
