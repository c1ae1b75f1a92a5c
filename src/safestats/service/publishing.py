"""Regular publication of the volume of use (FOI (h)): the transparency report on a schedule.

``reports schedule`` runs a ``name: transparency`` entry by calling :func:`publish_transparency`
(the runner itself cannot read the audit log; the command line hands it the service). The
report covers the previous calendar month, is written as HTML, CSV and JSON beside a
``run.json`` under ``<reports>/transparency/``, names the signed tree head it was read at, is
marked OFFICIAL (counts by organisation only: no user names) and is audited.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from safestats.__about__ import __version__
from safestats.audit.reports import render, transparency
from safestats.marking import marking_text

__all__ = ["previous_month", "publish_transparency"]


def previous_month(now: dt.datetime) -> str:
    """'2026-11' for any time in December 2026."""
    first = now.date().replace(day=1)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def publish_transparency(service: Any, *, now: dt.datetime, out_root: Path, period: str | None = None) -> Path:
    """Publish the transparency report of ``period`` (default: the month before ``now``); the folder."""
    period = period or previous_month(now)
    started = dt.datetime.now(dt.UTC)
    label = service.catalog.classifications[0]
    marking = marking_text(label, service.catalog.impact_levels.get(label, ""))
    folder = Path(out_root) / "transparency" / f"transparency__{period}"
    service.audit_admin("report runner", "admin", f"transparency report {period} published to {folder}")
    service.audit.checkpoint()  # the report names a signed tree head that covers its own record
    report = {"marking": marking, "label": label, "handling": service.policy.caveat(label)}
    report |= transparency(service.audit, period, rounding=service.policy.records_rounding)
    folder.mkdir(parents=True, exist_ok=True)
    for fmt in ("html", "csv", "json"):
        (folder / f"transparency.{fmt}").write_text(render(report, fmt))
    (folder / "run.json").write_text(
        json.dumps(
            {
                "report": "transparency",
                "parameters": {"period": period},
                "started_utc": started.isoformat(),
                "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
                "marking": marking,
                "handling": report["handling"],
                "protection": "clear",
                "archive": None,
                "software_version": __version__,
                "tree_head": report.get("tree_head"),
            },
            indent=2,
        )
    )
    return folder
