"""Run a quality notebook with papermill and publish it as an executed notebook and HTML report.

A run executes in a temporary folder and is moved into place only when the notebook and the
HTML are both written, so a failed run is never half-written; failures are retried per policy
and recorded under ``failed/``. Every number in the notebook comes through safestats, under the
identity the notebook connects as (the scheduled-reports identity for quality reports), and
each request carries the run id in its audit record, which is how the report's marking is
found: the highest classification of anything it released.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safestats.__about__ import __version__
from safestats.audit.log import AuditLog
from safestats.config import Settings, project_root
from safestats.errors import ReportFailed, UserError
from safestats.marking import caveat, colour, marking_text

__all__ = ["ReportFailed", "RunResult", "available", "run_due", "run_report"]

NOTEBOOKS = project_root() / "notebooks" / "quality"
_ENV_LOCK = threading.Lock()  # the kernel inherits os.environ: one run sets it at a time


@dataclass(frozen=True)
class RunResult:
    name: str
    folder: Path
    notebook: Path  # in clear runs; in a protected run these are inside ``archive``
    html: Path
    marking: str
    run_id: str
    audit_records: int
    archive: Path | None = None  # the protected archive of an OFFICIAL-SENSITIVE run


@contextlib.contextmanager
def kernel_environment(env: Mapping[str, str], *, only: bool = False) -> Iterator[None]:
    """Set ``env`` for the kernels started inside (they inherit os.environ), then restore it;
    one notebook run at a time sets it. ``only``: every other ``SAFESTATS_*`` variable is
    removed for the run, so a kernel sees nothing of the service's settings but ``env``."""
    with _ENV_LOCK:
        dropped = [k for k in os.environ if only and k.startswith("SAFESTATS_") and k not in env]
        saved = {k: os.environ.get(k) for k in [*env, *dropped]}
        for k in dropped:
            del os.environ[k]
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def available(notebooks: Path = NOTEBOOKS) -> list[str]:
    return sorted(p.stem for p in notebooks.glob("*.ipynb"))


def _slug(name: str, params: Mapping[str, Any], when: dt.datetime) -> str:
    parts = "_".join(f"{k}-{v}" for k, v in sorted(params.items()))
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in parts)[:80]
    return f"{name}__{safe or 'defaults'}__{when.strftime('%Y%m%dT%H%M%SZ')}"


def run_report(
    name: str,
    params: Mapping[str, Any],
    *,
    settings: Settings,
    out_root: Path | None = None,
    retries: int = 0,
    notebooks: Path = NOTEBOOKS,
    echo: Callable[[str], None] | None = None,
    service: tuple[str, str] | None = None,
    unencrypted: bool = False,
    password: str | None = None,
) -> RunResult:
    """Execute ``notebooks/quality/<name>.ipynb`` with ``params``; publish it under ``out_root``.

    ``service``: (URL, token) of a safestats service. The kernel then gets only that URL and a
    service-identity token — no census folder, store URL or key file — and every query the
    notebook makes goes over HTTP; otherwise the notebook runs embedded (synthetic census only).

    A run whose marking is above the lowest (OFFICIAL-SENSITIVE) is published as one protected
    archive of everything it made (notebook, page, releases, key numbers), with ``run.json`` in
    clear beside it — encrypted as the policy's ``exports:`` says (``SAFESTATS_EXPORT_PASSWORD``
    in the runner's environment for ``zip``) — unless ``unencrypted``; either way audited."""
    source = notebooks / f"{name}.ipynb"
    if not source.exists():
        raise UserError(f"no report {name!r}; reports are: {', '.join(available(notebooks))}")
    params = check_parameters(name, source, params)  # a wrong name or type fails here, in one line
    out_root = Path(out_root or project_root() / "reports")
    out_root.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(retries + 1):
        when = dt.datetime.now(dt.UTC)
        slug = _slug(name, params, when)
        try:
            return _run_once(name, source, dict(params), settings, out_root, slug, when, service, unencrypted, password)
        except UserError:
            raise  # the report's own error (a refused query, a bad value): trying again cannot help
        except Exception as e:  # noqa: BLE001 - every other failure is reported and retried
            last = e
            if echo:
                echo(f"report {name} attempt {attempt + 1} of {retries + 1} failed: {e.__class__.__name__}: {e}")
            if attempt < retries:
                time.sleep(min(2**attempt, 30))
    failed = out_root / "failed"
    failed.mkdir(exist_ok=True)
    (failed / f"{slug}.json").write_text(
        json.dumps(
            {
                "report": name,
                "parameters": dict(params),
                "failed_utc": dt.datetime.now(dt.UTC).isoformat(),
                "attempts": retries + 1,
                "error": f"{last.__class__.__name__}: {str(last)[:2000]}",
            },
            indent=2,
        )
    )
    raise ReportFailed(f"report {name} failed after {retries + 1} attempt(s): {last}; see {failed / (slug + '.json')}")


