"""Transports carry requests from a session to the service. Embedded runs it in-process.

The contract is one method, ``request(operation, body) -> payload``, with JSON-able bodies and
payloads, so the HTTP transport (a later issue) slots in without changing the session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from safestats.config import Settings

__all__ = ["EmbeddedTransport", "Transport"]

OPERATIONS = (
    "tables",
    "describe",
    "whoami",
    "budget",
    "preview",
    "query",
    "sql",
    "release_save",
    "releases",
    "release_show",
    "reproduce",
)


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
        body = json.loads(json.dumps(body))
        s, who = self._service, self._identity
        if operation == "tables":
            out = s.catalog_info(identity=who)
        elif operation == "describe":
            out = s.catalog_info(identity=who, table=str(body["table"]))
        elif operation == "query":
            out = s.query(body["query"], identity=who)
        elif operation == "whoami":
            out = s.whoami(identity=who)
        elif operation == "budget":
            out = s.budget(identity=who)
        elif operation == "preview":
            out = s.preview(body["query"], identity=who)
        elif operation == "sql":
            out = s.sql(str(body["sql"]), identity=who)
        elif operation == "release_save":
            out = s.save_release(
                identity=who,
                audit_id=int(body["audit_id"]),
                name=str(body["name"]),
                notebook=body.get("notebook"),
                parameters=body.get("parameters"),
                notebook_sha256=body.get("notebook_sha256"),
            )
        elif operation == "releases":
            out = s.releases(identity=who)
        elif operation == "release_show":
            out = s.release(identity=who, release_id=str(body["release_id"]))
        elif operation == "reproduce":
            out = s.reproduce(identity=who, release_id=str(body["release_id"]))
        else:
            raise ValueError(f"unknown operation {operation!r}; operations are {OPERATIONS}")
        return dict(json.loads(json.dumps(out)))
