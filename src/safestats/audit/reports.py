"""Reports a data owner can publish: the audit trail, the access report, the transparency report.

Each report states its period, when and by which software version it was produced, and the
verification status of the log it was made from; producing one is itself audited (by the
caller, :func:`safestats.service.pipeline.Service.audit_admin`). With ``redact=True`` user
names become stable pseudonyms (an HMAC of the name under the service's key), so a published
report withholds names but still shows which requests came from the same person.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import html
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from safestats.__about__ import __version__
from safestats.audit.log import AuditLog

__all__ = ["access_report", "audit_trail", "pseudonym", "render", "transparency"]

TRAIL_COLUMNS = (
    "seq",
    "time_utc",
    "user",
    "groups",
    "organisation",
    "interaction",
    "operation",
    "tables",
    "fields_filter",
    "fields_group",
    "fields_measure",
    "fields_returned",
    "outcome",
    "reason",
    "cells_released",
    "cells_suppressed",
    "privacy_spent",
    "label",
    "purpose",
    "records_used",
)


def pseudonym(name: str, key: bytes) -> str:
    """A stable pseudonym for a user name: the same name, the same pseudonym, under one key."""
    return "user-" + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:10]


def _header(kind: str, start: str, end: str, log: AuditLog, redact: bool) -> dict[str, Any]:
    report = log.verify()
    head = log.sign_head() or log.latest_head()  # the report names the signed head it was read at
    return {
        "report": kind,
        "tree_head": head.to_dict() if head is not None else None,
        "period": {"from": start, "to": end, "last_day": _last_day(end)},  # [from, to); last_day inclusive
        "produced_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "software": f"safestats {__version__}",
        "log_verification": {"ok": report.ok, "records": report.records, "detail": str(report)},
        "users_redacted": redact,
    }


def _last_day(end: str) -> str:
    """The inclusive last day of a period that ends (exclusive) at ``end``."""
    try:
        return (dt.date.fromisoformat(end[:10]) - dt.timedelta(days=1)).isoformat()
    except ValueError:
        return end


#: what the transparency report's columns count (printed with it)
DEFINITIONS = {
    "requests": "every request recorded: answered, released, refused or failed, including the data "
    "owner's administration",
    "releases": "requests whose result was released (a table of aggregates, after disclosure control)",
    "refusals": "requests refused (not allowed, not safe to release, malformed, unauthenticated)",
    "other": "requests neither released nor refused: metadata answered (catalog, budget, "
    "previews, sessions), administration, and failures",
}


def _who(name: str, redact: bool, key: bytes) -> str:
    return pseudonym(name, key) if redact and name else name


def audit_trail(
    log: AuditLog, start: str, end: str, *, redact: bool = False, key: bytes = b"", names: Iterable[str] = ()
) -> dict[str, Any]:
    """Every request in [start, end) in time order, then summaries by month, interaction type,
    table and outcome. With ``redact``, user names — of the records and ``names``, wherever they
    appear — become pseudonyms."""
    import sqlalchemy as sa

    from safestats.store.db import reading
    from safestats.store.schema import audit_table

    # the stored columns behind the trail's: the spend is read from the privacy field
    cols = tuple("privacy" if c == "privacy_spent" else c for c in TRAIL_COLUMNS)
    t = audit_table.c
    query = sa.select(*(t[c] for c in cols)).where((t.time_utc >= start) & (t.time_utc < end)).order_by(t.seq)
    with reading(log.engine) as conn:
        records = conn.execute(query).all()  # read as stored: lists are JSON text, decoded below
    known = sorted({*names, *(r[2] for r in records if r[2])}, key=len, reverse=True)

    def joined(text: str | None) -> str:
        return ",".join(json.loads(text)) if text else ""

    rows = []
    for (
        seq,
        time_utc,
        user,
        groups,
        org,
        interaction,
        operation,
        tables_,
        f_filter,
        f_group,
        f_measure,
        f_returned,
        outcome,
        reason,
        released,
        suppressed,
        privacy,
        label,
        purpose,
        records_used,
    ) in records:
        spent = json.loads(privacy).get("spent", "") if privacy else ""
        rows.append(
            {
                "seq": seq,
                "time_utc": time_utc,
                "user": _who(user or "", redact, key),
                "groups": joined(groups),
                "organisation": org or "",
                "interaction": interaction or "",
                "operation": operation or "",
                "tables": joined(tables_),
                "fields_filter": joined(f_filter),
                "fields_group": joined(f_group),
                "fields_measure": joined(f_measure),
                "fields_returned": joined(f_returned),
                "outcome": outcome or "",
                "reason": _redact_text(reason or "", redact, key, known),
                "cells_released": released or 0,
                "cells_suppressed": suppressed or 0,
                "privacy_spent": str(spent),
                "label": label or "",
                "purpose": _redact_text(purpose or "", redact, key, known),
                "records_used": "" if records_used is None else int(records_used),
            }
        )
    tables = Counter(t for row in rows for t in row["tables"].split(",") if t)
    summary = {
        "requests": len(rows),
        "by_month": dict(sorted(Counter(row["time_utc"][:7] for row in rows).items())),
        "by_interaction": dict(sorted(Counter(row["interaction"] for row in rows).items())),
        "by_table": dict(sorted(tables.items())),
        "by_outcome": dict(sorted(Counter(row["outcome"] for row in rows).items())),
    }
    return _header("audit trail", start, end, log, redact) | {"records": rows, "summary": summary}


def _redact_text(text: str, redact: bool, key: bytes, names: list[str]) -> str:
    if redact:
        for name in names:  # longest first, so no name is replaced inside another
            if name in text:
                text = text.replace(name, pseudonym(name, key))
    return text


def access_report(
    policy: Any,
    catalog: Any,
    managed_users: Mapping[str, Mapping[str, Any]],
    log: AuditLog,
    *,
    redact: bool = False,
    key: bytes = b"",
    register: Sequence[Mapping[str, Any]] = (),
    agreements: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Members of each group, the permission matrix (select only), the contents of each table,
    and — given the access ``register`` (service/access_requests.py) and the ``agreements`` —
    for each group the grants it holds: the agreement, who approved them, until when, and what
    expired."""
    users = {**managed_users, **policy.users}
    members = {g: sorted(_who(u, redact, key) for u, e in users.items() if g in e["groups"]) for g in policy.groups}
    matrix: dict[str, dict[str, Any]] = {}
    for g, group in policy.groups.items():
        matrix[g] = {}
        for table in catalog.tables.values():
            grant = group.grants.get(table.name, "none")
            if grant == "none":
                matrix[g][table.name] = "no access"
            elif grant is None:
                matrix[g][table.name] = "select: all columns"
            else:
                matrix[g][table.name] = "select: " + ", ".join(sorted(grant))
    for r in register:  # the approved access requests in force add to their group's grants
        if r["standing"] != "in force" or str(r["id"]).startswith("policy:") or r["group"] not in matrix:
            continue
        for table, cols in r["grants"].items():
            what = "all columns" if cols == "all" else ", ".join(cols)
            matrix[r["group"]][table] = (
                f"{matrix[r['group']][table]}; " if matrix[r["group"]][table] != "no access" else ""
            ) + f"select: {what} (access request {r['id']}, until {r['until']})"
    by_group: dict[str, list[dict[str, Any]]] = {g: [] for g in policy.groups}
    for r in register:
        entry = {
            k: r.get(k)
            for k in ("id", "requester", "organisation", "purpose", "grants", "legal_basis", "agreement", "until")
        }
        entry["requester"] = _who(str(entry["requester"] or ""), redact and entry["requester"] != "policy file", key)
        entry["approved_by"] = [
            a if a.startswith("policy file") else _who(a, redact, key) for a in r.get("approved_by") or []
        ]
        entry["standing"] = r["standing"]
        by_group.setdefault(r["group"], []).append(entry)
    contents = {
        t.name: {
            "description": t.description,
            "classification": t.classification,
            "restricted": t.restricted,
            "columns": [
                {
                    "name": c.name,
                    "type": c.type,
                    "role": c.role,
                    "classification": c.classification,
                    "description": c.description,
                }
                for c in t.columns.values()
            ],
        }
        for t in catalog.tables.values()
    }
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return _header("access", now, now, log, redact) | {
        "groups": {g: {"description": policy.groups[g].description, "members": m} for g, m in members.items()},
        "permissions": matrix,
        "grants": by_group,
        "agreements": [
            {
                k: a.get(k)
                for k in ("reference", "title", "parties", "legal_basis", "start_date", "end_date", "document_sha256")
            }
            for a in agreements
        ],
        "tables": contents,
        "note": "the only operation any group has is select; identifiers are never usable in a query",
    }


