"""Incident rules at every request (Becta: incident handling), cheaply.

After each request — answered or refused, over any transport, including authentications the
HTTP app refuses before the pipeline — the service reads the audit records written since it
last looked (usually one or two), keeps in memory those of the last window that a rule reads
(a refusal, a person's request out of hours, a service identity's outside a report run: most
answered requests feed no rule, and a once-a-day rule that has fired for a user that day reads
no more of theirs), and runs the rules that need nothing older
(:data:`safestats.audit.incidents.AT_EVERY_REQUEST`). A new incident is kept and gets its
audit record at once; ``safestats incidents scan`` still runs every rule over the whole log
(``new_address`` and ``audit_verify_failed`` only there), and the store keeps an incident once
whichever found it first.

With several replicas, each checks after its own requests and reads what every replica wrote
since its last check; two replicas checking at the same moment can each keep the same incident.
A failure here is logged and never fails the request (its records are written already); an
incident kept without its audit record is recorded by the next scan.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from typing import Any

from safestats.audit.incidents import AT_EVERY_REQUEST, DAILY, Thresholds, detect, feeds
from safestats.store.incidents import IncidentStore

__all__ = ["IncidentWatch"]

log = logging.getLogger("safestats.incidents")
KEEP = 2000  # records held in memory at most


class IncidentWatch:
    def __init__(self, service: Any) -> None:
        self.s = service
        self.thresholds = Thresholds.from_policy(service.policy.incidents)
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.last_seq: int | None = None
        self.raised: set[tuple[str, str, str]] = set()  # (once-a-day rule, user, day) found already
        self.store = IncidentStore(service.audit.engine)
        self._lock = threading.Lock()

    def check(self) -> list[dict[str, Any]]:
        """Read what was written since the last check, run the cheap rules, keep and record what
        is new; the new incidents. Never raises."""
        if not self._lock.acquire(blocking=False):
            return []  # another request is checking; the next check reads these records too
        try:
            return self._check()
        except Exception as e:  # noqa: BLE001 - the request is answered already; the scan catches up
            log.warning("incident check failed: %s: %s", type(e).__name__, e)
            return []
        finally:
            self._lock.release()

    def _check(self) -> list[dict[str, Any]]:
        if self.last_seq is None:  # what came before this process is the scan's
            self.last_seq = self.s.audit.count()
            return []
        new = [r for r in self.s.audit.records(after=self.last_seq)]
        if not new:
            return []
        self.last_seq = int(new[-1]["seq"])
        # only the records a rule reads (most answered requests feed none): the rules then read a
        # few records, not the whole window, at every request; a once-a-day rule already raised
        # for a user that day reads no more of theirs (it would find the same incident)
        for r in new:
            if r.get("operation") == "incident":
                continue
            day = (str(r["user"]), str(r["time_utc"])[:10])
            if any(
                rule not in DAILY or (rule, *day) not in self.raised
                for rule in feeds(r, self.thresholds, AT_EVERY_REQUEST)
            ):
                self.recent.append(r)
        horizon = dt.datetime.fromisoformat(str(new[-1]["time_utc"])) - dt.timedelta(
            minutes=self.thresholds.window_minutes
        )
        while self.recent and dt.datetime.fromisoformat(str(self.recent[0]["time_utc"])) < horizon:
            self.recent.popleft()
        self.raised = {x for x in self.raised if x[2] >= horizon.date().isoformat()}  # days still in the window
        found = detect(list(self.recent), self.thresholds, rules=AT_EVERY_REQUEST)
        if not found:
            return []
        added = self.store.add_new(found)  # kept (now or before): the watch need not find them again
        self.raised |= {(i.rule, i.user, i.detail.rsplit(" on ", 1)[-1]) for i in found if i.rule in DAILY}
        for incident in added:
            seq = self.s.audit_admin(
                "safestats incidents",
                "incident",
                f"incident {incident['id']}: {incident['rule']} by {incident['user'] or '-'} "
                f"(records {incident['first_seq']}–{incident['last_seq']}): {incident['detail']}",
            )
            self.store.note_record(incident["id"], seq)
            log.info(
                "incident %s: %s by %s: %s", incident["id"], incident["rule"], incident["user"], incident["detail"]
            )
        return added
