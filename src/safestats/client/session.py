"""The notebook side: a session sends query specifications and receives protected results.

A session holds no data and no catalog internals: only a transport and the user's name.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from safestats.client.answers import Budget, Preview
from safestats.client.transport import EmbeddedTransport, Transport
from safestats.config import Settings
from safestats.errors import AccessDenied, ConfigError, QueryError, ReleaseError, did_you_mean
from safestats.query.builder import TableQuery
from safestats.query.model import Query
from safestats.releases import write_bundle, write_protected_bundle
from safestats.result import ProtectedResult, result_from_payload

__all__ = ["Session", "client_context", "connect"]


def client_context(environ: Mapping[str, str] | None = None, *, purpose: str | None = None) -> dict[str, Any]:
    """What the audit log records about the client: host, process, notebook, kernel, and the
    purpose the analyst declared (``purpose`` or ``SAFESTATS_PURPOSE``)."""
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
    purpose = " ".join(str(purpose or environ.get("SAFESTATS_PURPOSE") or "").split())
    if purpose:
        ctx["purpose"] = purpose[:300]
    if "ipykernel" in sys.modules:  # inside a Jupyter kernel (which has imported it); never import it here
        try:
            from ipykernel.connect import get_connection_file

            ctx["kernel"] = os.path.basename(get_connection_file()).removeprefix("kernel-").removesuffix(".json")
        except Exception:  # noqa: BLE001 - a kernel without a connection file
            pass
    return ctx


def _notebook_file(notebook: str | None) -> Path | None:
    """The notebook file a recorded notebook name points at, if it is on this machine."""
    if not notebook:
        return None
    from safestats.config import project_root

    name = str(notebook).split("#")[0]
    for candidate in (Path(name), project_root() / "notebooks" / name, project_root() / name):
        if candidate.suffix == ".ipynb" and candidate.is_file():
            return candidate
    return None


def connect(
    url: str | None = None,
    *,
    token: str | None = None,
    environ: Mapping[str, str] | None = None,
    second_factor: Callable[[], str] | bool | None = None,
    purpose: str | None = None,
    **settings: Any,
) -> Session:
    """Open a session.

    ``connect("https://host:port")`` talks to a safestats service, with the token given, or from
    ``SAFESTATS_TOKEN`` or a token file. For OFFICIAL-SENSITIVE data the service asks for a
    second factor: ``second_factor`` is a function returning the authenticator's current code,
    ``True`` (the default in an interactive session: ask for it, without echo, the first time it
    is needed) or ``False`` (never ask: such requests are refused). ``purpose`` (or
    ``SAFESTATS_PURPOSE``) says what the work is for; every request's audit record carries it and
    the transparency report lists it. With no ``url``, the service
    runs embedded in this process over the synthetic census (settings as in
    docs/configuration.md, e.g. ``connect(user="demo.unrestricted")``), which needs none.
    """
    environ = os.environ if environ is None else environ
    url = url or environ.get("SAFESTATS_URL") or None
    if url is not None:
        claimed = settings.pop("user", None)  # a notebook's connect(user=...) names who it expects to be
        if settings:
            raise ConfigError(f"settings {sorted(settings)} belong to the service, not to an HTTP client")
        from safestats.client.http import HttpTransport, ask_code, read_token

        verify: str | bool = environ.get("SAFESTATS_CA_BUNDLE") or True
        if second_factor is None:
            second_factor = sys.stdin is not None and sys.stdin.isatty() or "ipykernel" in sys.modules
        code = ask_code if second_factor is True else second_factor or None
        transport = HttpTransport(
            url,
            token=token or read_token(environ),
            client=client_context(environ, purpose=purpose),
            verify=verify,
            second_factor=code,
        )
        me = transport.request("whoami", {})
        user = str(me["user"])
        if claimed is not None and claimed != user:
            raise ConfigError(f"this token is {user}'s, not {claimed}'s")
        session = Session(transport, user=user, environ=environ)
        session._know(me)  # queries are checked while they are built, with no request of their own
        return session
    loaded = Settings.load(environ, **settings)
    return Session(
        EmbeddedTransport(loaded, client=client_context(environ, purpose=purpose)),
        user=loaded.user,
        environ=environ,
        output_dir=loaded.output_dir,
    )


class Session:
    """A connection to the safestats service."""

    def __init__(
        self,
        transport: Transport,
        *,
        user: str,
        dataset: str = "school_census",
        environ: Mapping[str, str] | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        self._transport = transport
        self._seen_tables: dict[str, bool] | None = None  # what tables() said, for early checks
        self._seen_columns: dict[str, dict[str, bool]] = {}  # what describe() said, per table
        self.user = user
        self.dataset = dataset
        env = os.environ if environ is None else environ
        # set by the scheduled-report runner (or Jupyter): what made the results of this session
        self._notebook = env.get("SAFESTATS_NOTEBOOK") or env.get("JPY_SESSION_NAME") or None
        try:
            self._parameters = json.loads(env.get("SAFESTATS_PARAMETERS", "") or "null")
        except ValueError:
            self._parameters = None
        self._auto_release = env.get("SAFESTATS_RELEASE_DIR") or None
        self._report_dir = env.get("SAFESTATS_REPORT_DIR") or None
        #: where save_release writes a bundle given no path (never the working directory)
        self.output_dir = Path(output_dir or env.get("SAFESTATS_OUTPUT_DIR") or Settings.default("output_dir"))
        self._released = 0

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
        self._seen_tables = {r["table"]: bool(r["you_may_read"]) for r in payload["rows"]}
        return pd.DataFrame(payload["rows"]).set_index("table")

    def describe(self, table: str) -> pd.DataFrame:
        """The columns of ``table``: type, role, classification, domain, bounds, usability."""
        payload = self._transport.request("describe", {"table": table})
        self._seen_columns[payload.get("table", table)] = {r["column"]: bool(r["usable"]) for r in payload["rows"]}
        return pd.DataFrame(payload["rows"]).set_index("column")

    def _know(self, me: Mapping[str, Any]) -> None:
        """What whoami said the caller may read (tables, and usable columns per table), for the
        checks while a query is built; :meth:`tables` and :meth:`describe` refresh it."""
        if isinstance(me.get("may_read"), Mapping):
            self._seen_tables = {str(t): bool(v) for t, v in me["may_read"].items()}
        for t, cols in (me.get("usable") or {}).items():
            self._seen_columns[str(t)] = {str(c): bool(v) for c, v in cols.items()}

    def usable_columns(self, *tables: str) -> dict[str, bool] | None:
        """What :meth:`describe` said of the columns of ``tables`` (column → usable by you), or
        None if it has not been asked for each: the builder then checks nothing early."""
        if not all(t in self._seen_columns for t in tables):
            return None
        out: dict[str, bool] = {}
        for t in tables:
            for column, usable in self._seen_columns[t].items():
                out[column] = out.get(column, False) or usable
        return out

    def table(self, name: str) -> TableQuery:
        """Start a query on a catalog table (checked at once against :meth:`tables`, if you
        listed them)."""
        seen = self._seen_tables
        if seen is not None and name not in seen:
            raise QueryError(
                f"no table {name!r} in the catalog{did_you_mean(name, seen)}; tables are: {', '.join(seen)}"
            )
        if seen is not None and not seen[name]:
            raise AccessDenied(
                f"you may not read table {name}; ask the data owner for a grant (safestats access request); "
                "granted since you connected? s.tables() refreshes what the session knows"
            )
        return TableQuery(session=self, table=name, dataset=self.dataset)

    def run(self, query: Query) -> ProtectedResult:
        payload = self._transport.request("query", {"query": query.to_wire()})
        return self._result(payload)

    def _result(self, payload: dict[str, Any]) -> ProtectedResult:
        result = result_from_payload(payload)
        result._session = self  # for save_release()
        if self._report_dir:  # a scheduled report's kernel: list what it received, for the run's marking
            with (Path(self._report_dir) / ".results.jsonl").open("a") as f:
                received = {
                    "seq": result.audit_id,
                    "label": result.label,
                    "handling": result.provenance.caveat,
                    "export": result.provenance.export,
                }
                f.write(json.dumps(received) + "\n")
        if self._auto_release is not None:  # scheduled reports: every result is saved as a release
            self._released += 1
            stem = Path(str(self._notebook or "session").split("#")[0]).stem
            self.save_release(  # in the run's private folder, which the runner publishes protected
                result.audit_id,
                f"{stem}-{self._released:02d}",
                path=Path(self._auto_release) / f"{self._released:02d}-{stem}",
                unencrypted=True,
                _in_report=True,
            )
        return result

    # -- releases -------------------------------------------------------------------------------
    def note_output(self, audit_id: int, *, comment: str | None = None, exception: str | None = None) -> dict[str, Any]:
        """A comment on one of your sdc outputs, or a request for an exception, for the output
        checker (``r.comment(...)``, ``r.request_exception(...)``)."""
        body = {
            "audit_id": audit_id,
            **({"comment": comment} if comment else {}),
            **({"exception": exception} if exception else {}),
        }
        return dict(self._transport.request("output_note", body))

    def request_access(
        self,
        *,
        group: str,
        tables: Mapping[str, Any],
        purpose: str,
        legal_basis: str,
        agreement: str,
        start: str,
        end: str,
    ) -> dict[str, Any]:
        """Apply for access: ``tables`` is ``{table: "all" or [columns]}`` for ``group``, for
        ``purpose``, under ``agreement`` and ``legal_basis``, from ``start`` to ``end``
        (YYYY-MM-DD). The data owner approves or rejects it; returns the request as recorded."""
        application = {
            "group": group,
            "tables": dict(tables),
            "purpose": purpose,
            "legal_basis": legal_basis,
            "agreement": agreement,
            "start": start,
            "end": end,
        }
        return dict(self._transport.request("access_request", {"application": application})["request"])

    def access_requests(self) -> list[dict[str, Any]]:
        """Your access requests and where each stands (pending, approved until a day, rejected...)."""
        return list(self._transport.request("access_requests", {})["requests"])

    def record_export(self, audit_id: int, file: str, protection: str) -> int:
        """Record in the audit log that the result of ``audit_id`` was written to ``file``
        (``protection``: zip, age or none); the record's number."""
        out = self._transport.request("export", {"audit_id": audit_id, "file": file, "protection": protection})
        return int(out["audit_id"])

    def save_release(
        self,
        audit_id: int,
        name: str,
        *,
        path: str | Path | None = None,
        notebook: str | None = None,
        parameters: dict[str, Any] | None = None,
        password: str | None = None,
        unencrypted: bool = False,
        _in_report: bool = False,
    ) -> Path:
        """Save the released result of ``audit_id`` as a named release and write its bundle to
        ``path`` (default ``<output_dir>/releases/<name>``, never the working directory: the
        ``output_dir`` setting or ``SAFESTATS_OUTPUT_DIR``). The notebook and its parameters are recorded:
        given, or from the scheduled-report runner, or the Jupyter session.

        The bundle of an OFFICIAL-SENSITIVE result is one protected archive (``<path>.zip``:
        AES-256 with ``password`` or ``SAFESTATS_EXPORT_PASSWORD``, or ``.zip.age`` to the
        policy's recipients), unless ``unencrypted=True``; either way the export is audited.
        ``safestats releases verify`` opens it with the same key."""
        notebook = notebook or self._notebook
        parameters = parameters if parameters is not None else self._parameters
        from safestats.dataset import sha256_file

        source = _notebook_file(notebook)
        digest = sha256_file(source) if source is not None else None
        body = {
            "audit_id": int(audit_id),
            "name": name,
            "notebook": notebook,
            "parameters": parameters,
            "notebook_sha256": digest,
        }
        target = Path(path) if path else self.output_dir / "releases" / name
        from safestats.exports import ExportPolicy, protected_name, resolve_password

        out = self._transport.request("release_save", body)
        out_meta = out["payload"].get("meta", {}).get("export") or {}
        if not out_meta.get("required") or unencrypted:
            if out_meta.get("required") and not _in_report:  # a report's run is recorded as a whole
                self.record_export(int(audit_id), str(target), "none")
            return write_bundle(target, out["manifest"], out["payload"], notebook=source)
        export = ExportPolicy.from_meta(out_meta)
        secret = resolve_password(password) if export.method == "zip" else None
        archive = protected_name(target, export)
        if archive.exists():
            raise ReleaseError(f"{archive} already exists; choose another path for the bundle")
        self.record_export(int(audit_id), str(archive), export.method)
        return write_protected_bundle(
            target, out["manifest"], out["payload"], notebook=source, export=export, password=secret
        )

    def releases(self) -> pd.DataFrame:
        """Your releases: id, name, audit record, time."""
        rows = self._transport.request("releases", {})["rows"]
        return pd.DataFrame(rows, columns=["id", "name", "user", "audit_seq", "time_utc"]).set_index("id")

    def release(self, release_id: str) -> dict[str, Any]:
        """How a release was made: its manifest."""
        return dict(self._transport.request("release_show", {"release_id": release_id})["manifest"])

    def reproduce(self, release_id: str) -> tuple[dict[str, Any], ProtectedResult]:
        """Reproduce a release: (a report saying whether it is identical and how it was
        reproduced, the reproduced result). Raises ReleaseError naming what changed."""
        out = self._transport.request("reproduce", {"release_id": release_id})
        payload = out.pop("payload")
        return out, result_from_payload(payload)

    def whoami(self) -> dict[str, Any]:
        """Who the service takes you to be: user, groups, organisation, interaction, whether a
        second factor is needed or open, and what you may read (``may_read`` per table,
        ``usable`` per column), which queries are then checked against while they are built."""
        me = dict(self._transport.request("whoami", {}))
        self._know(me)
        return me

    def budget(self) -> Budget:
        """Your privacy budget in the current period: total, spent and left — exact strings
        under their keys, and as numbers: ``b.left`` (a Fraction), ``b.left_float``."""
        return Budget(self._transport.request("budget", {}))

    def preview(self, query: Query | TableQuery) -> Preview:
        """What ``query`` would cost and how accurate it would be, without reading data or spending."""
        q = query.to_query() if isinstance(query, TableQuery) else query
        return Preview(self._transport.request("preview", {"query": q.to_wire()}))

    def sql(self, text: str) -> ProtectedResult:
        """Run an aggregate SQL query (see safestats.query.sql for what is allowed)."""
        return self._result(self._transport.request("sql", {"sql": text}))