def _period_bounds(period: str) -> tuple[str, str]:
    """'2017-Q1' -> ('2017-01-01', '2017-04-01'); '2017-03' and '2017' work too."""
    try:
        if "-Q" in period:
            y, q = (int(x) for x in period.split("-Q"))
            first = (q - 1) * 3 + 1
            start = dt.date(y, first, 1)
            end = dt.date(y + (first + 3 > 12), (first + 2) % 12 + 1, 1)
        elif len(period) == 7:
            year, month = (int(x) for x in period.split("-"))
            start, end = dt.date(year, month, 1), dt.date(year + (month == 12), month % 12 + 1, 1)
        else:
            start, end = dt.date(int(period), 1, 1), dt.date(int(period) + 1, 1, 1)
    except ValueError:
        from safestats.errors import UserError

        raise UserError(f"period {period!r} is not like 2017-Q1, 2017-03 or 2017") from None
    return start.isoformat(), end.isoformat()


def records_band(n: int, rounding: int) -> str:
    """A published count of records used: rounded to ``rounding``, with 1 to ``rounding`` − 1
    shown as a band (what the transparency report and the FOI answer print)."""
    if n <= 0:
        return "0"
    if n < rounding:
        return f"fewer than {rounding:,}"
    return f"{int(n / rounding + 0.5) * rounding:,}"


