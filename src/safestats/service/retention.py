"""Retention and disposal (Becta: protected outputs "must be securely destroyed after use").

The policy's ``retention:`` gives each kind of output the days it is kept. `safestats retention
apply` finds what is older and destroys it:

- ``kept_results`` — results the service keeps so they can be saved as releases (store rows);
  never one a saved release needs (a dp release is reproduced from it);
- ``cache`` — cached dp releases (store rows); a repeat of the query is then drawn and charged
  afresh, so no budget is ever given back;
- ``output_checking`` — the output checker's day folders (``<user>/<YYYY-MM-DD>[-n]/``);
- ``reports`` — published report runs (folders holding a ``run.json``) under the reports folder.

Each kind destroyed is one audit record, written *before* anything is deleted (fail closed: if
the record cannot be written nothing is destroyed), naming what goes, when and by whom; a
failure part way is a second record. Audit records, the ledger, the differencing rule's
published structures and saved releases are never disposed of here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Disposal", "apply", "plan"]

_DAY = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:-\d+)?$")
LISTED = 50  # items named in an audit record; the rest are counted


@dataclass
class Disposal:
    """What one kind loses: the items (ids or folders), their cut-off and period."""

    kind: str
    days: int
    before: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [str(i.get("name")) for i in self.items]

    def describe(self) -> str:
        names = self.names()
        shown = ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
        return f"{len(names)} {self.kind.replace('_', ' ')} older than {self.days} days (before {self.before}): {shown}"


def plan(service: Any, *, now: dt.datetime, reports_dir: Path) -> list[Disposal]:
    """What the policy's retention periods say must go at ``now`` (nothing is touched)."""
    out = []
    for kind in ("kept_results", "cache", "output_checking", "reports"):
        days = service.policy.retention_days(kind)
        if days is None:
            continue
        cutoff = now - dt.timedelta(days=days)
        d = Disposal(kind, days, cutoff.isoformat(timespec="seconds"))
        if kind == "kept_results":
            d.items = [
                {"name": f"result of record {r['audit_seq']}", "seq": r["audit_seq"], "user": r["user"]}
                for r in service.results.expired_results(cutoff.isoformat())
            ]
        elif kind == "cache":
            d.items = [
                {"name": f"cached release of record {r['audit_seq']}", "user": r["user"], "key": r["cache_key"]}
                for r in service.cache.expired(cutoff.isoformat())
            ]
        elif kind == "output_checking":
            d.items = _output_folders(Path(service.settings.output_checking_dir), cutoff.date())
        else:
            d.items = _report_runs(reports_dir, cutoff)
        out.append(d)
    return out


def _output_folders(root: Path, before: dt.date) -> list[dict[str, Any]]:
    items = []
    if root.is_dir():
        for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
            m = _DAY.match(folder.name)
            if m and dt.date.fromisoformat(m.group(1)) < before:
                items.append({"name": str(folder.relative_to(root)), "path": str(folder)})
    return items


def _report_runs(root: Path, before: dt.datetime) -> list[dict[str, Any]]:
    items = []
    if root.is_dir():
        for run in sorted(root.rglob("run.json")):
            try:
                info = json.loads(run.read_text())
                finished = dt.datetime.fromisoformat(info.get("finished_utc") or info["started_utc"])
            except (OSError, ValueError, KeyError):
                continue  # not a report run this tool wrote: left alone
            if finished < before:
                items.append({"name": str(run.parent.relative_to(root)), "path": str(run.parent)})
    return items


def apply(service: Any, disposals: list[Disposal], *, actor: str) -> list[str]:
    """Destroy what ``disposals`` list, each kind after its audit record; the lines of a report."""
    lines = []
    for d in disposals:
        if not d.items:
            lines.append(f"{d.kind}: nothing older than {d.days} days")
            continue
        service.audit_admin(actor, "admin", f"retention: destroying {d.describe()}")
        try:
            if d.kind == "kept_results":
                gone = service.results.dispose_results([int(i["seq"]) for i in d.items])
            elif d.kind == "cache":
                gone = service.cache.dispose([(i["user"], i["key"]) for i in d.items])
            else:
                for i in d.items:
                    shutil.rmtree(i["path"])
                gone = len(d.items)
        except Exception as e:  # the audit record said what was meant; this one says what happened
            service.audit_admin(actor, "admin", f"retention: destroying {d.kind} failed part way: {e}")
            raise
        lines.append(f"{d.kind}: destroyed {gone} older than {d.days} days (before {d.before})")
    return lines
