"""Data access requests as records: applied for, approved (by two people for restricted data),
rejected, revoked, expiring — every step audited in the same transaction as the change it makes.

The policy file's group grants are the initial approved requests (``policy:GROUP``: approved by the
policy file, no expiry), so a deployment without any request behaves as before. An approved
request adds its tables (and columns) to its group's grants from its start day to its ``until`` day
inclusive, and no longer: a query after that is refused with the request and the day it expired.
Approvers are named by whoever runs ``safestats access approve`` on the service host (who holds the
store); the audit record also names the operating-system account that ran it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safestats.access.policy import Identity
from safestats.errors import UserError
from safestats.store.access import AccessStore, in_force

__all__ = ["AccessRequests", "parse_grants"]

MAX_TEXT = 2000


def _day(value: Any, what: str) -> str:
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise UserError(f"{what} must be a date YYYY-MM-DD, not {value!r}") from None


def _text(value: Any, what: str) -> str:
    text = " ".join(str(value or "").split())
    if not text:
        raise UserError(f"an access request needs its {what}")
    return text[:MAX_TEXT]


def parse_grants(spec: Any, catalog: Any) -> dict[str, Any]:
    """``{table: "all" | [columns]}`` (or the CLI's ``TABLE`` / ``TABLE:col,col`` strings),
    checked against the catalog. Identifiers are never granted."""
    if isinstance(spec, list | tuple):
        out: dict[str, Any] = {}
        for item in spec:
            table, _, cols = str(item).partition(":")
            out[table.strip()] = "all" if not cols.strip() else [c.strip() for c in cols.split(",") if c.strip()]
        spec = out
    if not isinstance(spec, Mapping) or not spec:
        raise UserError("an access request names the tables it asks for: {table: 'all' or [columns]}")
    grants: dict[str, Any] = {}
    for table, cols in spec.items():
        t = catalog.table(str(table))  # an unknown table is a UserError naming the known ones
        if cols == "all":
            grants[t.name] = "all"
            continue
        if not isinstance(cols, list | tuple) or not cols:
            raise UserError(f"table {t.name}: ask for 'all' or a list of columns")
        unknown = sorted(set(map(str, cols)) - set(t.columns))
        if unknown:
            raise UserError(f"table {t.name} has no column(s) {', '.join(unknown)}")
        ids = sorted(c for c in map(str, cols) if t.columns[c].is_identifier)
        if ids:
            raise UserError(f"identifiers are never granted: {', '.join(ids)}")
        grants[t.name] = sorted(set(map(str, cols)))
    return grants


class AccessRequests:
    """The service's access requests, over its store and its audit log."""

    def __init__(self, service: Any) -> None:
        self.s = service
        self.store = AccessStore(service.audit.engine)

    # -- what a request grants -----------------------------------------------------------------
    def grants_for(self, groups: tuple[str, ...], day: dt.date | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """(tables → columns or None for all) the approved requests of ``groups`` grant on ``day``,
        and (table → why not) for the tables an expired or revoked one no longer grants."""
        day = day or dt.date.today()
        granted: dict[str, set[str] | None] = {}
        lapsed: dict[str, str] = {}
        for r in self.store.standing_grants(tuple(groups)) if groups else []:
            if r["status"] == "approved" and in_force(r, day):
                for table, cols in r["grants"].items():
                    if cols == "all" or granted.get(table, set()) is None:
                        granted[table] = None
                    else:
                        current = granted.setdefault(table, set())
                        assert current is not None
                        current.update(cols)
            elif r["status"] == "revoked":
                for table in r["grants"]:
                    lapsed[table] = f"access request {r['id']} was revoked on {str(r['decided_utc'])[:10]}"
            elif r["until"] is not None and day.isoformat() > str(r["until"]):
                for table in r["grants"]:
                    lapsed[table] = f"access request {r['id']} expired on {r['until']}"
        return {t: (None if c is None else frozenset(c)) for t, c in granted.items()}, {
            t: why for t, why in lapsed.items() if t not in granted
        }

    # -- agreements ----------------------------------------------------------------------------
    def add_agreement(
        self,
        reference: str,
        *,
        title: str,
        parties: list[str],
        legal_basis: str,
        start: str,
        end: str,
        document: Path | None,
        actor: str,
    ) -> dict[str, Any]:
        who = Identity(user=actor, groups=(), organisation="", interaction="ad hoc")
        started = time.perf_counter()
        try:
            reference = _text(reference, "reference")[:100]
            if reference in self.s.policy.agreements or self.store.agreement(reference) is not None:
                raise UserError(f"agreement {reference} is in the register already")
            start, end = _day(start, "--start"), _day(end, "--end")
            if end < start:
                raise UserError(f"the agreement ends ({end}) before it starts ({start})")
            parties = [p.strip() for p in parties if p.strip()]
            if len(parties) < 2:
                raise UserError("an agreement has at least two parties (--party A --party B)")
            row: dict[str, Any] = {
                "reference": reference,
                "title": _text(title, "title")[:300],
                "parties": parties,
                "legal_basis": _text(legal_basis, "legal basis")[:300],
                "start_date": start,
                "end_date": end,
                "document": document.name if document else None,
                "document_sha256": hashlib.sha256(document.read_bytes()).hexdigest() if document else None,
                "added_by": actor,
                "added_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        except UserError as e:
            self.s.recorder.write(
                self.s.recorder.draft(who, "agreement add"), started, outcome="refused", reason=str(e)
            )
            raise
        with self.s.audit.engine.begin() as conn:
            record = self.s.recorder.draft(who, "agreement add")
            record["query"] = {"agreement": {k: v for k, v in row.items() if k not in ("added_by", "added_utc")}}
            heads: list[Any] = []
            seq = self.s.recorder.write(
                record,
                time.perf_counter(),
                outcome="answered",
                reason=f"agreement {reference} added",
                conn=conn,
                heads=heads,
            )
            self.store.add_agreement({**row, "audit_seq": seq}, conn=conn)
        self.s.audit.publish(heads)
        return {**row, "audit_seq": seq}

    def agreements(self) -> list[dict[str, Any]]:
        """The register: the policy file's agreements and those added with the CLI."""
        seeded = [
            {"reference": ref, **spec, "added_by": "policy file", "audit_seq": None}
            for ref, spec in self.s.policy.agreements.items()
        ]
        return sorted([*seeded, *self.store.agreements()], key=lambda a: a["reference"])

    def _agreement(self, reference: str) -> dict[str, Any]:
        for a in self.agreements():
            if a["reference"] == reference:
                return a
        raise UserError(
            f"no agreement {reference!r} in the register; the data owner adds it with `safestats access agreement add`"
        )

    # -- requests ------------------------------------------------------------------------------
    def submit(self, identity: Identity, spec: Mapping[str, Any], *, on_behalf: str | None = None) -> dict[str, Any]:
        """Record an application. Over HTTP the requester is the caller; the data owner may enter
        a paper application for someone (``on_behalf``, with their organisation)."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "access request")
        try:
            known = {"group", "tables", "purpose", "legal_basis", "agreement", "start", "end", "organisation"}
            unknown = sorted(set(spec) - known)
            if unknown:
                raise UserError(
                    f"an access request has no field(s) {', '.join(unknown)}; it has {', '.join(sorted(known))}"
                )
            group = str(spec.get("group") or "")
            if group not in self.s.policy.groups:
                raise UserError(f"no group {group!r} in the policy; groups are: {', '.join(self.s.policy.groups)}")
            grants = parse_grants(spec.get("tables"), self.s.catalog)
            record.update(
                tables=sorted(grants),
                fields_requested=sorted(c for cols in grants.values() if cols != "all" for c in cols),
            )
            agreement = self._agreement(_text(spec.get("agreement"), "agreement reference"))
            start, end = _day(spec.get("start"), "start"), _day(spec.get("end"), "end")
            if end < start:
                raise UserError(f"the period asked for ends ({end}) before it starts ({start})")
            if end > agreement["end_date"] or start < agreement["start_date"]:
                raise UserError(
                    f"the period {start} to {end} is outside agreement {agreement['reference']} "
                    f"({agreement['start_date']} to {agreement['end_date']})"
                )
            restricted = any(self.s.catalog.table(t).restricted for t in grants)
            row = {
                "requester": on_behalf or identity.user,
                "organisation": str(spec.get("organisation") or identity.organisation),
                "group_name": group,
                "purpose": _text(spec.get("purpose"), "purpose"),
                "grants": grants,
                "legal_basis": _text(spec.get("legal_basis"), "legal basis")[:300],
                "agreement": agreement["reference"],
                "start_date": start,
                "end_date": end,
                "restricted": restricted,
                "approvals_needed": 2 if restricted and self.s.policy.two_person_rule else 1,
            }
            if row["organisation"] not in self.s.policy.organisations:
                raise UserError(f"no organisation {row['organisation']!r} in the policy")
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        heads: list[Any] = []
        with self.s.audit.engine.begin() as conn:
            request_id = self.store.add_request(row, conn=conn)
            record["query"] = {"access_request": {"id": request_id, **row}}
            seq = self.s.recorder.write(
                record,
                started,
                outcome="answered",
                reason=f"access request {request_id} recorded, pending",
                conn=conn,
                heads=heads,
            )
            self.store.note_record(request_id, seq, conn=conn)
        self.s.audit.publish(heads)
        return self.store.request(request_id)

    def decide(
        self, request_id: int, decision: str, *, by: str, until: str | None = None, note: str = ""
    ) -> dict[str, Any]:
        """``approve`` (with ``until``), ``reject`` or ``revoke`` a request, as ``by``."""
        started = time.perf_counter()
        who = Identity(user=by, groups=(), organisation="", interaction="ad hoc")
        record = self.s.recorder.draft(who, f"access {decision}")
        os_user = getpass.getuser()
        record["client"] = {**record["client"], "os_user": os_user}
        try:
            by = _text(by, "approver's name (--by)")[:200]
            request = self.store.request(int(request_id))
            record.update(tables=sorted(request["grants"]))
            if decision == "approve":
                until = _day(until, "--until")
                if until < request["start_date"]:
                    raise UserError(f"--until {until} is before the request's start ({request['start_date']})")
                agreement = self._agreement(request["agreement"])
                if until > agreement["end_date"]:
                    raise UserError(
                        f"--until {until} is after agreement {agreement['reference']} ends ({agreement['end_date']})"
                    )
            elif not note.strip():
                raise UserError(f"say why: --reason TEXT (a {decision} is recorded with its reason)")
            self.store.check_decision(request, decision, by)
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        heads: list[Any] = []
        record["query"] = {"access_decision": {"request": int(request_id), "decision": decision, "until": until}}
        reason = f"access request {request_id}: {decision} by {by}" + (f" until {until}" if until else "")
        try:
            with self.s.audit.engine.begin() as conn:
                seq = self.s.recorder.write(
                    dict(record),
                    started,
                    outcome="answered",
                    reason=reason + (f": {note.strip()}" if note.strip() else ""),
                    conn=conn,
                    heads=heads,
                )
                after = self.store.decide(  # checked again under the row's lock: a concurrent decision
                    int(request_id),
                    decision=decision,
                    by=by,
                    os_user=os_user,
                    until=until,
                    note=note.strip(),
                    audit_seq=seq,
                    conn=conn,
                )
        except UserError as e:  # the decision and its record rolled back together; the refusal is recorded
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        self.s.audit.publish(heads)
        return after

    # -- over the wire (query/wire.py) -----------------------------------------------------------
    def apply(self, application: Mapping[str, Any], *, identity: Identity) -> dict[str, Any]:
        """An analyst's own application: the requester and organisation are the caller's."""
        if "organisation" in application:
            raise UserError("your organisation is the one the service knows you by; leave it out")
        r = self.submit(identity, application)
        return {"request": _public(r)}

    def mine(self, *, identity: Identity) -> dict[str, Any]:
        """The caller's own requests and where each stands (audited)."""
        record = self.s.recorder.draft(identity, "access requests")
        rows = [_public(r) for r in self.store.requests() if r["requester"] == identity.user]
        self.s.recorder.write(record, time.perf_counter(), outcome="answered", reason="")
        return {"requests": rows}

    # -- what the reports show -----------------------------------------------------------------
    def register(self, day: dt.date | None = None) -> list[dict[str, Any]]:
        """Every grant with its standing: the policy file's (approved by the policy file, no
        expiry) and each request's, in force, expired, pending, rejected or revoked on ``day``."""
        day = day or dt.date.today()
        policy_sha = hashlib.sha256(Path(self.s.policy.path).read_bytes()).hexdigest()
        out: list[dict[str, Any]] = []
        for name, group in self.s.policy.groups.items():
            out.append(
                {
                    "id": f"policy:{name}",
                    "group": name,
                    "requester": "policy file",
                    "organisation": "",
                    "purpose": group.description,
                    "grants": {t: ("all" if c is None else sorted(c)) for t, c in group.grants.items()},
                    "legal_basis": (self.s.policy.agreements.get(group.agreement) or {}).get("legal_basis", ""),
                    "agreement": group.agreement or "",
                    "approved_by": [f"policy file (sha256 {policy_sha[:12]})"],
                    "until": None,
                    "standing": "in force",
                }
            )
        for r in self.store.requests():
            if r["status"] == "approved":
                standing = (
                    "in force"
                    if in_force(r, day)
                    else ("expired" if r["until"] and day.isoformat() > r["until"] else "not started")
                )
            else:
                standing = r["status"]
            out.append(
                {
                    "id": r["id"],
                    "group": r["group_name"],
                    "requester": r["requester"],
                    "organisation": r["organisation"],
                    "purpose": r["purpose"],
                    "grants": r["grants"],
                    "legal_basis": r["legal_basis"],
                    "agreement": r["agreement"],
                    "period": f"{r['start_date']} to {r['end_date']}",
                    "restricted": r["restricted"],
                    "approvals_needed": r["approvals_needed"],
                    "approved_by": [d["by"] for d in r["decisions"] if d["decision"] == "approve"],
                    "decisions": [
                        {k: d[k] for k in ("decision", "by", "os_user", "until", "note", "time_utc", "audit_seq")}
                        for d in r["decisions"]
                    ],
                    "until": r["until"],
                    "standing": standing,
                    "created_utc": r["created_utc"],
                    "decided_utc": r["decided_utc"],
                    "audit_seq": r["audit_seq"],
                }
            )
        return out


def _public(r: Mapping[str, Any]) -> dict[str, Any]:
    """What a requester sees of their request: its terms, standing and decisions (approvers by name)."""
    keys = (
        "id",
        "group_name",
        "purpose",
        "grants",
        "legal_basis",
        "agreement",
        "start_date",
        "end_date",
        "restricted",
        "approvals_needed",
        "status",
        "until",
        "created_utc",
        "decided_utc",
    )
    out = {k: r.get(k) for k in keys}
    out["decisions"] = [
        {k: d[k] for k in ("decision", "by", "until", "note", "time_utc")} for d in r.get("decisions", [])
    ]
    return out
