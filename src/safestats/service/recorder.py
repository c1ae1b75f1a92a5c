"""The service's recorder: every request's audit record, drafted and written the same way.

Every request — answered, refused or failed, human or machine — starts from :meth:`Recorder.draft`
and ends in :meth:`Recorder.write`, which appends it to the audit log (in the caller's
transaction when it holds one: one release, one transaction) or raises ``AuditFailure``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from safestats.__about__ import __version__
from safestats.access.policy import Identity, declared_purpose
from safestats.audit.log import AuditLog
from safestats.catalog import Catalog
from safestats.dataset import Dataset
from safestats.errors import AuditFailure
from safestats.query.model import Query

if TYPE_CHECKING:
    from safestats.service.ops import Metrics

__all__ = ["Recorder", "describe_query"]


class Recorder:
    """Drafts and writes the audit records of one service."""

    def __init__(self, audit: AuditLog, catalog: Catalog, dataset: Dataset, metrics: Metrics | None = None) -> None:
        self.audit = audit
        self.catalog = catalog
        self.dataset = dataset
        self.metrics = metrics

    def draft(self, identity: Identity, operation: str) -> dict[str, Any]:
        """A new audit record for ``operation`` by ``identity``, with the fields every record has."""
        return {
            "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "user": identity.user,
            "groups": list(identity.groups),
            "organisation": identity.organisation,
            "interaction": identity.interaction,
            "client": dict(identity.client) | {"service_version": __version__},
            "dataset": self.catalog.dataset,
            "snapshot_id": self.dataset.snapshot_id,
            "operation": operation,
            "tables": [],
            "fields_filter": [],
            "fields_group": [],
            "fields_measure": [],
            "fields_requested": [],
            "fields_returned": [],
            "cells_released": 0,
            "cells_suppressed": 0,
            "purpose": declared_purpose(identity.client),
        }

    def write(
        self,
        record: dict[str, Any],
        started: float,
        *,
        outcome: str,
        reason: str,
        conn: sa.Connection | None = None,
        heads: list[Any] | None = None,
    ) -> int:
        record.update(outcome=outcome, reason=reason, duration_ms=int((time.perf_counter() - started) * 1000))
        try:
            appending = time.perf_counter()
            seq = self.audit.append(record, conn=conn, heads=heads)
            if self.metrics is not None:
                self.metrics.appended(record, time.perf_counter() - appending)
            return seq
        except AuditFailure:
            raise
        except Exception as e:  # pragma: no cover - append already wraps its failures
            raise AuditFailure("the audit record could not be written; nothing was released") from e

    def admin(self, actor: str, operation: str, reason: str, *, privacy: dict[str, Any] | None = None) -> int:
        """Record an administrative action (users, tokens, budgets) before it takes effect."""
        who = Identity(user=actor, groups=(), organisation="", interaction="ad hoc")
        record = self.draft(who, operation)
        if privacy is not None:
            record["privacy"] = privacy
        return self.write(record, time.perf_counter(), outcome="answered", reason=reason)

    def rejection(self, *, user: str, interaction: str, client: Mapping[str, Any], operation: str, reason: str) -> None:
        """Record a request the transport rejected before the pipeline (size, rate limits)."""
        who = Identity(user=user, groups=(), organisation="", interaction=interaction, client=dict(client))
        self.write(self.draft(who, operation), time.perf_counter(), outcome="refused", reason=reason)


def describe_query(query: Query, source: str | None) -> dict[str, Any]:
    """The audit fields of a query: tables, the fields used by role and returned, its hash."""
    used = query.columns_used()
    canonical: dict[str, Any] = query.canonical()
    if source is not None:
        canonical = canonical | {"sql": source}
    return {
        "dataset": query.dataset,
        "tables": list(query.tables),
        "fields_filter": list(used["filter"]),
        "fields_group": list(used["group"]),
        "fields_measure": list(used["measure"]),
        "fields_requested": list(query.returned),
        "query_hash": query.hash,
        "query": canonical,
    }
