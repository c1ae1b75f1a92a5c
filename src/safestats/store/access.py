"""Data access requests, the data owner's decisions on them, and the agreements they rest on.

A request asks for tables (all their columns, or a list) for a group, for a purpose, under an
agreement and a legal basis, for a period. It is approved when as many different people as it
needs (two for restricted data: the two-person rule) have approved it; a rejection by anyone
closes it. An approved request grants its tables to the group until its ``until`` day, inclusive;
after that it is expired and grants nothing. Rows are only ever added or moved forward
(pending → approved | rejected; approved → revoked); the audit record of each step names them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from safestats.errors import UserError
from safestats.store.db import reading, transaction
from safestats.store.schema import access_decisions_table, access_requests_table, agreements_table

__all__ = ["AccessStore", "in_force"]

D = access_decisions_table.c
R = access_requests_table.c
# read at every request (the grant check): built once; the groups an expanding bound parameter
_STANDING = (
    sa.select(R.id, R.group_name, R.grants, R.status, R.start_date, R.until, R.decided_utc)
    .where(R.group_name.in_(sa.bindparam("groups", expanding=True)) & R.status.in_(("approved", "revoked")))
    .order_by(R.id)
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def in_force(row: Mapping[str, Any], day: dt.date) -> bool:
    """Whether an approved request's grant holds on ``day`` (from its start to its until, inclusive)."""
    return (
        row["status"] == "approved"
        and str(row["start_date"]) <= day.isoformat()
        and (row["until"] is None or day.isoformat() <= str(row["until"]))
    )


class AccessStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # -- agreements ----------------------------------------------------------------------------
    def add_agreement(self, row: Mapping[str, Any], *, conn: sa.Connection | None = None) -> None:
        with transaction(self.engine, conn) as c:
            if c.execute(
                sa.select(agreements_table.c.reference).where(agreements_table.c.reference == row["reference"])
            ).first():
                raise UserError(f"agreement {row['reference']} is in the register already")
            c.execute(agreements_table.insert().values(**{**row, "parties": json.dumps(list(row["parties"]))}))

    def agreements(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(sa.select(agreements_table).order_by(agreements_table.c.reference)).mappings()
            return [{**r, "parties": json.loads(r["parties"])} for r in rows]

    def agreement(self, reference: str) -> dict[str, Any] | None:
        return next((a for a in self.agreements() if a["reference"] == reference), None)

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, row: Mapping[str, Any], *, conn: sa.Connection | None = None) -> int:
        values = {
            **row,
            "grants": json.dumps(row["grants"], sort_keys=True),
            "status": "pending",
            "created_utc": _now(),
        }
        with transaction(self.engine, conn) as c:
            key = c.execute(access_requests_table.insert().values(**values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def note_record(self, request_id: int, audit_seq: int, *, conn: sa.Connection | None = None) -> None:
        with transaction(self.engine, conn) as c:
            c.execute(access_requests_table.update().where(R.id == request_id).values(audit_seq=audit_seq))

    def requests(self, *, status: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(access_requests_table).order_by(R.id)
        if status is not None:
            query = query.where(R.status == status)
        with reading(self.engine) as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
            decisions = [dict(d) for d in conn.execute(sa.select(access_decisions_table).order_by(D.id)).mappings()]
        for r in rows:
            r["grants"] = json.loads(r["grants"])
            r["decisions"] = [d for d in decisions if d["request_id"] == r["id"]]
        return rows

    def request(self, request_id: int) -> dict[str, Any]:
        found = [r for r in self.requests() if r["id"] == request_id]
        if not found:
            raise UserError(f"no access request {request_id}; list them with `safestats access list`")
        return found[0]

    @staticmethod
    def check_decision(row: Mapping[str, Any], decision: str, by: str) -> None:
        """Refuse a decision the request's standing does not allow (nothing changes)."""
        request_id = row["id"]
        if decision == "revoke":
            if row["status"] != "approved":
                raise UserError(f"access request {request_id} is {row['status']}, not approved: nothing to revoke")
            return
        if row["status"] != "pending":
            raise UserError(f"access request {request_id} is {row['status']} already")
        if decision == "approve" and by == row["requester"]:
            raise UserError("the requester cannot approve their own request (the two-person rule)")
        approvers = {d["by"] for d in row.get("decisions", ()) if d["decision"] == "approve"}
        if decision == "approve" and by in approvers:
            raise UserError(
                f"{by} has approved access request {request_id} already; "
                f"it needs {row['approvals_needed']} different approvers"
            )

    def decide(
        self,
        request_id: int,
        *,
        decision: str,
        by: str,
        os_user: str,
        until: str | None,
        note: str,
        audit_seq: int,
        conn: sa.Connection | None = None,
    ) -> dict[str, Any]:
        """Record one person's decision, checked again under the row's lock; returns the request
        as it now stands. The grant runs to the earliest ``until`` its approvers gave."""
        with transaction(self.engine, conn) as c:
            row = (
                c.execute(sa.select(access_requests_table).where(R.id == request_id).with_for_update())
                .mappings()
                .first()
            )
            if row is None:
                raise UserError(f"no access request {request_id}; list them with `safestats access list`")
            done = [
                dict(d)
                for d in c.execute(sa.select(access_decisions_table).where(D.request_id == request_id)).mappings()
            ]
            self.check_decision({**row, "decisions": done}, decision, by)
            now = _now()
            c.execute(
                access_decisions_table.insert().values(
                    request_id=request_id,
                    decision=decision,
                    by=by,
                    os_user=os_user,
                    until=until,
                    note=note,
                    time_utc=now,
                    audit_seq=audit_seq,
                )
            )
            change: dict[str, Any] = {}
            if decision in ("reject", "revoke"):
                change = {"status": "rejected" if decision == "reject" else "revoked", "decided_utc": now}
            else:
                untils = [str(d["until"]) for d in done if d["decision"] == "approve" and d["until"]]
                if len(untils) + 1 >= row["approvals_needed"]:
                    change = {"status": "approved", "decided_utc": now, "until": min([*untils, str(until)])}
            if change:
                c.execute(access_requests_table.update().where(R.id == request_id).values(**change))
            rows = [dict(r) for r in c.execute(sa.select(access_requests_table).where(R.id == request_id)).mappings()]
            decisions = [
                dict(d)
                for d in c.execute(sa.select(access_decisions_table).where(D.request_id == request_id)).mappings()
            ]
        out = rows[0]
        out["grants"] = json.loads(out["grants"])
        out["decisions"] = decisions
        return out

    def standing_grants(self, groups: tuple[str, ...]) -> list[dict[str, Any]]:
        """The approved and revoked requests of ``groups``, the columns a grant check needs
        (read at every request: one narrow query, no decisions)."""
        with reading(self.engine) as conn:
            rows = [dict(r) for r in conn.execute(_STANDING, {"groups": list(groups)}).mappings()]
        for r in rows:
            r["grants"] = json.loads(r["grants"])
        return rows

    def approved(self) -> list[dict[str, Any]]:
        """Every approved request (in force or expired: :func:`in_force` tells)."""
        return self.requests(status="approved")
