"""Every request a client can make, in one table: its name, HTTP method and path, parameters.

The HTTP service generates its routes (and the OpenAPI schema) from this table, the HTTP client
builds its requests from it, and the embedded transport dispatches through the same
:meth:`Service.handle <safestats.service.pipeline.Service.handle>`. Adding an endpoint is one
:class:`Operation` here and the service method it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safestats.errors import QueryError

__all__ = ["OPERATIONS", "Operation", "Param", "operation"]


@dataclass(frozen=True)
class Param:
    """One parameter of a request."""

    name: str
    where: str  # "path" or "body"
    type: str  # "str", "int" or "object" (a JSON object)
    description: str
    required: bool = True
    positional: bool = False  # passed to the service method positionally (its first argument)
    #: validation, as pydantic's Field takes it (max_length, ge, le, pattern, ...)
    limits: dict[str, Any] = field(default_factory=dict)

    def check(self, value: Any) -> Any:
        """The value, of this parameter's type (a clear error otherwise, in every transport)."""
        if value is None:
            if self.required:
                raise QueryError(f"{self.name} is required")
            return None
        if self.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise QueryError(f"{self.name} must be a whole number, not {value!r}")
        if self.type == "str" and not isinstance(value, str):
            raise QueryError(f"{self.name} must be text, not {value!r}")
        if self.type == "object" and not isinstance(value, dict):
            raise QueryError(f"{self.name} must be an object, not {value!r}")
        return value


@dataclass(frozen=True)
class Operation:
    """One request: what it is called, where it lives over HTTP, and what it takes."""

    name: str
    method: str
    path: str
    handler: str  # the Service method that answers it
    summary: str
    params: tuple[Param, ...] = ()
    body_model: str = ""  # the name of its body in the OpenAPI schema

    @property
    def path_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.where == "path")

    @property
    def body_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.where == "body")


def _audit_id(description: str) -> Param:
    return Param("audit_id", "body", "int", description, limits={"ge": 1, "le": 2**62})


_QUERY = Param(
    "query", "body", "object", "A query in its wire form (see safestats.query.model.Query.to_wire)", positional=True
)

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("whoami", "GET", "/v1/whoami", "whoami", "Who the service takes you to be"),
        Operation("tables", "GET", "/v1/tables", "catalog_info", "The catalog's tables and what you may read"),
        Operation(
            "describe",
            "GET",
            "/v1/tables/{table}",
            "catalog_info",
            "The columns of one table",
            (Param("table", "path", "str", "A table of the catalog"),),
        ),
        Operation("budget", "GET", "/v1/budget", "budget", "Your privacy budget in the current period"),
        Operation(
            "session",
            "POST",
            "/v1/session",
            "open_session",
            "Exchange your API token and a TOTP code for a session credential (needed for "
            "OFFICIAL-SENSITIVE data over the network)",
            (Param("code", "body", "str", "The code your authenticator shows now", limits={"max_length": 16}),),
            "SessionBody",
        ),
        Operation(
            "preview",
            "POST",
            "/v1/preview",
            "preview",
            "What a query would cost and how accurate it would be (reads no data)",
            (_QUERY,),
            "QueryBody",
        ),
        Operation("query", "POST", "/v1/query", "query", "Run a query given in its wire form", (_QUERY,), "QueryBody"),
        Operation(
            "sql",
            "POST",
            "/v1/sql",
            "sql",
            "Run one aggregate SQL query",
            (
                Param(
                    "sql",
                    "body",
                    "str",
                    "One aggregate SELECT statement",
                    positional=True,
                    limits={"max_length": 20_000},
                ),
            ),
            "SqlBody",
        ),
        Operation(
            "release_save",
            "POST",
            "/v1/releases",
            "save_release",
            "Save one of your released results as a named release",
            (
                _audit_id("The audit record of one of your released results"),
                Param("name", "body", "str", "A name for the release", limits={"min_length": 1, "max_length": 120}),
                Param(
                    "notebook", "body", "str", "The notebook that made it", required=False, limits={"max_length": 500}
                ),
                Param("parameters", "body", "object", "The notebook's parameters", required=False),
                Param(
                    "notebook_sha256",
                    "body",
                    "str",
                    "SHA-256 of the notebook file the bundle will hold",
                    required=False,
                    limits={"pattern": "^[0-9a-f]{64}$"},
                ),
            ),
            "ReleaseBody",
        ),
        Operation(
            "export",
            "POST",
            "/v1/exports",
            "record_export",
            "Record that you wrote one of your released results to a file (how it was protected)",
            (
                _audit_id("The audit record of the released result written"),
                Param("file", "body", "str", "The file's name", limits={"min_length": 1, "max_length": 500}),
                Param(
                    "protection",
                    "body",
                    "str",
                    "zip, age, or none (written in clear, asked for explicitly)",
                    limits={"pattern": "^(zip|age|none)$"},
                ),
            ),
            "ExportBody",
        ),
        Operation(
            "access_request",
            "POST",
            "/v1/access-requests",
            "access.apply",
            "Apply for access: a group, tables (and columns), purpose, legal basis, agreement, period",
            (
                Param(
                    "application",
                    "body",
                    "object",
                    "group, tables ({table: 'all' or [columns]}), purpose, legal_basis, agreement, start, end",
                    positional=True,
                ),
            ),
            "AccessRequestBody",
        ),
        Operation("access_requests", "GET", "/v1/access-requests", "access.mine", "Your access requests"),
        Operation(
            "output_note",
            "POST",
            "/v1/output-notes",
            "outputs.note",
            "Comment on one of your sdc outputs, or ask the output checker for an exception",
            (
                _audit_id("The audit record of the released result"),
                Param("comment", "body", "str", "A comment", required=False, limits={"max_length": 2000}),
                Param(
                    "exception",
                    "body",
                    "str",
                    "Why an exception is needed",
                    required=False,
                    limits={"max_length": 2000},
                ),
            ),
            "OutputNoteBody",
        ),
        Operation("releases", "GET", "/v1/releases", "releases", "Your releases"),
        Operation(
            "release_show",
            "GET",
            "/v1/releases/{release_id}",
            "release",
            "How a release was made (its manifest)",
            (Param("release_id", "path", "str", "A release id or name"),),
        ),
        Operation(
            "reproduce",
            "POST",
            "/v1/releases/{release_id}/reproduce",
            "reproduce",
            "Reproduce a release, or say precisely why not",
            (Param("release_id", "path", "str", "A release id or name"),),
        ),
    )
}


def operation(name: str) -> Operation:
    """The operation called ``name`` (a clear error for any other)."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; operations are {', '.join(OPERATIONS)}") from None