def _run_once(
    name: str,
    source: Path,
    params: dict[str, Any],
    settings: Settings,
    out_root: Path,
    slug: str,
    when: dt.datetime,
    service: tuple[str, str] | None = None,
    unencrypted: bool = False,
    password: str | None = None,
) -> RunResult:
    import papermill as pm

    tmp = out_root / f".tmp-{slug}"
    final = out_root / name / slug
    if tmp.exists():
        shutil.rmtree(tmp)
    clean_killed_runs(out_root)
    tmp.mkdir(parents=True, mode=0o700)
    (tmp / ".pid").write_text(str(os.getpid()))  # a run killed before it ends is cleaned by the next
    run_id = f"quality/{name}.ipynb#{slug}"
    executed = tmp / f"{name}.ipynb"
    env = {
        "SAFESTATS_NOTEBOOK": run_id,
        "SAFESTATS_PURPOSE": f"scheduled quality report {name}",
        "SAFESTATS_PARAMETERS": json.dumps(params, default=str),
        "SAFESTATS_RELEASE_DIR": str(tmp / "releases"),  # every table the report makes is a release
        "SAFESTATS_REPORT_DIR": str(tmp),  # what the notebook writes (key_numbers.json) goes in the run
        "MPLBACKEND": "Agg",
    }
    if service is not None:  # over HTTP: the kernel holds the URL and a token, nothing else
        env |= {"SAFESTATS_URL": service[0], "SAFESTATS_TOKEN": service[1]}
        if os.environ.get("SAFESTATS_CA_BUNDLE"):
            env["SAFESTATS_CA_BUNDLE"] = os.environ["SAFESTATS_CA_BUNDLE"]
    else:
        env |= _embedded_env(settings)
    sockets = Path(tempfile.mkdtemp(prefix="safestats-kernel-"))  # 0700: the kernel's Unix sockets
    try:
        with kernel_environment(env, only=service is not None):
            try:
                pm.execute_notebook(
                    str(source),
                    str(executed),
                    parameters=params,
                    cwd=str(tmp),
                    kernel_name="python3",
                    progress_bar=sys.stderr is not None and sys.stderr.isatty(),  # a terminal sees it move
                    log_output=False,
                    kernel_manager_class=_ipc_kernels(sockets),
                )
            except pm.PapermillExecutionError as e:
                raise _as_user_error(e) from None
            finally:
                shutil.rmtree(sockets, ignore_errors=True)
        if service is None:  # the service's own log: every request of this run
            records = [
                r
                for r in AuditLog.open(settings.store_url).records(start=when.isoformat())
                if (r.get("client") or {}).get("notebook") == run_id and r["operation"] != "release save"
            ]
        else:  # over HTTP the runner cannot read the log: the results the session received
            records = _received(tmp / RECEIVED)
        (tmp / RECEIVED).unlink(missing_ok=True)
        labels = [r["label"] for r in records if r.get("label")]
        label, marking = _marking(labels, settings)
        handling = _handling(label, records, settings, over_http=service is not None)
        page = _html(executed, marking, label, name, params, run_id, when, handling)
        (tmp / f"{name}.html").write_text(page)
        releases = sorted(p.name for p in (tmp / "releases").iterdir()) if (tmp / "releases").exists() else []
        protection = _protect_run(
            tmp, name, slug, label, marking, handling, records, settings, service, unencrypted, password
        )
        (tmp / "run.json").write_text(
            json.dumps(
                {
                    "report": name,
                    "parameters": params,
                    "run_id": run_id,
                    "started_utc": when.isoformat(),
                    "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
                    "marking": marking,
                    "handling": handling,
                    "audit_records": [r["seq"] for r in records],
                    "software_version": __version__,
                    "releases": releases,
                    "protection": protection,  # clear (OFFICIAL), none (asked), zip or age
                    "archive": f"{name}.zip" + (".age" if protection == "age" else "")
                    if protection in ("zip", "age")
                    else None,
                },
                indent=2,
            )
        )
        (tmp / ".pid").unlink(missing_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)  # the whole run appears at once, or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    archive = next(iter(sorted(final.glob(f"{name}.zip*"))), None)
    return RunResult(
        name, final, final / f"{name}.ipynb", final / f"{name}.html", marking, run_id, len(records), archive
    )


