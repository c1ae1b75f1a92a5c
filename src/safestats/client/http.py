"""The HTTP transport: the same requests as embedded mode, to a safestats service."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from safestats import errors
from safestats.errors import ConfigError, SafestatsError, ServiceError
from safestats.query.wire import operation as operation_named

__all__ = ["HttpTransport", "ask_code", "read_token"]


def read_token(environ: Mapping[str, str]) -> str:
    """The bearer token: ``SAFESTATS_TOKEN``, else the file ``SAFESTATS_TOKEN_FILE``
    (default ``~/.config/safestats/token``)."""
    if environ.get("SAFESTATS_TOKEN"):
        return environ["SAFESTATS_TOKEN"].strip()
    path = Path(environ.get("SAFESTATS_TOKEN_FILE") or Path.home() / ".config" / "safestats" / "token")
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no token: set SAFESTATS_TOKEN or put the token the data owner gave you in {path}") from None


def _error_classes() -> dict[str, type[SafestatsError]]:
    """Every error class by name (errors.py holds them all), to raise the service's errors here."""
    found = {name: getattr(errors, name) for name in errors.__all__}
    return {name: cls for name, cls in found.items() if isinstance(cls, type) and issubclass(cls, SafestatsError)}


def ask_code() -> str:
    """The code of the user's authenticator, asked for without echo (works in a notebook too)."""
    import getpass

    return getpass.getpass("safestats: this needs your second factor. Code from your authenticator: ")


class HttpTransport:
    """Requests to the service. With ``second_factor`` (a function returning the authenticator's
    current code; :func:`ask_code` asks interactively), a request refused for want of a second
    factor opens a session with one code and is sent again, once; the session credential then
    replaces the token for the rest of this connection (until it expires)."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        client: Mapping[str, Any],
        verify: str | bool = True,
        timeout: float = 120.0,
        second_factor: Callable[[], str] | None = None,
    ) -> None:
        import httpx

        self._second_factor = second_factor
        headers = {"Authorization": f"Bearer {token}", "X-Safestats-Client": json.dumps(dict(client))[:2000]}
        if os.environ.get("SAFESTATS_INTERACTION") in ("manual", "ad hoc"):
            headers["X-Safestats-Interaction"] = os.environ["SAFESTATS_INTERACTION"]
        else:
            headers["X-Safestats-Interaction"] = "manual"
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, verify=verify, timeout=timeout)

    def request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._send(operation, body)
        except errors.SecondFactorRequired as refused:
            if self._second_factor is None or operation == "session":
                raise
            try:
                code = self._second_factor()
            except Exception:  # noqa: BLE001 - nobody to ask (a kernel with no stdin): the refusal stands
                raise refused from None
        self.open_session(code)
        return self._send(operation, body)

    def open_session(self, code: str) -> str:
        """Exchange the token and ``code`` for a session credential, used from now on; returns
        its expiry."""
        answer = self._send("session", {"code": str(code).strip()})
        self._http.headers["Authorization"] = f"Bearer {answer['session']}"
        return str(answer["expires_utc"])

    def _send(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        import httpx

        op = operation_named(operation)
        try:
            path = op.path.format(**{p.name: quote(str(body[p.name]), safe="") for p in op.path_params})
        except KeyError as e:
            raise ValueError(f"{operation} needs {e.args[0]}") from None
        method = op.method
        payload = {p.name: body[p.name] for p in op.body_params if p.name in body}
        try:
            response = self._http.request(method, path, json=payload if op.body_params else None)
        except httpx.HTTPError as e:
            raise ServiceError(f"cannot reach the safestats service: {e.__class__.__name__}") from None
        try:
            payload = response.json()
        except ValueError:
            raise ServiceError(f"the service answered {response.status_code} without JSON") from None
        if response.status_code >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            cls = _error_classes().get(str(err.get("type")), ServiceError)
            if not issubclass(cls, SafestatsError):
                cls = ServiceError
            raise cls(str(err.get("message") or f"HTTP {response.status_code}"))
        return dict(payload)

    def close(self) -> None:
        self._http.close()
