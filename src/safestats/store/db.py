"""The service's database: an engine with the schema in place, and one-transaction helpers."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from safestats.errors import AuditFailure
from safestats.store.locks import FairLock

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

        gate = _WriterGate(engine, timeout=30)

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # writers take the write lock at once (serialised across processes, never failing
            # to upgrade half-way), after this process's other writers; readers
            # (:func:`reading`) a snapshot that waits for no one
            if conn.get_execution_options().get(READ_ONLY, False):
                conn.exec_driver_sql("BEGIN")
                return
            gate.enter(conn)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                gate.leave(conn.connection)
                raise
    else:  # pre-ping: a store that went away and came back is picked up again
        engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        from safestats.store.migrations import migrate

        migrate(engine)
    except sa.exc.SQLAlchemyError as e:
        raise AuditFailure(f"cannot open the audit store {engine.url!r}: {e.__class__.__name__}") from e
    return engine


class _WriterGate:
    """This process's writers to one SQLite store, one at a time.

    SQLite serialises writers itself, but a writer that finds the lock taken sleeps in growing
    steps (1, 2, 5 … 100 ms) and retries, so under many threads the lock sits free while its
    waiters sleep, and one may lose every race for seconds (the 100-client round's tail). Here a
    writer first waits on a lock of this process, handed on as the writer before it commits;
    SQLite's own lock still serialises processes. Held from ``BEGIN IMMEDIATE`` until the commit
    has returned, or until the rollback begins (a rollback's path is taken even for a connection
    that was invalidated, which is never committed or rolled back through the dialect)."""

    def __init__(self, engine: sa.Engine, *, timeout: float) -> None:
        self.timeout = timeout
        self._lock = FairLock()  # handed to the longest waiter
        self._holder: int | None = None  # id() of the DBAPI connection in the write transaction
        commit = engine.dialect.do_commit

        def do_commit(dbapi_conn: Any) -> None:
            try:
                commit(dbapi_conn)
            finally:
                self.leave(dbapi_conn)

        engine.dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
        event.listen(engine, "rollback", lambda conn: self.leave(conn.connection))

    def enter(self, conn: sa.Connection) -> None:
        if not self._lock.acquire(timeout=self.timeout):
            raise sa.exc.OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked (this process's writers)")
            )
        self._holder = _raw_id(conn.connection)

    def leave(self, dbapi_conn: Any) -> None:
        if self._holder is not None and self._holder == _raw_id(dbapi_conn):
            self._holder = None
            self._lock.release()


def _raw_id(conn: Any) -> int:
    """The DBAPI connection's identity, through SQLAlchemy's pool proxy if ``conn`` is one."""
    return id(getattr(conn, "dbapi_connection", None) or conn)


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