PURPOSES_SHOWN = 5


def transparency(
    log: AuditLog, period: str, *, bounds: tuple[str, str] | None = None, rounding: int = 1000
) -> dict[str, Any]:
    """Volume of use by organisation and month: requests, releases and refusals, the pupil records
    the releases used (rounded to ``rounding``: a band below it) and the purposes declared, for
    ``period`` (a quarter, month or year) or, given ``bounds``, the days [start, end) it is named for."""
    import sqlalchemy as sa

    from safestats.store.db import reading
    from safestats.store.schema import audit_table

    start, end = bounds or _period_bounds(period)
    t = audit_table.c
    month = sa.func.substr(t.time_utc, 1, 7)
    released = t.outcome == "released"
    query = (
        sa.select(
            t.organisation,
            month.label("month"),
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((released, 1), else_=0)).label("releases"),
            sa.func.sum(sa.case((t.outcome == "refused", 1), else_=0)).label("refusals"),
            sa.func.sum(sa.case((released, sa.func.coalesce(t.records_used, 0)), else_=0)).label("used"),
        )
        .where((t.time_utc >= start) & (t.time_utc < end))
        .group_by(t.organisation, month)
    )
    said = (
        sa.select(t.organisation, month.label("month"), t.purpose)
        .where((t.time_utc >= start) & (t.time_utc < end) & t.purpose.is_not(None))
        .distinct()
    )
    with reading(log.engine) as conn:
        result = conn.execute(query).all()
        purposes: dict[tuple[str, str], list[str]] = {}
        for org, m, text in conn.execute(said).all():
            purposes.setdefault((org or "", m), []).append(str(text))
    rows = []
    for org, m, n, rel, ref, used in result:
        declared = sorted(purposes.get((org or "", m), []))
        shown = "; ".join(declared[:PURPOSES_SHOWN]) + (
            f"; and {len(declared) - PURPOSES_SHOWN} more" if len(declared) > PURPOSES_SHOWN else ""
        )
        rows.append(
            {
                "organisation": org or "(data owner)",
                "month": m,
                "requests": int(n),
                "releases": int(rel or 0),
                "refusals": int(ref or 0),
                "other": int(n) - int(rel or 0) - int(ref or 0),
                "records_used": records_band(int(used or 0), rounding),
                "purposes": shown,
            }
        )
    rows.sort(key=lambda r: (r["organisation"], r["month"]))
    total_used = sum(int(u or 0) for *_, u in result)
    totals = {
        "organisation": "Total",
        "month": period,
        **{k: sum(int(r[k]) for r in rows) for k in ("requests", "releases", "refusals", "other")},
        "records_used": records_band(total_used, rounding),
        "purposes": "",
    }
    return _header("transparency", start, end, log, True) | {
        "period_name": period,
        "definitions": DEFINITIONS
        | {
            "records_used": f"pupil records the releases were computed from: for each release, the distinct "
            f"pupils in its query's scope (the rows its filters select), added up over the month's releases "
            f"(a pupil counts once per release); rounded to the nearest {rounding:,}, and shown as "
            f"'fewer than {rounding:,}' below that",
            "purposes": "the purposes the requests declared (connect(purpose=...)), as declared",
        },
        "volume": [*rows, totals],
    }


