"""What sdc releases published, per disclosure domain and family, and the domain lock.

Rows hold each release's structure as JSON text (``disclosure/linked.py`` turns it into Specs
and decides which earlier tables a new one is checked with).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from safestats.store.db import reading, transaction
from safestats.store.locks import FairLock
from safestats.store.schema import links_table

__all__ = ["PublishedStore"]


class PublishedStore:
    """The ``sdc_published`` table, and one lock per domain across threads and processes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._locks: dict[str, FairLock] = {}  # in the order they came: no release waits for seconds
        self._guard = threading.Lock()

    @contextmanager
    def lock(self, domain: str) -> Iterator[None]:
        """One protect-and-record at a time per domain, across threads *and* processes on one
        store, so two tables cannot pass unseen by each other: a PostgreSQL advisory lock held
        for the release, or an exclusive lock on a file beside the SQLite database."""
        with self._guard:
            local = self._locks.setdefault(domain, FairLock())
        key = int.from_bytes(hashlib.sha256(f"safestats sdc {domain}".encode()).digest()[:8], "big", signed=True)
        with local:
            if self.engine.dialect.name == "postgresql":
                with self.engine.connect() as conn:
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                    try:
                        yield
                    finally:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                return
            database = self.engine.url.database
            if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
                yield  # one process only can open this store
                return
            path = Path(database).with_name(f"{Path(database).name}.sdc-{key & 0xFFFFFFFF:08x}.lock")
            with path.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def specs(self, domain: str, family: str) -> list[str]:
        """The structures published in ``domain`` for ``family``, oldest first (JSON text)."""
        with reading(self.engine) as conn:
            mine = (links_table.c.domain == domain) & (links_table.c.family == family)
            return [r.spec for r in conn.execute(sa.select(links_table.c.spec).where(mine).order_by(links_table.c.id))]

    def same(self, domain: str, query_hash: str, snapshot_id: str) -> dict[str, str]:
        """The structures (by family) of an earlier release of the same query on the same snapshot."""
        with reading(self.engine) as conn:
            where = (
                (links_table.c.domain == domain)
                & (links_table.c.query_hash == query_hash)
                & (links_table.c.snapshot_id == snapshot_id)
            )
            rows = conn.execute(
                sa.select(links_table.c.family, links_table.c.spec).where(where).order_by(links_table.c.id)
            ).all()
        out: dict[str, str] = {}
        for r in rows:
            out.setdefault(r.family, r.spec)
        return out

    def add(
        self,
        domain: str,
        user: str,
        query_hash: str,
        snapshot_id: str,
        rows: Iterable[tuple[str, str]],
        *,
        audit_seq: int | None = None,
        conn: sa.Connection | None = None,
    ) -> list[int]:
        """Record (family, structure) rows of one release; in ``conn``'s transaction if given."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        ids = []
        with transaction(self.engine, conn) as conn:
            for family, spec in rows:
                row = {
                    "domain": domain,
                    "user": user,
                    "family": family,
                    "query_hash": query_hash,
                    "snapshot_id": snapshot_id,
                    "spec": spec,
                    "time_utc": now,
                    "audit_seq": audit_seq,
                }
                inserted = conn.execute(links_table.insert().values(**row)).inserted_primary_key
                assert inserted is not None
                ids.append(int(inserted[0]))
        return ids
