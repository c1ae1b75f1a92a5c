"""The service's database: an engine with the schema in place, and one-transaction helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from safestats.errors import AuditFailure

__all__ = ["open_store", "reading", "transaction"]

READ_ONLY = "safestats_read_only"


def open_store(url: str) -> sa.Engine:
    """An SQLAlchemy engine for the service's database, with the schema in place."""
    if url.startswith("sqlite:///"):
        database = url.removeprefix("sqlite:///")
        if database not in ("", ":memory:") and not database.startswith("file:"):  # a URI names an existing file
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            try:  # a new store is private to the service's user (SQLite gives its journal the same mode)
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        engine = sa.create_engine(url, connect_args={"timeout": 30, "isolation_level": None})

        if database not in ("", ":memory:"):

            @event.listens_for(engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                # write-ahead log, synced at every commit: as durable as the rollback journal
                # (a commit is on disk when it returns) with one sync a commit instead of
                # several. Copy a live store with SQLite's backup (`sqlite3 store.db ".backup
                # copy.db"`), not by copying the file alone.
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=FULL")

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # writers take the write lock at once (serialised across processes, never failing
            # to upgrade half-way); readers (:func:`reading`) a snapshot that waits for no one
            read = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")
    else:  # pre-ping: a store that went away and came back is picked up again
        engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        from safestats.store.migrations import migrate

        migrate(engine)
    except sa.exc.SQLAlchemyError as e:
        raise AuditFailure(f"cannot open the audit store {engine.url!r}: {e.__class__.__name__}") from e
    return engine


@contextmanager
def transaction(engine: sa.Engine, conn: sa.Connection | None = None) -> Iterator[sa.Connection]:
    """``conn`` if the caller holds a transaction (one release, one transaction), else a new one."""
    if conn is not None:
        yield conn
        return
    with engine.begin() as own:
        yield own


@contextmanager
def reading(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for reads. On SQLite its transaction is deferred: in write-ahead-log mode a
    consistent snapshot that neither waits for a writer nor holds one up (a plain connection
    would take the write lock, ``BEGIN IMMEDIATE``, and queue every read behind every commit's
    sync). Never write through it: writes go through :func:`transaction`."""
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        yield conn
