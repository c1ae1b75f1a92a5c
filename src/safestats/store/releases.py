"""Released results (by audit record) and named releases, in the service's database."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from safestats.store.db import reading, transaction
from safestats.store.schema import releases_table, results_table

__all__ = ["ReleaseStore", "canonical"]


def canonical(value: Any) -> bytes:
    """``value`` as canonical JSON (sorted keys, no spaces): how a kept result is stored."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class ReleaseStore:
    """Released results (by audit record) and named releases, in the service's database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine  # the schema comes from safestats.store.migrations

    def keep(
        self,
        seq: int,
        user: str,
        payload: Mapping[str, Any],
        digest: str,
        *,
        conn: sa.Connection | None = None,
        text: bytes | None = None,
    ) -> None:
        """Keep ``payload`` (its canonical JSON ``text`` when the caller has it already)."""
        blob = zlib.compress(text if text is not None else canonical(payload), 1)
        with transaction(self.engine, conn) as conn:
            conn.execute(
                results_table.insert().values(audit_seq=seq, user=user, sha256=digest, payload=blob, time_utc=_now())
            )

    def result(self, seq: int) -> tuple[str, dict[str, Any], str] | None:
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(results_table).where(results_table.c.audit_seq == seq)).mappings().first()
        if row is None:
            return None
        return str(row["user"]), json.loads(zlib.decompress(row["payload"])), str(row["sha256"])

    def expired_results(self, before: str) -> list[dict[str, Any]]:
        """Kept results made before ``before`` (ISO time) that no saved release needs (a dp
        release is reproduced from its kept result)."""
        saved = sa.select(releases_table.c.audit_seq)
        query = (
            sa.select(results_table.c.audit_seq, results_table.c.user, results_table.c.time_utc)
            .where(results_table.c.time_utc < before)
            .where(results_table.c.audit_seq.not_in(saved))
            .order_by(results_table.c.audit_seq)
        )
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def dispose_results(self, seqs: list[int]) -> int:
        """Delete the kept results of ``seqs`` (never one a saved release needs); how many went."""
        if not seqs:
            return 0
        saved = sa.select(releases_table.c.audit_seq)
        with transaction(self.engine) as conn:
            gone = conn.execute(
                results_table.delete()
                .where(results_table.c.audit_seq.in_(seqs))
                .where(results_table.c.audit_seq.not_in(saved))
            )
        return int(gone.rowcount or 0)

    def add(self, *, name: str, user: str, audit_seq: int, manifest: dict[str, Any]) -> str:
        release_id = str(manifest["release_id"])
        text = json.dumps(manifest, sort_keys=True, indent=2, default=str)
        with self.engine.begin() as conn:
            digest = hashlib.sha256(text.encode()).hexdigest()
            conn.execute(
                releases_table.insert().values(
                    id=release_id,
                    name=name,
                    user=user,
                    audit_seq=audit_seq,
                    manifest=text,
                    manifest_sha256=digest,
                    time_utc=manifest["created_utc"],
                )
            )
        return release_id

    def get(self, ref: str) -> dict[str, Any] | None:
        """A release by id, or by name (the newest of that name)."""
        t = releases_table
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(t).where(t.c.id == ref)).mappings().first()
            if row is None:
                newest = sa.select(t).where(t.c.name == ref).order_by(t.c.time_utc.desc(), t.c.id.desc())
                row = conn.execute(newest).mappings().first()
        return None if row is None else {**dict(row), "manifest": json.loads(row["manifest"])}

    def list(self, user: str | None = None) -> list[dict[str, Any]]:
        c = releases_table.c
        query = sa.select(c.id, c.name, c.user, c.audit_seq, c.time_utc).order_by(c.time_utc)
        if user is not None:
            query = query.where(releases_table.c.user == user)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
