"""What an operator watches: readiness, metrics and one JSON log line per request.

None of it carries census values, user names or tokens: metrics are labelled by operation,
HTTP status, error type and budget unit only; the log names the user (as the audit log does)
but never a query's values. The audit log stays the record of truth — the metrics are counted
from the same records as they are appended, so a release whose transaction later rolls back
is still counted once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "JsonFormatter", "Metrics", "configure_logging", "readiness"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The service's counters and histograms, in a registry of its own (one per service)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "safestats_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "safestats_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("safestats_requests_in_flight", "HTTP requests being served", registry=r)
        self.records = Counter(
            "safestats_audit_records",
            "Audit records appended, by operation and outcome",
            ["operation", "outcome"],
            registry=r,
        )
        self.refusals = Counter("safestats_refusals", "Requests refused (4xx), by error type", ["error"], registry=r)
        self.budget = Counter(
            "safestats_budget_spent",
            "Privacy budget charged by releases, by unit (epsilon or rho)",
            ["unit"],
            registry=r,
        )
        self.append_latency = Histogram(
            "safestats_audit_append_seconds", "Time to append one audit record", buckets=APPEND_BUCKETS, registry=r
        )

    def appended(self, record: Mapping[str, Any], seconds: float) -> None:
        """Count one appended audit record (called by the recorder after each append)."""
        self.append_latency.observe(seconds)
        self.records.labels(str(record.get("operation") or "")[:40], str(record.get("outcome") or "")).inc()
        privacy = record.get("privacy")
        if record.get("outcome") == "released" and isinstance(privacy, Mapping) and not privacy.get("cached"):
            try:
                spent = float(Fraction(str(privacy.get("spent", "0"))))
            except (ValueError, ZeroDivisionError):
                return
            if spent > 0:
                self.budget.labels(str(privacy.get("unit") or "epsilon")).inc(spent)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def readiness(service: Any) -> dict[str, str]:
    """Each dependency a query needs, checked without reading a census row: the store answers
    and is at the latest schema, the census files are there, the engine answers."""
    from safestats.store.migrations import MIGRATIONS, schema_version

    checks: dict[str, str] = {}
    try:
        version = schema_version(service.audit.engine)
        latest = max(n for n, _, _ in MIGRATIONS)
        checks["store"] = "ok" if version == latest else f"schema {version}, expected {latest}"
    except Exception:  # noqa: BLE001 - any failure: not ready
        checks["store"] = "unreachable"
    remote = service.settings.engine == "spark" and service.settings.spark_data_uri
    missing = (
        [] if remote else [f for f in service.dataset.manifest["files"] if not Path(service.dataset.path, f).exists()]
    )
    checks["census"] = "ok" if not missing else f"{len(missing)} file(s) missing"  # remote: the engine's ping
    try:
        service.engine.ping()
        checks["engine"] = "ok"
    except Exception:  # noqa: BLE001
        checks["engine"] = "not answering"
    return checks


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= getattr(record, "fields", {})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


def configure_logging(fmt: str) -> logging.Logger:
    """The ``safestats`` logger writing to stderr, as JSON lines (``json``) or plain text."""
    logger = logging.getLogger("safestats")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
