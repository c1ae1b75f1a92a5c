"""The second factor in the pipeline: who needs it for what, and the session exchange.

Over the network (a token, not embedded mode), a request whose result would be labelled above
the lowest classification — OFFICIAL-SENSITIVE (IL3) in the shipped catalog: the Nationality and
``*_Unrestricted`` tables, ethnicity, SEN — needs a session opened with a TOTP code, when any of
the caller's groups says ``second_factor: true`` in the policy. Embedded mode runs only over the
synthetic census and needs none. Every exchange, accepted or refused, is audited (never the code).
"""

from __future__ import annotations

import time
from typing import Any

from safestats.access.policy import Identity
from safestats.errors import QueryError, SecondFactorRequired, UserError
from safestats.labels import label_for
from safestats.query.validate import Plan

__all__ = ["open_session", "require_for_label", "require_second_factor", "second_factor_status"]


def require_second_factor(service: Any, identity: Identity, plan: Plan) -> None:
    """Refuse (SecondFactorRequired, 401) a network request for sensitive data without a session."""
    if service.policy.needs_second_factor(identity):
        require_for_label(service, identity, *label_for(plan, service.catalog))


def require_for_label(service: Any, identity: Identity, label: str, impact: str = "") -> None:
    """The same for a result already made (a kept release, returned again): its label decides."""
    if not service.policy.needs_second_factor(identity) or label not in service.catalog.classifications:
        return
    impact = impact or service.catalog.impact_levels.get(label, "")
    if service.catalog.classifications.index(label) > 0:
        raise SecondFactorRequired(
            f"this request touches {label} ({impact}) data over the network, which needs a second factor: "
            "open a session with your token and your authenticator's current code (ss.connect asks for it; "
            'over HTTP: POST /v1/session {"code": "123456"}) and send the session credential instead of the token'
        )


def open_session(service: Any, identity: Identity, code: str) -> dict[str, Any]:
    """Check ``code`` for the caller and return a session credential (audited either way)."""
    started = time.perf_counter()
    record = service.recorder.draft(identity, "session open")
    try:
        if not identity.remote:
            raise QueryError("sessions are for callers over the network; embedded mode needs no second factor")
        token, expires = service.factors.open_session(identity.user, code)
    except UserError as e:
        service.recorder.write(record, started, outcome="refused", reason=str(e))
        raise
    service.recorder.write(
        record, started, outcome="answered", reason=f"second factor accepted; session until {expires}"
    )
    return {"user": identity.user, "session": token, "expires_utc": expires}


def second_factor_status(service: Any, identity: Identity) -> str:
    """What ``whoami`` says of the second factor."""
    if not identity.remote:
        return "not needed: embedded mode over the synthetic census"
    if identity.second_factor:
        return "session open"
    if not any(service.policy.groups[g].second_factor for g in identity.groups if g in service.policy.groups):
        return "not required by your groups"
    return "needed for OFFICIAL-SENSITIVE data: open a session" + (
        "" if service.factors.enrolled(identity.user) else " (ask the data owner to enrol you first)"
    )
