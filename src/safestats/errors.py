"""Every error safestats raises, in one tree, with one exit-code map.

    SafestatsError                      root: anything safestats raises on purpose
    ├── UserError                       the caller can fix it; printed as one line, no traceback
    │   ├── ConfigError                 a settings, catalog or policy file is wrong
    │   │   └── CatalogError            the catalog (names the file, table and column)
    │   ├── DataError                   the census files are missing or do not match the manifest
    │   ├── QueryError                  the query is not an allowed aggregate query
    │   │   └── DisclosureRefused       allowed in form, but refused by a disclosure rule
    │   ├── AccessDenied                the user's groups may not read a table or column
    │   ├── UnknownUser                 no such user in the access policy
    │   └── ReleaseError                a release bundle fails to verify or cannot be reproduced
    └── ServiceError                    safestats itself failed; nothing was released
        ├── AuditFailure                the audit record could not be written (fail closed)
        └── AuditIntegrityError         the audit log does not verify

A ``UserError`` carries a message that says what to do next. The command line prints
``error: <message>`` and exits with the code from :data:`EXIT_CODES`.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "AccessDenied",
    "AuditFailure",
    "AuditIntegrityError",
    "CatalogError",
    "ConfigError",
    "DataError",
    "DisclosureRefused",
    "QueryError",
    "ReleaseError",
    "SafestatsError",
    "ServiceError",
    "UnknownUser",
    "UserError",
    "exit_code_for",
]


class SafestatsError(Exception):
    """Root of every error safestats raises on purpose."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class UserError(SafestatsError):
    """Something the caller can fix: printed as one line, never with a traceback."""


class ConfigError(UserError):
    """A settings, catalog or policy file is missing or wrong."""


class CatalogError(ConfigError):
    """The catalog is invalid; the message names the file, table and column."""


class DataError(UserError):
    """The census files are missing, unreadable or do not match their manifest."""


class QueryError(UserError):
    """The query is not an allowed aggregate query; the message says what is allowed."""


class DisclosureRefused(QueryError):
    """The query is well formed but a disclosure rule refuses it (e.g. too many cells)."""


class AccessDenied(UserError):
    """The user's groups are not granted a table or column the query needs."""


class UnknownUser(UserError):
    """The named user is not in the access policy."""


class ReleaseError(UserError):
    """A release cannot be saved, verified or reproduced; the message names the file or field."""


class ServiceError(SafestatsError):
    """safestats itself failed. Nothing was released."""


class AuditFailure(ServiceError):
    """The audit record could not be written, so the result was withheld (fail closed)."""


class AuditIntegrityError(ServiceError):
    """The audit log's hash chain does not verify."""


# Most specific class first: the first match wins.
EXIT_CODES: tuple[tuple[type[SafestatsError], int], ...] = (
    (AccessDenied, 3),
    (UnknownUser, 3),
    (DisclosureRefused, 4),
    (QueryError, 4),
    (CatalogError, 5),
    (ConfigError, 5),
    (DataError, 6),
    (ReleaseError, 7),
    (UserError, 2),
    (AuditFailure, 10),
    (AuditIntegrityError, 11),
    (ServiceError, 12),
    (SafestatsError, 1),
)


def exit_code_for(error: SafestatsError) -> int:
    """The process exit code for ``error`` (see :data:`EXIT_CODES`).

    >>> exit_code_for(QueryError("no"))
    4
    """
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return 1
