"""One document that answers the seed FOI request for a period, from the system itself.

The request (docs/CONTEXT of the project: a campaigner's questions about the school census's
nationality data) is answered question by question from what the service holds — the audit log
(verified first, and the signed tree head named), the policy, the catalog — and each answer says
where it comes from. What the system does not hold is said as plainly, never filled in:

- (a) approved application forms — the data access requests (service/access_requests.py): who
  asked, for what purpose, which tables and fields, under which agreement and legal basis, who
  approved them, when, and until when (the policy file's grants are the initial approvals);
- (b) individuals asked about and matched, per month — safestats releases aggregates only, so no
  individual is asked about or matched; the honest analogue is given: per organisation and month,
  the requests, releases and refusals and the pupil records the releases were computed from
  (rounded; a band for small numbers: the exact per-request counts stay in the audit log);
- (c) field names used and returned, per request — from the audit trail;
- (d) the database holding the nationality data — the catalog's dataset and its tables;
- (e) agreements in force — the agreements register (policy file and `safestats access agreement add`);
- (f) an audit trail of each and every use — every record in the period, human and machine;
- (g) users, permissions and table contents — the access report (names withheld by default);
- (h) regular publication — the transparency report for the period, and whether the schedule
  publishes it (the shipped one does, monthly: ``service/publishing.py``).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from safestats.audit.log import AuditLog
from safestats.audit.reports import TRAIL_COLUMNS, access_report, audit_trail, transparency

__all__ = ["QUESTIONS", "foi_answer", "render_foi"]

#: what (c) gives of each data request: the audit trail's columns but the reasons, cells and spend
REQUEST_FIELDS = tuple(
    c
    for c in TRAIL_COLUMNS
    if c not in ("groups", "reason", "cells_released", "cells_suppressed", "privacy_spent", "label", "records_used")
)
#: what an FOI answer never carries of an audit record: the exact records used by one request
#: (the count of pupils its filters select) — (b) gives them per organisation and month, rounded
WITHHELD = ("records_used",)

QUESTIONS = {
    "a": "the approved application forms for access to the data",
    "b": "the number of individuals asked about and the number matched, per month",
    "c": "the field names used to run each data request and the field names returned",
    "d": "the name of the database holding the nationality data collected by the school census",
    "e": "the agreements under which the data is shared",
    "f": "a machine generated audit trail log report of each and every use of that database",
    "g": "the users of each group, the permissions of each group and the contents of each table",
    "h": "whether the volume of such use is published regularly",
}


def foi_answer(
    log: AuditLog,
    policy: Any,
    catalog: Any,
    managed_users: Mapping[str, Mapping[str, Any]],
    start: str,
    end: str,
    *,
    redact: bool = True,
    key: bytes = b"",
    names: Iterable[str] = (),
    schedule: Mapping[str, Any] | None = None,
    register: Sequence[Mapping[str, Any]] = (),
    agreements: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The answer for [start, end): each question's answer, its source and the reports it rests on."""
    trail = audit_trail(log, start, end, redact=redact, key=key, names=names)
    access = access_report(
        policy, catalog, managed_users, log, redact=redact, key=key, register=register, agreements=agreements
    )
    volume = transparency(log, "", bounds=(start, end), rounding=policy.records_rounding)
    records = [{k: v for k, v in r.items() if k not in WITHHELD} for r in trail["records"]]
    last_day = trail["period"]["last_day"]
    decided = [
        e
        for g in access["grants"].values()
        for e in g
        if str(e["id"]).startswith("policy:") or e["standing"] in ("in force", "expired", "revoked", "not started")
    ]
    in_period = [a for a in agreements if str(a["start_date"]) <= last_day and str(a["end_date"]) >= start[:10]]
    requests = [r for r in records if r["operation"] in ("query", "sql", "preview", "reproduce")]
    nationality = sorted(t.name for t in catalog.tables.values() if "nationality" in t.columns)
    scheduled = [e for e in (schedule or {}).get("reports", []) if str(e.get("name", "")).startswith("transparency")]
    answers = {
        "a": {
            "held": True,
            "answer": f"{len(decided)} approved grants: the policy file's (the initial approvals, one per "
            "directory group) and each approved data access request, with who asked, for what purpose, "
            "the tables and fields, the agreement and legal basis, who approved it and until when; "
            "expired and revoked ones are listed as such.",
            "applications": [
                {
                    "request": e["id"],
                    "group": g,
                    "requester": e["requester"],
                    "organisation": e["organisation"],
                    "purpose": e["purpose"],
                    "tables": e["grants"],
                    "legal_basis": e["legal_basis"],
                    "agreement": e["agreement"],
                    "approved_by": e["approved_by"],
                    "until": e["until"] or "no expiry",
                    "standing": e["standing"],
                }
                for g, entries in access["grants"].items()
                for e in entries
                if e in decided
            ],
            "source": f"data access requests (the service's store) and the access policy {policy.path}",
        },
        "b": {
            "held": True,
            "answer": "No individual is asked about or matched: safestats returns aggregates only. Below, per "
            "organisation and month: the requests, releases and refusals, and the pupil records the releases "
            f"were computed from (each release's distinct pupils in scope, added up; rounded to the nearest "
            f"{policy.records_rounding:,})"
            ".",
            "volume": volume["volume"],
            "source": "audit log (transparency)",
        },
        "c": {
            "held": True,
            "answer": f"{len(requests)} data requests in the period; each with the fields it filtered, "
            "grouped and measured on and the fields it returned.",
            "requests": [{k: r[k] for k in REQUEST_FIELDS} for r in requests],
            "source": "audit log (audit trail)",
        },
        "d": {
            "held": True,
            "answer": f"The {catalog.dataset} store; the nationality data is in "
            f"{', '.join(nationality) or 'no table'}, read only through the safestats service.",
            "dataset": catalog.dataset,
            "tables": {t: access["tables"][t]["classification"] for t in nationality},
            "source": "catalog",
        },
        "e": {
            "held": bool(agreements),
            "answer": f"{len(in_period)} agreement(s) in force in the period"
            + (f" of the {len(agreements)} in the register" if len(agreements) != len(in_period) else "")
            + "; each with its parties, legal basis, dates and the signed document's checksum where held.",
            "agreements": [
                {k: a.get(k) for k in ("reference", "title", "parties", "legal_basis", "start_date", "end_date")}
                | {"document_sha256": a.get("document_sha256") or "not held", "in_force": a in in_period}
                for a in agreements
            ],
            "source": "agreements register (the access policy and the service's store)",
        },
        "f": {
            "held": True,
            "answer": f"{len(records)} audit records in the period, every request answered or refused, "
            "of people and of scheduled jobs: "
            + ", ".join(f"{k} {v}" for k, v in trail["summary"]["by_interaction"].items()),
            "summary": trail["summary"],
            "records": records,
            "source": "audit log (audit trail)",
        },
        "g": {
            "held": True,
            "answer": "The members of each group"
            + (" (names withheld: stable pseudonyms)" if redact else "")
            + ", the permissions of each group (select only) and the contents of each table.",
            "groups": access["groups"],
            "permissions": access["permissions"],
            "tables": access["tables"],
            "source": "access policy, the service's users, catalog",
        },
        "h": {
            "held": True,
            "answer": (
                "The volume of use is published on a schedule: " + ", ".join(str(e.get("cron")) for e in scheduled)
                if scheduled
                else "The volume of use (the transparency report below) is produced on request with "
                "`safestats audit transparency`; the report schedule does not publish it yet."
            ),
            "transparency": {k: volume[k] for k in ("definitions", "volume")},
            "source": "audit log (transparency), report schedule",
        },
    }
    return {
        "report": "FOI answer",
        "period": trail["period"],
        "produced_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "software": trail["software"],
        "log_verification": trail["log_verification"],
        "tree_head": trail["tree_head"],
        "users_redacted": redact,
        "questions": QUESTIONS,
        "answers": answers,
    }


