"""The notebook side: a session sends query specifications and receives protected results.

A session holds no data and no catalog internals: only a transport and the user's name.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Mapping
from typing import Any

import pandas as pd

from safestats.client.transport import EmbeddedTransport, Transport
from safestats.config import Settings
from safestats.errors import ConfigError
from safestats.query.builder import TableQuery
from safestats.query.model import Query
from safestats.result import ProtectedResult, result_from_payload

__all__ = ["Session", "client_context", "connect"]


def client_context(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the audit log records about the client: host, process, notebook and kernel."""
    environ = os.environ if environ is None else environ
    ctx: dict[str, Any] = {
        "host": socket.gethostname(),
        "os_user": environ.get("USER") or environ.get("USERNAME") or "",
        "pid": os.getpid(),
        "python": platform.python_version(),
        "program": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
    }
    notebook = environ.get("JPY_SESSION_NAME") or environ.get("SAFESTATS_NOTEBOOK")
    if notebook:
        ctx["notebook"] = notebook
    try:  # inside a Jupyter kernel
        from ipykernel.connect import get_connection_file  # type: ignore[import-untyped]

        ctx["kernel"] = os.path.basename(get_connection_file()).removeprefix("kernel-").removesuffix(".json")
    except Exception:  # noqa: BLE001 - not in a kernel
        pass
    return ctx


def connect(url: str | None = None, *, token: str | None = None, environ: Mapping[str, str] | None = None,
            **settings: Any) -> Session:  # fmt: skip
    """Open a session.

    ``connect("https://host:port")`` talks to a safestats service, with the token given, or from
    ``SAFESTATS_TOKEN`` or a token file. With no ``url``, the service runs embedded in this
    process over the synthetic census (settings as in docs/configuration.md, e.g.
    ``connect(user="demo.unrestricted")``).
    """
    environ = os.environ if environ is None else environ
    if url is not None:
        if settings:
            raise ConfigError(f"settings {sorted(settings)} belong to the service, not to an HTTP client")
        from safestats.client.http import HttpTransport, read_token

        verify: str | bool = environ.get("SAFESTATS_CA_BUNDLE") or True
        transport = HttpTransport(url, token=token or read_token(environ), client=client_context(environ),
                                  verify=verify)  # fmt: skip
        return Session(transport, user=str(transport.request("whoami", {})["user"]))
    loaded = Settings.load(environ, **settings)
    return Session(EmbeddedTransport(loaded, client=client_context(environ)), user=loaded.user)


class Session:
    """A connection to the safestats service."""

    def __init__(self, transport: Transport, *, user: str, dataset: str = "school_census") -> None:
        self._transport = transport
        self.user = user
        self.dataset = dataset

    def __repr__(self) -> str:
        return f"<safestats Session user={self.user!r} dataset={self.dataset!r}>"

    def close(self) -> None:
        """Close the connection to the service (HTTP); a no-op in embedded mode."""
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tables(self) -> pd.DataFrame:
        """The catalog's tables, their classification, and whether you may read them."""
        payload = self._transport.request("tables", {})
        return pd.DataFrame(payload["rows"]).set_index("table")

    def describe(self, table: str) -> pd.DataFrame:
        """The columns of ``table``: type, role, classification, domain, bounds, usability."""
        payload = self._transport.request("describe", {"table": table})
        return pd.DataFrame(payload["rows"]).set_index("column")

    def table(self, name: str) -> TableQuery:
        """Start a query on a catalog table."""
        return TableQuery(session=self, table=name, dataset=self.dataset)

    def run(self, query: Query) -> ProtectedResult:
        payload = self._transport.request("query", {"query": query.to_wire()})
        return result_from_payload(payload)

    def budget(self) -> dict[str, Any]:
        """Your privacy budget in the current period: total, spent and left (exact amounts)."""
        return self._transport.request("budget", {})

    def sql(self, text: str) -> ProtectedResult:
        """Run an aggregate SQL query (see safestats.query.sql for what is allowed)."""
        return result_from_payload(self._transport.request("sql", {"sql": text}))
