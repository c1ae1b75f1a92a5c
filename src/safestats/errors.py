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
    │   ├── AuthError                   authentication failed (the message never holds the token)
    │   │   └── SecondFactorRequired    OFFICIAL-SENSITIVE data over the network needs a second factor
    │   ├── BudgetExceeded              the query would spend more privacy budget than is left
    │   ├── RateLimited                 too many requests (or failed logins) a minute
    │   ├── RequestTooLarge             an HTTP body over the limit
    │   └── ReleaseError                a release bundle fails to verify or cannot be reproduced
    └── ServiceError                    safestats itself failed; nothing was released
        ├── AuditFailure                the audit record could not be written (fail closed)
        ├── AuditIntegrityError         the audit log does not verify
        └── ReportFailed                a scheduled report failed after its retries

A ``UserError`` carries a message that says what to do next. Each class carries its process
exit code (``exit_code``: the command line prints ``error: <message>`` and exits with it) and
its HTTP status (``http_status``: the service answers with it). Adding an error is one class
here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "EXIT_CODES",
    "AccessDenied",
    "AuditFailure",
    "AuditIntegrityError",
    "AuthError",
    "BudgetExceeded",
    "CatalogError",
    "ConfigError",
    "DataError",
    "DisclosureRefused",
    "ExportError",
    "QueryError",
    "RateLimited",
    "ReleaseError",
    "ReportFailed",
    "RequestTooLarge",
    "SafestatsError",
    "SecondFactorRequired",
    "ServiceError",
    "UnknownUser",
    "UserError",
    "did_you_mean",
    "exit_code_for",
    "http_status_for",
]


class SafestatsError(Exception):
    """Root of every error safestats raises on purpose."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def _render_traceback_(self) -> list[str]:
        """How IPython (a notebook) shows it: a user error is one block — its class and message,
        which say what to do — not a traceback through the client and the service."""
        if not isinstance(self, UserError):
            import traceback

            return traceback.format_exception(self)
        return [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self.message}"]


class UserError(SafestatsError):
    """Something the caller can fix: printed as one line, never with a traceback."""

    exit_code = 2
    http_status = 400


class ConfigError(UserError):
    """A settings, catalog or policy file is missing or wrong."""

    exit_code = 5


class CatalogError(ConfigError):
    """The catalog is invalid; the message names the file, table and column."""


class DataError(UserError):
    """The census files are missing, unreadable or do not match their manifest."""

    exit_code = 6


class QueryError(UserError):
    """The query is not an allowed aggregate query; the message says what is allowed."""

    exit_code = 4


class DisclosureRefused(QueryError):
    """The query is well formed but a disclosure rule refuses it (e.g. too many cells)."""

    http_status = 422


class AccessDenied(UserError):
    """The user's groups are not granted a table or column the query needs."""

    exit_code = 3
    http_status = 403


class UnknownUser(UserError):
    """The named user is not in the access policy."""

    exit_code = 3
    http_status = 401


class ReleaseError(UserError):
    """A release cannot be saved, verified or reproduced; the message names the file or field."""

    exit_code = 7
    http_status = 409


class ExportError(UserError):
    """A protected file cannot be written or opened: no password or recipient for an
    OFFICIAL-SENSITIVE export, a wrong password, an unreadable archive."""

    exit_code = 8


class AuthError(UserError):
    """Authentication failed; the message never contains the token."""

    http_status = 401


class SecondFactorRequired(AuthError):
    """The request touches OFFICIAL-SENSITIVE data over the network and the caller's session has
    no second factor: exchange the token and a TOTP code at ``POST /v1/session`` first."""


class BudgetExceeded(UserError):
    """The query would spend more privacy budget than is left."""

    http_status = 403


class RateLimited(UserError):
    """Too many requests, or too many failed authentications, a minute."""

    http_status = 429


class RequestTooLarge(UserError):
    """An HTTP request body over the service's limit."""

    http_status = 413


class ServiceError(SafestatsError):
    """safestats itself failed. Nothing was released."""

    exit_code = 12


class AuditFailure(ServiceError):
    """The audit record could not be written, so the result was withheld (fail closed)."""

    exit_code = 10
    http_status = 503


class AuditIntegrityError(ServiceError):
    """The audit log's hash chain does not verify."""

    exit_code = 11


class ReportFailed(ServiceError):
    """A report failed after its retries; nothing was published for it."""


#: (class, exit code) for every error class, read off the classes (kept for the docs and tests).
EXIT_CODES: tuple[tuple[type[SafestatsError], int], ...] = tuple(
    (cls, cls.exit_code)
    for cls in (
        AccessDenied,
        UnknownUser,
        DisclosureRefused,
        QueryError,
        CatalogError,
        ConfigError,
        DataError,
        ReleaseError,
        ExportError,
        AuthError,
        BudgetExceeded,
        RateLimited,
        RequestTooLarge,
        UserError,
        AuditFailure,
        AuditIntegrityError,
        ReportFailed,
        ServiceError,
        SafestatsError,
    )
)


def did_you_mean(name: str, choices: Iterable[object]) -> str:
    """`` — did you mean 'x'?`` for the closest of ``choices`` to a mistyped ``name`` (else '').

    >>> did_you_mean("sessions_atended", ["sessions_attended", "sessions_possible"])
    " — did you mean 'sessions_attended'?"
    """
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


def exit_code_for(error: BaseException) -> int:
    """The process exit code for ``error`` (its class's ``exit_code``; 1 for anything else).

    >>> exit_code_for(QueryError("no"))
    4
    """
    return error.exit_code if isinstance(error, SafestatsError) else 1


def http_status_for(error: BaseException) -> int:
    """The HTTP status for ``error`` (its class's ``http_status``; 500 for anything else).

    >>> http_status_for(BudgetExceeded("no"))
    403
    """
    return error.http_status if isinstance(error, SafestatsError) else 500
