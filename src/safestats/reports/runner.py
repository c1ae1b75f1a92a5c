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
import shutil
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
from safestats.marking import colour, marking_text

__all__ = ["ReportFailed", "RunResult", "available", "run_due", "run_report"]

NOTEBOOKS = project_root() / "notebooks" / "quality"
_ENV_LOCK = threading.Lock()  # the kernel inherits os.environ: one run sets it at a time


@dataclass(frozen=True)
class RunResult:
    name: str
    folder: Path
    notebook: Path
    html: Path
    marking: str
    run_id: str
    audit_records: int


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
) -> RunResult:
    """Execute ``notebooks/quality/<name>.ipynb`` with ``params``; publish it under ``out_root``.

    ``service``: (URL, token) of a safestats service. The kernel then gets only that URL and a
    service-identity token — no census folder, store URL or key file — and every query the
    notebook makes goes over HTTP; otherwise the notebook runs embedded (synthetic census only)."""
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
            return _run_once(name, source, dict(params), settings, out_root, slug, when, service)
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
) -> RunResult:
    import papermill as pm

    tmp = out_root / f".tmp-{slug}"
    final = out_root / name / slug
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    run_id = f"quality/{name}.ipynb#{slug}"
    executed = tmp / f"{name}.ipynb"
    env = {
        "SAFESTATS_NOTEBOOK": run_id,
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
                    progress_bar=False,
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
        page = _html(executed, marking, label, name, params, run_id, when)
        (tmp / f"{name}.html").write_text(page)
        (tmp / "run.json").write_text(
            json.dumps(
                {
                    "report": name,
                    "parameters": params,
                    "run_id": run_id,
                    "started_utc": when.isoformat(),
                    "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
                    "marking": marking,
                    "audit_records": [r["seq"] for r in records],
                    "software_version": __version__,
                    "releases": sorted(p.name for p in (tmp / "releases").iterdir())
                    if (tmp / "releases").exists()
                    else [],
                },
                indent=2,
            )
        )
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)  # the whole run appears at once, or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return RunResult(name, final, final / f"{name}.ipynb", final / f"{name}.html", marking, run_id, len(records))


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


def _html(
    executed: Path, marking: str, label: str, name: str, params: Mapping[str, Any], run_id: str, when: dt.datetime
) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    banner = colour(label)
    mark = html.escape(marking)
    style = (
        "<style>.safestats-page-marking{position:fixed;left:0;right:0;text-align:center;z-index:1000;"
        f"background:{banner};color:#fff;font:bold 13px sans-serif;padding:3px;letter-spacing:.05em}}"
        ".safestats-page-marking.top{top:0}.safestats-page-marking.bottom{bottom:0}"
        "body{padding-top:28px;padding-bottom:28px}"
        "@media print{.safestats-page-marking{position:fixed}}</style>"
    )
    info = html.escape(
        f"safestats {__version__} · report {name} · parameters "
        f"{json.dumps(dict(params), sort_keys=True)} · run {run_id} · {when.isoformat()}"
    )
    banner_top = f'<div class="safestats-page-marking top">{mark}</div>'
    banner_bottom = f'<div class="safestats-page-marking bottom">{mark}</div>'
    provenance = f'<p class="safestats-run" style="font:12px sans-serif;color:#505a5f">{info}</p>'
    body = body.replace("<title>", f"<title>[{mark}] ", 1)
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
) -> list[RunResult]:
    """Run every report whose cron expression fires in the minute of ``now``.

    A schedule's top-level ``service: URL`` runs every report over HTTP against that service,
    with the token from ``SAFESTATS_TOKEN`` (or ``SAFESTATS_TOKEN_FILE``) of the runner's
    environment; without it, reports run embedded (the synthetic census only)."""
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
            )
            echo(f"report {entry['name']}: {result.html}")
            results.append(result)
        except ReportFailed as e:
            echo(f"report {entry['name']} FAILED: {e}")
    return results
