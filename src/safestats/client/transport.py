"""Transports carry requests from a session to the service. Embedded runs it in-process.

The contract is one method, ``request(operation, body) -> payload``, with JSON-able bodies and
payloads, so the HTTP transport (a later issue) slots in without changing the session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from safestats.config import Settings
from safestats.query.wire import OPERATIONS as _OPERATIONS

__all__ = ["EmbeddedTransport", "Transport"]

OPERATIONS = tuple(_OPERATIONS)


class Transport(Protocol):
    def request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]: ...


class EmbeddedTransport:
    """The service in this process, for tests and the synthetic demo.

    Bodies and payloads go through JSON exactly as they would over HTTP, so nothing but the
    wire form crosses between session and service.
    """

    def __init__(self, settings: Settings, *, client: Mapping[str, Any]) -> None:
        from safestats.service.pipeline import Service

        self._service = Service(settings)
        self._identity = self._service.identity(settings.user, interaction=settings.interaction, client=client)

    @property
    def user(self) -> str:
        return self._identity.user

    def request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(body))  # only the wire form crosses, as over HTTP
        out = self._service.handle(operation, body, identity=self._identity)
        return dict(json.loads(json.dumps(out)))