def clean_killed_runs(out_root: Path) -> list[Path]:
    """Remove the working folders of runs whose process is gone (killed: a run that fails
    removes its own); the folders removed. A folder of a live process is left alone."""
    removed = []
    for tmp in Path(out_root).glob(".tmp-*"):
        try:
            pid = int((tmp / ".pid").read_text())
        except (OSError, ValueError):
            continue  # not this runner's, or still being made
        try:
            os.kill(pid, 0)
            continue  # alive: another run in progress
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _protect_run(
    tmp: Path,
    name: str,
    slug: str,
    label: str,
    marking: str,
    handling: str,
    records: list[dict[str, Any]],
    settings: Settings,
    service: tuple[str, str] | None,
    unencrypted: bool,
    password: str | None,
) -> str:
    """Pack an OFFICIAL-SENSITIVE run's files into one protected archive (after recording the
    export: no record, nothing published); how it was protected."""
    from safestats.catalog import load_catalog
    from safestats.exports import ExportPolicy, protected_name, resolve_password, write_protected

    if label == load_catalog(settings.catalog or None).classifications[0]:
        return "clear"
    if service is None:
        from safestats.access.policy import load_policy

        policy = load_policy(settings.policy or None, catalog=load_catalog(settings.catalog or None)).exports
    else:  # over HTTP: as the service said with the results
        sent = [r["export"] for r in records if r.get("export")]
        policy = ExportPolicy.from_meta(sent[0] if sent else None)
    method = "none" if unencrypted else policy.method
    secret = resolve_password(password) if method == "zip" else None  # a missing password fails before any record
    target = f"{slug}/{protected_name(Path(name), policy).name}" if method != "none" else slug
    _record_run_export(records, target, method, settings, service, f"quality/{name}.ipynb#{slug}")
    if method == "none":
        return method
    files = {
        str(f.relative_to(tmp)): f.read_bytes()
        for f in sorted(tmp.rglob("*"))
        if f.is_file() and f.name not in ("run.json", RECEIVED, ".pid")
    }
    write_protected(tmp / name, files, marking=marking, caveat=handling, policy=policy, password=secret)
    for child in list(tmp.iterdir()):
        if child.name.startswith(f"{name}.zip"):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return method


def _record_run_export(
    records: list[dict[str, Any]],
    target: str,
    method: str,
    settings: Settings,
    service: tuple[str, str] | None,
    run_id: str,
) -> None:
    """An export record for each result the run publishes, by the identity that received it,
    naming the run (a service identity's request outside a run would be an incident)."""
    from safestats.client.session import connect

    records = [r for r in records if r.get("outcome", "released") == "released" and r.get("seq")]
    if service is None:
        users = {str(r["user"]) for r in records if r.get("user")}
        env = {**_embedded_env(settings), "SAFESTATS_NOTEBOOK": run_id}
        sessions = {u: connect(environ={**env, "SAFESTATS_USER": u}) for u in users}
        for r in records:
            sessions[str(r["user"])].record_export(int(r["seq"]), target, method)
        return
    session = connect(
        service[0], token=service[1], second_factor=False, environ={**os.environ, "SAFESTATS_NOTEBOOK": run_id}
    )
    for r in records:
        if r.get("seq"):
            session.record_export(int(r["seq"]), target, method)


#: Where a session in a report's kernel lists the results it received (audit record, marking).
RECEIVED = ".results.jsonl"


