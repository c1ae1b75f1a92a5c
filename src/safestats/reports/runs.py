"""The report runs published or failed under a reports folder: ``safestats reports status``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from safestats.config import project_root

__all__ = ["recent_runs"]


def recent_runs(out_root: Path | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest report runs under ``out_root``, published or failed, newest first: report,
    parameters, outcome, start, duration, marking, protection and where it is — a job list."""
    out_root = Path(out_root or project_root() / "reports")
    runs: list[dict[str, Any]] = []
    for run in out_root.glob("*/*/run.json"):
        try:
            info = json.loads(run.read_text())
            started = dt.datetime.fromisoformat(info["started_utc"])
            finished = dt.datetime.fromisoformat(info["finished_utc"])
        except (OSError, ValueError, KeyError):
            continue
        archive = info.get("archive")
        runs.append(
            {
                "report": info.get("report", run.parent.parent.name),
                "parameters": info.get("parameters", {}),
                "outcome": "published",
                "started_utc": started.isoformat(timespec="seconds"),
                "seconds": round((finished - started).total_seconds(), 1),
                "marking": info.get("marking", ""),
                "protection": info.get("protection", "clear"),
                "where": str(run.parent / archive) if archive else str(run.parent / f"{run.parent.parent.name}.html"),
            }
        )
    for failed in (out_root / "failed").glob("*.json"):
        try:
            info = json.loads(failed.read_text())
            when = dt.datetime.fromisoformat(info["failed_utc"])
        except (OSError, ValueError, KeyError):
            continue
        runs.append(
            {
                "report": info.get("report", ""),
                "parameters": info.get("parameters", {}),
                "outcome": f"failed after {info.get('attempts', 1)} attempt(s)",
                "started_utc": when.isoformat(timespec="seconds"),
                "seconds": None,
                "marking": "",
                "protection": "",
                "where": str(failed),
            }
        )
    return sorted(runs, key=lambda r: r["started_utc"], reverse=True)[:limit]
