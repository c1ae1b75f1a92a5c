"""Incidents found in the audit log: kept once each, acknowledged by the data owner with a note."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from safestats.errors import UserError
from safestats.store.db import reading, transaction
from safestats.store.schema import incidents_table

__all__ = ["IncidentStore"]


class IncidentStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add_new(self, found: Iterable[Any]) -> list[dict[str, Any]]:
        """Keep the incidents not kept before; returns the new ones with their ids. One is kept
        before when an incident of the same rule and user covers an overlapping run of records,
        or — for a once-a-day rule (its detail ends "on <day>") — the same day: the service's
        check at every request sees a window of the log and ``incidents scan`` the whole of it,
        and they must find each incident once."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        added = []
        with transaction(self.engine) as conn:
            for i in found:
                same = (incidents_table.c.rule == i.rule) & (incidents_table.c.user == i.user)
                overlap = (incidents_table.c.first_seq <= i.last_seq) & (incidents_table.c.last_seq >= i.first_seq)
                day = str(i.detail).rsplit(" on ", 1)[-1] if " on " in str(i.detail) else ""
                daily = incidents_table.c.detail.like(f"% on {day}") if len(day) == 10 and day[4] == "-" else sa.false()
                exists = conn.execute(sa.select(incidents_table.c.id).where(same & (overlap | daily))).first()
                if exists is not None:
                    continue
                row = {
                    "rule": i.rule,
                    "user": i.user,
                    "first_seq": i.first_seq,
                    "last_seq": i.last_seq,
                    "count": i.count,
                    "time_utc": i.time_utc,
                    "detail": i.detail,
                    "detected_utc": now,
                }
                key = conn.execute(incidents_table.insert().values(**row)).inserted_primary_key
                assert key is not None
                added.append({"id": int(key[0]), **row})
        return added

    def note_record(self, incident_id: int, audit_seq: int) -> None:
        with transaction(self.engine) as conn:
            conn.execute(
                incidents_table.update().where(incidents_table.c.id == incident_id).values(audit_seq=audit_seq)
            )

    def list(self, *, open_only: bool = False) -> list[dict[str, Any]]:
        query = sa.select(incidents_table).order_by(incidents_table.c.id)
        if open_only:
            query = query.where(incidents_table.c.acknowledged_utc.is_(None))
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def acknowledge(self, incident_id: int, *, by: str, note: str) -> None:
        if not note.strip():
            raise UserError("say what was found or done: --note TEXT")
        with transaction(self.engine) as conn:
            row = conn.execute(sa.select(incidents_table).where(incidents_table.c.id == incident_id)).mappings().first()
            if row is None:
                raise UserError(f"no incident {incident_id}; list them with `safestats incidents report`")
            if row["acknowledged_utc"]:
                raise UserError(f"incident {incident_id} was acknowledged by {row['acknowledged_by']} already")
            conn.execute(
                incidents_table.update()
                .where(incidents_table.c.id == incident_id)
                .values(
                    acknowledged_by=by,
                    acknowledged_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    note=note.strip()[:2000],
                )
            )