def _received(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_parameters(name: str, source: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` checked against the notebook's parameters cell (papermill.inspect_notebook):
    an unknown name is an error (it would run with the default and name the folder after the
    typo), and a value is converted to the type of its default (a whole number, a decimal, true
    or false) or refused."""
    import ast

    import papermill as pm

    from safestats.errors import QueryError, did_you_mean

    declared = pm.inspect_notebook(str(source))
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in declared:
            raise QueryError(
                f"report {name} has no parameter {key!r}{did_you_mean(key, declared)}; its parameters are: "
                + ", ".join(declared)
            )
        try:
            default = ast.literal_eval(str(declared[key]["default"]))
        except (ValueError, SyntaxError):
            default = None
        out[key] = _as_type_of(default, value, key, name)
    return out


def _as_type_of(default: Any, value: Any, key: str, name: str) -> Any:
    from safestats.errors import QueryError

    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        return type(default)(value)
    except ValueError:
        raise QueryError(
            f"report {name}: parameter {key} takes a {type(default).__name__} like {default!r}, not {value!r}"
        ) from None


def _as_user_error(error: Exception) -> Exception:
    """A notebook that stopped on one of safestats' user errors (a refused query, an unknown
    value) fails with that error, in one line; anything else stays what it was."""
    from safestats import errors

    cls = getattr(errors, str(getattr(error, "ename", "")), None)
    if isinstance(cls, type) and issubclass(cls, errors.UserError):
        return cls(f"the report stopped: {getattr(error, 'evalue', '')}")
    return error


def _ipc_kernels(folder: Path) -> type:
    """A kernel manager whose kernel talks over Unix sockets in ``folder`` (mode 0700) instead of
    TCP ports on loopback: no other local user can reach the kernel (a TCP port is open to all of
    them, guarded by the connection file's key alone), and no "TCP without encryption" warning."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:
            return str(folder / "kernel")

    return IPCKernelManager


def _embedded_env(settings: Settings) -> dict[str, str]:
    """The service's settings for a kernel that runs it embedded (the synthetic census only)."""
    return {
        "SAFESTATS_DATA_DIR": str(settings.data_dir),
        "SAFESTATS_STORE_URL": settings.store_url,
        "SAFESTATS_CATALOG": settings.catalog,
        "SAFESTATS_POLICY": settings.policy,
        "SAFESTATS_SECRET_KEY_FILE": settings.secret_key_file,
        "SAFESTATS_SIGNING_KEY_FILE": settings.signing_key_file,
        "SAFESTATS_WITNESS_FILE": settings.witness_file,
        "SAFESTATS_OUTPUT_CHECKING_DIR": settings.output_checking_dir,
    }


def _marking(labels: list[str], settings: Settings) -> tuple[str, str]:
    from safestats.catalog import load_catalog

    catalog = load_catalog(settings.catalog or None)
    top = catalog.highest(set(labels))
    return top, marking_text(top, catalog.impact_levels.get(top, ""))


def _handling(label: str, records: list[dict[str, Any]], settings: Settings, *, over_http: bool) -> str:
    """The handling caveat of the page's marking: the policy's (embedded), or what the service
    sent with the results of that marking (over HTTP, where the runner has no policy)."""
    if over_http:
        sent = [r["handling"] for r in records if r.get("label") == label and r.get("handling")]
        return sent[0] if sent else caveat(label)
    from safestats.access.policy import load_policy
    from safestats.catalog import load_catalog

    return load_policy(settings.policy or None, catalog=load_catalog(settings.catalog or None)).caveat(label)


def _html(
    executed: Path,
    marking: str,
    label: str,
    name: str,
    params: Mapping[str, Any],
    run_id: str,
    when: dt.datetime,
    handling: str = "",
) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    title = f"{name} — safestats report"
    nb.metadata["title"] = title  # nbconvert's lab template titles the page with it
    # report mode: the outputs a reader needs, not the code (the executed notebook keeps it)
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True)
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    banner = colour(label)
    mark = html.escape(marking)
    style = (
        "<style>.safestats-page-marking{position:fixed;left:0;right:0;text-align:center;z-index:1000;"
        f"background:{banner};color:#fff;font:bold 13px sans-serif;padding:3px;letter-spacing:.05em}}"
        ".safestats-page-marking.top{top:0}.safestats-page-marking.bottom{bottom:0}"
        ".safestats-handling{font-weight:normal;font-size:11px;letter-spacing:0;margin-left:.6em}"
        "body{padding-top:44px;padding-bottom:44px}"
        "@media print{.safestats-page-marking{position:fixed}}</style>"
    )
    info = html.escape(
        f"{handling or caveat(label)} · safestats {__version__} · report {name} · parameters "
        f"{json.dumps(dict(params), sort_keys=True)} · run {run_id} · {when.isoformat()}"
    )
    caveat_text = html.escape(handling or caveat(label))
    line = f'{mark} <span class="safestats-handling">{caveat_text}</span>'
    banner_top = f'<div class="safestats-page-marking top">{line}</div>'
    banner_bottom = f'<div class="safestats-page-marking bottom">{line}</div>'
    provenance = f'<p class="safestats-run" style="font:12px sans-serif;color:#505a5f">{info}</p>'
    shown = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in sorted(params.items())
    )
    header = (
        f'<header class="safestats-report" style="font:14px sans-serif;margin:0 1em 1em">'
        f"<h1>{html.escape(name.replace('_', ' '))}</h1>"
        f'<table class="safestats-parameters">{shown or "<tr><td>default parameters</td></tr>"}</table>'
        f'<p style="color:#505a5f">run {html.escape(run_id)} · {html.escape(when.isoformat(timespec="seconds"))}</p>'
        "</header>"
    )
    body = re.sub(r"<title>.*?</title>", f"<title>[{mark}] {html.escape(title)}</title>", body, count=1, flags=re.S)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + header, body, count=1)
    body = body.replace("</head>", style + "</head>", 1)
    body = body.replace("<body", '<body data-marking="' + mark + '"', 1)
    return body.replace("</body>", f"{banner_top}{provenance}{banner_bottom}</body>", 1)


def run_due(
    schedule_file: Path,
    *,
    settings: Settings,
    now: dt.datetime,
    out_root: Path | None = None,
    echo: Callable[[str], None] = print,
    notebooks: Path = NOTEBOOKS,
    publish_transparency: Callable[[dt.datetime, Path], Path] | None = None,
) -> list[RunResult]:
    """Run every report whose cron expression fires in the minute of ``now``.

    An entry ``name: transparency`` publishes the transparency report of the month before
    through ``publish_transparency`` (the command line hands it the service: the runner cannot
    read the audit log itself).

    A schedule's top-level ``service: URL`` runs every report over HTTP against that service,
    with the token from ``SAFESTATS_TOKEN`` (or ``SAFESTATS_TOKEN_FILE``) of the runner's
    environment; without it, reports run embedded (the synthetic census only). An entry's
    ``unencrypted: true`` publishes an OFFICIAL-SENSITIVE run in clear (audited)."""
    import yaml

    from safestats.reports.cron import due

    try:
        raw = yaml.safe_load(Path(schedule_file).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"no schedule file {schedule_file}") from None
    service = None
    if raw.get("service"):
        from safestats.client.http import read_token

        service = (str(raw["service"]), read_token(os.environ))
    results = []
    for entry in raw.get("reports", []):
        if not due(str(entry["cron"]), now):
            continue
        if entry.get("name") == "transparency":
            if publish_transparency is None:
                echo("report transparency FAILED: it needs the service's audit log (run it where the service is)")
                continue
            echo(f"report transparency: {publish_transparency(now, Path(out_root or project_root() / 'reports'))}")
            continue
        try:
            result = run_report(
                str(entry["name"]),
                entry.get("params") or {},
                settings=settings,
                out_root=out_root,
                retries=int(entry.get("retries", 1)),
                echo=echo,
                notebooks=notebooks,
                service=service,
                unencrypted=bool(entry.get("unencrypted", False)),
            )
            echo(f"report {entry['name']}: {result.archive or result.html}")
            results.append(result)
        except (ReportFailed, UserError) as e:  # one report's failure does not stop the others
            echo(f"report {entry['name']} FAILED: {e}")
    return results