def render_foi(answer: Mapping[str, Any], fmt: str) -> str:
    """The answer as JSON or as one HTML page, question by question."""
    if fmt == "json":
        return json.dumps(answer, indent=2, default=str)
    v = answer["log_verification"]
    head = answer.get("tree_head") or {}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(answer.get('marking', ''))} FOI answer {answer['period']['from']} to "
        f"{answer['period']['last_day']}</title>",
        "<style>body{font:14px sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #b1b4b6;padding:2px 6px;text-align:left}"
        ".no{color:#b10e1e}.marking{color:#fff;font-weight:bold;padding:4px 8px}</style></head><body>",
    ]
    if answer.get("marking"):
        from safestats.marking import colour

        banner = (
            f'<p class="marking" style="background:{colour(answer.get("label", ""))}">'
            f"{html.escape(answer['marking'])} {html.escape(answer.get('handling', ''))}</p>"
        )
        parts.append(banner)
    parts.append(
        f"<h1>Answer to the request for {answer['period']['from']} to {answer['period']['last_day']}</h1>"
        f"<p>Produced {html.escape(answer['produced_utc'])} by {html.escape(answer['software'])}. Audit log: "
        f"{'VERIFIED' if v['ok'] else 'NOT VERIFIED'} — {html.escape(v['detail'])}"
        + (
            f"; signed tree head of {head.get('size')} records, root {html.escape(str(head.get('root')))}"
            if head
            else ""
        )
        + ".</p>"
    )
    for letter, question in answer["questions"].items():
        a = answer["answers"][letter]
        held = a["held"]
        mark = (
            "" if held is True else f' <span class="no">({"held in part" if held == "in part" else "not held"})</span>'
        )
        parts.append(f"<h2>({letter}) {html.escape(question)}</h2><p>{html.escape(a['answer'])}{mark}</p>")
        parts.append(f"<p><i>Source: {html.escape(str(a['source']))}</i></p>")
        rows = (
            a.get("applications")
            or a.get("agreements")
            or a.get("requests")
            or a.get("volume")
            or (a.get("transparency") or {}).get("volume")
        )
        if rows:
            cols = list(rows[0])
            parts.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                    for r in rows
                )
                + "</table>"
            )
    if answer.get("marking"):
        parts.append(banner)
    parts.append("</body></html>")
    return "".join(parts)


def _cell(value: Any) -> str:
    """A table cell: lists joined, mappings as ``key: value`` pairs."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value)
