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
        from safestats.dataset import is_synthetic, open_dataset
        from safestats.errors import ConfigError
        from safestats.service.pipeline import Service

        if not is_synthetic(open_dataset(settings.data_dir)):  # embedded mode is never a way round the service
            raise ConfigError(
                f"{settings.data_dir} is not the synthetic census (its manifest has no 'synthetic: true'); "
                "embedded mode runs only over synthetic data: connect to the safestats service with "
                "ss.connect(URL) instead"
            )
        self._service = Service(settings)
        self._identity = self._service.identity(settings.user, interaction=settings.interaction, client=client)

    @property
    def user(self) -> str:
        return self._identity.user

    def request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(body))  # only the wire form crosses, as over HTTP
        # who the user is now: grants an access request approved, or let expire, since connect()
        who = self._identity
        self._identity = self._service.identity(who.user, interaction=who.interaction, client=who.client)
        out = self._service.handle(operation, body, identity=self._identity)
        return dict(json.loads(json.dumps(out)))
