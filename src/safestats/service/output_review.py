"""Output checking after release, the way ACRO users work before ``finalise``: the analyst adds
comments to an output or asks for an exception (``r.comment(...)``, ``r.request_exception(...)``),
and the output checker approves or rejects it (``safestats outputs approve|reject``). Each step
goes into the output's ACRO record (results.json, checksums rewritten) and into the audit log.

Only sdc releases have output-checking records (dp releases are protected by their noise and need
no checker). An analyst can annotate only their own outputs.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from typing import Any

from safestats.access.policy import Identity
from safestats.errors import ReleaseError, UserError
from safestats.service.output_checking import annotate_output

__all__ = ["OutputReview"]

MAX_NOTE = 2000


class OutputReview:
    def __init__(self, service: Any) -> None:
        self.s = service

    def _output(self, audit_id: int, user: str | None) -> tuple[dict[str, Any], str]:
        audited = self.s.audit.record(int(audit_id))
        if audited is None or audited.get("outcome") != "released" or (user is not None and audited["user"] != user):
            raise ReleaseError(f"audit record {audit_id} is not a result released to you")
        ref = (audited.get("disclosure") or {}).get("output_check")
        if not ref:
            raise ReleaseError(
                f"the result of audit record {audit_id} has no output-checking record (only sdc releases do; "
                "a dp release is protected by its noise)"
            )
        return audited, str(ref)

    def note(
        self, *, identity: Identity, audit_id: int, comment: str | None = None, exception: str | None = None
    ) -> dict[str, Any]:
        """The analyst's comment on one of their outputs, or their request for an exception."""
        started = time.perf_counter()
        operation = "output exception" if exception else "output comment"
        record = self.s.recorder.draft(identity, operation)
        try:
            text = " ".join(str(exception or comment or "").split())[:MAX_NOTE]
            if not text:
                raise UserError("say what: a comment, or the reason for the exception you ask for")
            audited, ref = self._output(audit_id, identity.user)
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        record.update(tables=list(audited.get("tables") or []), label=audited.get("label"))
        seq = self.s.recorder.write(
            record, started, outcome="answered", reason=f"{operation} on the output of record {audit_id}: {text}"
        )
        with self.s.links.lock((audited.get("disclosure") or {}).get("domain") or "published"):
            out = annotate_output(ref, comment=None if exception else text, exception=text if exception else None)
        return {"audit_id": seq, "uid": out["uid"], "comments": out["comments"], "exception": out["exception"]}

    def review(self, audit_id: int, decision: str, *, by: str, note: str) -> dict[str, Any]:
        """The output checker's decision on an output (``approve`` or ``reject``), recorded."""
        who = Identity(user=by, groups=(), organisation="", interaction="ad hoc")
        started = time.perf_counter()
        record = self.s.recorder.draft(who, f"output {decision}")
        record["client"] = {**record["client"], "os_user": getpass.getuser()}
        try:
            if decision not in ("approve", "reject"):
                raise UserError(f"an output is approved or rejected, not {decision!r}")
            if not by.strip():
                raise UserError("the output checker's name is needed: --by NAME")
            if decision == "reject" and not note.strip():
                raise UserError("say why it is rejected: --note TEXT")
            audited, ref = self._output(audit_id, None)
            if audited["user"] == by:
                raise UserError("an output is checked by someone other than the analyst who made it")
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        record.update(tables=list(audited.get("tables") or []), label=audited.get("label"))
        seq = self.s.recorder.write(
            record,
            started,
            outcome="answered",
            reason=f"output of record {audit_id} {decision}d by {by}" + (f": {note.strip()}" if note.strip() else ""),
        )
        review = {
            "decision": decision,
            "by": by,
            "note": note.strip(),
            "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "audit_seq": seq,
        }
        with self.s.links.lock((audited.get("disclosure") or {}).get("domain") or "published"):
            out = annotate_output(ref, review=review)
        return {"audit_id": seq, "uid": out["uid"], "review": review}
