"""The HTTP transport: the same requests as embedded mode, to a safestats service."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safestats import errors
from safestats.errors import ConfigError, SafestatsError, ServiceError

__all__ = ["HttpTransport", "read_token"]

_ROUTES = {
    "tables": ("GET", "/v1/tables"),
    "whoami": ("GET", "/v1/whoami"),
    "budget": ("GET", "/v1/budget"),
    "preview": ("POST", "/v1/preview"),
    "query": ("POST", "/v1/query"),
    "sql": ("POST", "/v1/sql"),
    "release_save": ("POST", "/v1/releases"),
    "releases": ("GET", "/v1/releases"),
}


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


class HttpTransport:
    def __init__(
        self, url: str, *, token: str, client: Mapping[str, Any], verify: str | bool = True, timeout: float = 120.0
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}", "X-Safestats-Client": json.dumps(dict(client))[:2000]}
        if os.environ.get("SAFESTATS_INTERACTION") in ("manual", "ad hoc"):
            headers["X-Safestats-Interaction"] = os.environ["SAFESTATS_INTERACTION"]
        else:
            headers["X-Safestats-Interaction"] = "manual"
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, verify=verify, timeout=timeout)

    def request(self, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        import httpx

        if operation == "describe":
            method, path = "GET", f"/v1/tables/{body['table']}"
        elif operation == "release_show":
            method, path = "GET", f"/v1/releases/{body['release_id']}"
        elif operation == "reproduce":
            method, path = "POST", f"/v1/releases/{body['release_id']}/reproduce"
            body = {}
        else:
            method, path = _ROUTES[operation]
        try:
            response = self._http.request(method, path, json=dict(body) if method == "POST" else None)
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
