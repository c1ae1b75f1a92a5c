"""Per-user cache of dp releases: asking the same query again returns the same noisy answer.

Repeating a query and averaging the answers would wear the noise away; so the same canonical
query, with the same privacy parameters, on the same data snapshot, by the same user, returns
the stored release with no new draw and no new spend. The cache lives in the service's
database, so it survives restarts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa

from safestats.store.db import reading, transaction
from safestats.store.schema import cache_table

__all__ = ["ReleaseCache", "cache_key"]


def cache_key(query_canonical: dict[str, Any], params: dict[str, Any], snapshot_id: str) -> str:
    text = json.dumps({"q": query_canonical, "p": params, "s": snapshot_id}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ReleaseCache:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine  # the schema comes from safestats.store.migrations

    def get(self, user: str, key: str) -> tuple[dict[str, Any], int] | None:
        with reading(self.engine) as conn:
            row = conn.execute(
                sa.select(cache_table.c.payload, cache_table.c.audit_seq).where(
                    (cache_table.c.user == user) & (cache_table.c.cache_key == key)
                )
            ).first()
        return (json.loads(row.payload), int(row.audit_seq)) if row else None

    def put(
        self,
        user: str,
        key: str,
        payload: dict[str, Any],
        audit_seq: int,
        *,
        conn: sa.Connection | None = None,
        text: bytes | None = None,
    ) -> None:
        """Cache ``payload`` (its JSON ``text`` when the caller has it already)."""
        with transaction(self.engine, conn) as conn:
            conn.execute(cache_table.delete().where((cache_table.c.user == user) & (cache_table.c.cache_key == key)))
            conn.execute(
                cache_table.insert().values(
                    user=user,
                    cache_key=key,
                    payload=text.decode() if text is not None else json.dumps(payload, default=str),
                    audit_seq=audit_seq,
                    time_utc=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                )
            )

    def expired(self, before: str) -> list[dict[str, Any]]:
        """Cached releases stored before ``before`` (ISO time)."""
        query = (
            sa.select(cache_table.c.user, cache_table.c.cache_key, cache_table.c.audit_seq, cache_table.c.time_utc)
            .where(cache_table.c.time_utc < before)
            .order_by(cache_table.c.audit_seq)
        )
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def dispose(self, entries: list[tuple[str, str]]) -> int:
        """Delete the cached releases ``(user, cache_key)``; a repeat of one is then drawn and
        charged afresh. How many went."""
        gone = 0
        with transaction(self.engine) as conn:
            for user, key in entries:
                r = conn.execute(
                    cache_table.delete().where((cache_table.c.user == user) & (cache_table.c.cache_key == key))
                )
                gone += int(r.rowcount or 0)
        return gone