def render(report: Mapping[str, Any], fmt: str) -> str:
    """The report as JSON, CSV (its main table, the header as comment lines) or readable HTML."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False, default=str)
    rows, columns = _main_table(report)
    if fmt == "csv":
        out = io.StringIO()
        marking = [f"# {report['marking']}\n"] if report.get("marking") else []
        out.writelines(marking)
        for line in _header_lines(report):
            out.write(f"# {line}\n")
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        out.writelines(marking)
        return out.getvalue()
    if fmt == "html":
        return _html(report, rows, columns)
    from safestats.errors import UserError

    raise UserError(f"unknown format {fmt!r}; use html, csv or json")


def _main_table(report: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    kind = report["report"]
    if kind == "audit trail":
        return list(report["records"]), list(TRAIL_COLUMNS)
    if kind == "transparency":
        columns = ["organisation", "month", "requests", "releases", "refusals", "other", "records_used", "purposes"]
        return list(report["volume"]), columns
    rows = [
        {"group": g, "table": t, "permission": p}
        for g, tables in report["permissions"].items()
        for t, p in tables.items()
    ]
    for g, entries in (report.get("grants") or {}).items():  # each access request, whatever its standing
        for e in entries:
            if str(e["id"]).startswith("policy:"):
                continue
            approvers = ", ".join(e["approved_by"]) or "nobody yet"
            rows.append(
                {
                    "group": g,
                    "table": ", ".join(e["grants"]),
                    "permission": f"access request {e['id']}: {e['standing']}, until {e['until'] or '-'}, "
                    f"agreement {e['agreement']}, approved by {approvers}",
                }
            )
    return rows, ["group", "table", "permission"]


def _header_lines(report: Mapping[str, Any]) -> list[str]:
    v = report["log_verification"]
    status = "VERIFIED" if v["ok"] else "NOT VERIFIED — THE LOG FAILED VERIFICATION"
    return [
        f"safestats {report['report']} report",
        f"period: {report['period']['from']} to {report['period'].get('last_day') or report['period']['to']} "
        "(inclusive)",
        *([f"{name}: {text}" for name, text in report["definitions"].items()] if report.get("definitions") else []),
        f"produced {report['produced_utc']} by {report['software']}",
        f"audit log: {status}: {v['detail']}",
        *(
            [f"signed tree head: {h['size']} records, root {h['root']}, key {h['key_id']}, {h['time_utc']}"]
            if (h := report.get("tree_head"))
            else []
        ),
        f"user names: {'withheld (stable pseudonyms)' if report['users_redacted'] else 'shown'}",
        *([f"handling: {report['handling']}"] if report.get("handling") else []),
    ]


def _table_html(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(counts: Mapping[str, int], title: str) -> str:
    """A small inline SVG bar chart (use over time), no external assets."""
    if not counts:
        return ""
    top = max(counts.values()) or 1
    left = 10 + 7 * max(len(str(k)) for k in counts)  # labels never run into the bars (12 px text)
    bars = "".join(
        f'<g transform="translate(0,{i * 22})"><text x="0" y="15" font-size="12">{html.escape(k)}</text>'
        f'<rect x="{left}" y="3" height="16" width="{300 * v / top:.1f}" fill="#1d70b8"/>'
        f'<text x="{left + 6 + 300 * v / top:.1f}" y="15" font-size="12">{v}</text></g>'
        for i, (k, v) in enumerate(counts.items())
    )
    return f'<h3>{html.escape(title)}</h3><svg width="{left + 380}" height="{22 * len(counts) + 4}">{bars}</svg>'


def _html(report: Mapping[str, Any], rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in _header_lines(report))
    ok = report["log_verification"]["ok"]
    alert = (
        ""
        if ok
        else ('<p class="alert">WARNING: the audit log failed verification; this report may be incomplete.</p>')
    )
    charts = ""
    if report["report"] == "audit trail":
        s = report["summary"]
        charts = (
            _bars(s["by_month"], "Requests by month")
            + _bars(s["by_interaction"], "By interaction type")
            + _bars(s["by_table"], "By table")
            + _bars(s["by_outcome"], "By outcome")
        )
    extra = ""
    if report["report"] == "access":
        groups = "".join(
            f"<h3>{html.escape(g)}</h3><p>{html.escape(info['description'])}</p><p>members: "
            f"{html.escape(', '.join(info['members']) or '(none)')}</p>"
            for g, info in report["groups"].items()
        )
        tables = "".join(
            f"<h3>{html.escape(t)} ({html.escape(info['classification'])}"
            f"{', restricted' if info['restricted'] else ''})</h3>"
            + _table_html(info["columns"], ["name", "type", "role", "classification", "description"])
            for t, info in report["tables"].items()
        )
        extra = f"<h2>Groups and members</h2>{groups}<h2>Contents of each table</h2>{tables}"
    style = (
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #b1b4b6;padding:2px 6px;text-align:left}.alert{color:#fff;background:#b10e1e;"
        "padding:6px;font-weight:bold}</style>"
    )
    banner, title = "", html.escape(report["report"])
    if report.get("marking"):
        from safestats.marking import colour

        mark = html.escape(report["marking"])
        banner = (
            f'<p class="marking" style="background:{colour(report.get("label", ""))}">{mark} '
            f'<span class="handling">{html.escape(report.get("handling", ""))}</span></p>'
        )
        title = f"[{mark}] {title}"
        style += (
            "<style>.marking{color:#fff;font-weight:bold;padding:4px 8px;letter-spacing:.05em}"
            ".handling{font-weight:normal;letter-spacing:0;margin-left:.6em}</style>"
        )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>safestats {title}"
        f"</title>{style}</head><body>{banner}<h1>safestats {html.escape(report['report'])} report</h1>{alert}"
        f"<ul>{lines}</ul>{charts}<h2>{'Records' if report['report'] == 'audit trail' else 'Table'}</h2>"
        f"{_table_html(rows, columns)}{extra}{banner}</body></html>"
    )
