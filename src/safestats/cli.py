"""The ``safestats`` command line. Commands parse their arguments and dispatch; nothing more.

Errors a user can fix print one line (``error: ...``) and exit with the code from
:data:`safestats.errors.EXIT_CODES`; no traceback unless ``SAFESTATS_DEBUG=1``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from safestats.__about__ import __version__
from safestats.config import Settings
from safestats.errors import SafestatsError, exit_code_for

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line and return the exit code (the console script exits with it)."""
    environ = os.environ if environ is None else environ
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            standalone_mode=False,
            obj={"environ": environ},
            prog_name="safestats",
        )
        if isinstance(code, int) and not isinstance(code, bool):  # a command's ctx.exit(n)
            return code
    except SafestatsError as e:
        if environ.get("SAFESTATS_DEBUG") == "1":
            raise
        click.echo(f"error: {e.message}", err=True)
        return exit_code_for(e)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    return Settings.load(ctx.obj["environ"], **overrides)


def _load_catalog(settings: Settings, file: Path | None = None) -> Any:
    from safestats.catalog import load_catalog

    has_data = (settings.data_dir / "manifest.json").exists()
    return load_catalog(file or settings.catalog or None, data_dir=settings.data_dir if has_data else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="safestats")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """safestats: aggregate-only, disclosure-controlled, audited access to the school census."""
    ctx.ensure_object(dict)


# --- synth -------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--scale",
    type=click.Choice(["sample", "regional", "national"]),
    default="sample",
    show_default=True,
    help="How many pupils: ~50k, ~500k or ~8.8 million per term.",
)
@click.option("--seed", type=int, default=2017, show_default=True, help="Random seed.")
@click.option("--pupils", type=int, default=None, help="Override the scale's pupil count.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output folder [default: data/synthetic/<scale>]."
)
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "--encrypt",
    is_flag=True,
    help="Write the Parquet files encrypted under the census_kek_file key (or SAFESTATS_CENSUS_KEK).",
)
@click.pass_context
def synth(
    ctx: click.Context, scale: str, seed: int, pupils: int | None, out: Path | None, quiet: bool, encrypt: bool
) -> None:
    """Generate the synthetic school census (Parquet tables, register of schools, manifest)."""
    from safestats.dataset import open_dataset
    from safestats.synthetic.census import generate

    settings = _settings(ctx)
    out = out or settings.data_dir.parent / scale
    keys = None
    if encrypt:
        from safestats.census_keys import CensusKeys
        from safestats.cli_census import _kek

        keys = CensusKeys(_kek(ctx, None))
    generate(out, scale=scale, seed=seed, pupils=pupils, progress=None if not quiet else False, keys=keys)
    if not quiet:
        click.echo(open_dataset(out).summary())


# --- demo ------------------------------------------------------------------------------------


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the end-to-end demo on the synthetic census (what `make demo` shows)."""
    from safestats.demo import run_demo

    run_demo(_settings(ctx), echo=click.echo)


# --- query -----------------------------------------------------------------------------------


@cli.command()
@click.argument("sql")
@click.option("--user", default=None, help="User in the access policy [default: the user setting].")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.pass_context
def query(ctx: click.Context, sql: str, user: str | None, fmt: str) -> None:
    """Run one aggregate SQL query through the safe path (audited as an ad hoc request)."""
    import safestats

    settings = _settings(ctx, user=user)
    environ = dict(ctx.obj["environ"]) | {"SAFESTATS_INTERACTION": "ad hoc"}
    session = safestats.connect(environ=environ, **_overrides(settings))
    result = session.sql(sql)
    click.echo(result.to_csv() if fmt == "csv" else repr(result), nl=fmt != "csv")


def _overrides(settings: Settings) -> dict[str, Any]:
    return {
        "data_dir": settings.data_dir,
        "store_url": settings.store_url,
        "user": settings.user,
        "catalog": settings.catalog,
        "policy": settings.policy,
    }


# --- budget ------------------------------------------------------------------------------------


@cli.group()
def budget() -> None:
    """Privacy budgets (dp mode): set them per user and period, see what is spent and left."""


@budget.command("set")
@click.argument("user")
@click.argument("amount")
@click.option("--period", default=None, help="Budget period, e.g. 2017-Q1 [default: the current one].")
@click.pass_context
def budget_set(ctx: click.Context, user: str, amount: str, period: str | None) -> None:
    """Set USER's total budget (ε or ρ, as the user's policy says) to AMOUNT, e.g. 5 or 1/2."""
    import getpass

    from safestats.query.model import exact_fraction
    from safestats.result import show_amount

    service = _service(ctx)
    total = exact_fraction(amount, "amount")
    unit, period = service.set_budget(user, total, period=period, by=f"data owner ({getpass.getuser()})")
    click.echo(f"{user}: {unit} budget for {service.catalog.dataset} in {period} set to {show_amount(total)}")


@budget.command("show")
@click.argument("user", required=False)
@click.pass_context
def budget_show(ctx: click.Context, user: str | None) -> None:
    """Show the budget of USER (or of every dp user) in the current period."""
    from safestats.result import show_amount
    from safestats.store.ledger import current_period

    service = _service(ctx)
    users = [user] if user else sorted(service.policy.users)
    for name in users:
        d = service.policy.disclosure_for(service.identity(name))
        if d.mode != "dp":
            if user:
                click.echo(f"{name}: statistical disclosure control, no privacy budget")
            continue
        period = current_period(d.period)
        bal = service.ledger.balance(name, service.catalog.dataset, period, d.unit, d.budget)
        click.echo(
            f"{name:<20} {d.unit:<8} {period:<8} total {show_amount(bal.total):<14} "
            f"spent {show_amount(bal.spent):<14} left {show_amount(bal.left)}"
        )


def _service(ctx: click.Context) -> Any:
    from safestats.service.pipeline import Service

    return Service(_settings(ctx))


# --- users, store (serve and doctor: cli_serve.py) ---------------------------------------------------


@cli.group()
def users() -> None:
    """Users and their API tokens (the data owner's tools)."""


@users.command("add")
@click.argument("name")
@click.option("--group", "groups", multiple=True, required=True, help="A group from the policy (repeatable).")
@click.option("--org", required=True, help="The user's organisation (from the policy).")
@click.option("--days", type=int, default=90, show_default=True, help="Days the token is valid.")
@click.option("--service-identity", is_flag=True, help="A machine identity: its interaction type is 'scheduled'.")
@click.pass_context
def users_add(
    ctx: click.Context, name: str, groups: tuple[str, ...], org: str, days: int, service_identity: bool
) -> None:
    """Add user NAME and print their first token (shown once, stored only as a salted hash)."""
    from safestats.errors import UserError

    service = _service(ctx)
    if name in service.policy.users:
        raise UserError(f"{name} is defined in the policy file; pick another name")
    unknown = [g for g in groups if g not in service.policy.groups]
    if unknown:
        raise UserError(f"unknown group(s) {unknown}; groups are: {', '.join(service.policy.groups)}")
    if org not in service.policy.organisations:
        raise UserError(f"unknown organisation {org!r}; organisations are: {', '.join(service.policy.organisations)}")
    service.users.add_user(
        name,
        groups=list(groups),
        organisation=org,
        service=service_identity,
        interaction="scheduled" if service_identity else None,
    )
    token = service.users.issue_token(name, days=days)
    _admin_audit(service, f"user {name} added to {', '.join(groups)} ({org}); token issued for {days} days")
    click.echo(token)


@users.command("token")
@click.argument("name")
@click.option("--days", type=int, default=90, show_default=True)
@click.pass_context
def users_token(ctx: click.Context, name: str, days: int) -> None:
    """Issue a new token for NAME (earlier tokens stay valid until revoked or expired)."""
    service = _service(ctx)
    service.identity(name)  # must exist
    token = service.users.issue_token(name, days=days)
    _admin_audit(service, f"token issued to {name} for {days} days")
    click.echo(token)


@users.command("revoke")
@click.argument("name")
@click.pass_context
def users_revoke(ctx: click.Context, name: str) -> None:
    """Revoke every token of NAME."""
    service = _service(ctx)
    n = service.users.revoke(name)
    _admin_audit(service, f"{n} token(s) of {name} revoked")
    click.echo(f"revoked {n} token(s) of {name}")


@users.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    """Users (policy file and managed) with their groups and tokens (never the tokens themselves)."""
    service = _service(ctx)
    managed = service.users.users()
    for name, entry in sorted({**managed, **service.policy.users}.items()):
        tokens = service.users.tokens(name)
        live = sum(1 for t in tokens if not t.revoked)
        where = "policy" if name in service.policy.users else "managed"
        click.echo(
            f"{name:<22} {where:<8} {','.join(entry['groups']):<34} {entry['organisation']:<6} "
            f"tokens: {live} live, {len(tokens) - live} revoked"
        )


def _admin_audit(service: Any, reason: str) -> None:
    import getpass

    service.audit_admin(f"data owner ({getpass.getuser()})", "admin", reason)


@cli.group()
def store() -> None:
    """The service's own database: schema version, migrations, PostgreSQL hardening."""


@store.command("migrate")
@click.pass_context
def store_migrate(ctx: click.Context) -> None:
    """Create or upgrade the schema of the store (the service also does this when it starts)."""
    from safestats.store.db import open_store
    from safestats.store.migrations import schema_version

    engine = open_store(_settings(ctx).store_url)
    click.echo(f"ok: schema version {schema_version(engine)}")


@store.command("harden")
@click.argument("service_role")
@click.pass_context
def store_harden(ctx: click.Context, service_role: str) -> None:
    """PostgreSQL: grant SERVICE_ROLE what the service needs; the audit log append-only for it."""
    from safestats.store.db import open_store
    from safestats.store.migrations import harden_postgres

    harden_postgres(open_store(_settings(ctx).store_url), service_role)
    click.echo(f"ok: {service_role} may append to the audit log but not change or delete it")


# --- reports ----------------------------------------------------------------------------------


@cli.group()
def reports() -> None:
    """Quality-assessment reports: papermill notebooks run as the scheduled-reports identity."""


@reports.command("list")
def reports_list() -> None:
    """The reports that can be run (notebooks/quality/*.ipynb)."""
    from safestats.reports.runner import available

    for name in available():
        click.echo(name)


@reports.command("status")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Reports folder [default: reports/].")
@click.option("--last", type=int, default=20, show_default=True, help="How many runs, newest first.")
def reports_status(out: Path | None, last: int) -> None:
    """Recent runs, published or failed: outcome, start, duration, marking, where (a job list)."""
    from safestats.reports.runs import recent_runs

    runs = recent_runs(out, limit=last)
    if not runs:
        click.echo("no report runs yet")
    for r in runs:
        took = f"{r['seconds']:.0f} s" if r["seconds"] is not None else "-"
        params = ",".join(f"{k}={v}" for k, v in sorted(r["parameters"].items())) or "defaults"
        click.echo(f"{r['started_utc']}  {r['report']:<22} {params:<24} {r['outcome']:<22} {took:>6}  {r['where']}")


@reports.command("run")
@click.argument("name")
@click.option("--param", "params", multiple=True, help="A notebook parameter, KEY=VALUE (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder [default: reports/].")
@click.option("--retries", type=int, default=0, show_default=True, help="Tries more after a failure.")
@click.option(
    "--unencrypted",
    is_flag=True,
    help="Publish an OFFICIAL-SENSITIVE run in clear (audited); else it is one protected archive "
    "(SAFESTATS_EXPORT_PASSWORD, or the policy's age recipients).",
)
@click.option(
    "--service",
    "service_url",
    default=None,
    help="Run the notebook against this safestats service over HTTP, with the token in SAFESTATS_TOKEN "
    "(or SAFESTATS_TOKEN_FILE): its kernel gets the URL and the token only, no path to data.",
)
@click.pass_context
def reports_run(
    ctx: click.Context,
    name: str,
    params: tuple[str, ...],
    out: Path | None,
    retries: int,
    unencrypted: bool,
    service_url: str | None,
) -> None:
    """Run report NAME and write the executed notebook and its HTML report."""
    from safestats.client.http import read_token
    from safestats.errors import UserError
    from safestats.reports.runner import run_report

    values = {}
    for p in params:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UserError(f"--param takes KEY=VALUE, not {p!r}")
        values[key] = value
    service = (service_url, read_token(ctx.obj["environ"])) if service_url else None
    result = run_report(
        name,
        values,
        settings=_settings(ctx),
        out_root=out,
        retries=retries,
        echo=lambda m: click.echo(m, err=True),
        service=service,
        unencrypted=unencrypted,
        password=ctx.obj["environ"].get("SAFESTATS_EXPORT_PASSWORD"),
    )
    click.echo(f"{result.marking}: {result.archive or result.html}")


@reports.command("schedule")
@click.option(
    "--file",
    "schedule_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Schedule YAML [default: the shipped resources/schedule.yaml].",
)
@click.option("--once", is_flag=True, help="Run what is due this minute and exit (for cron or a systemd timer).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder [default: reports/].")
@click.pass_context
def reports_schedule(ctx: click.Context, schedule_file: Path | None, once: bool, out: Path | None) -> None:
    """Run due reports from a schedule of cron expressions (a long-running scheduler by default)."""
    import datetime as dt
    import time

    from safestats.reports.runner import run_due
    from safestats.resources import RESOURCES

    settings = _settings(ctx)
    schedule_file = schedule_file or RESOURCES / "schedule.yaml"

    def publish(now: dt.datetime, root: Path) -> Path:
        from safestats.service.publishing import publish_transparency

        return publish_transparency(_service(ctx), now=now, out_root=root)

    def due(now: dt.datetime) -> None:
        run_due(schedule_file, settings=settings, now=now, out_root=out, echo=click.echo, publish_transparency=publish)

    if once:
        due(dt.datetime.now(dt.UTC))
        return
    click.echo(f"scheduler running from {schedule_file} (Ctrl-C to stop)", err=True)
    last = None
    while True:
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        if now != last:
            due(now)
            last = now
        time.sleep(5)


# --- catalog -----------------------------------------------------------------------------------


@cli.group()
def catalog() -> None:
    """Show or check the catalog of tables and columns."""


@catalog.command("validate")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.pass_context
def catalog_validate(ctx: click.Context, file: Path | None) -> None:
    """Load and check a catalog file (the configured one by default)."""
    cat = _load_catalog(_settings(ctx), file)
    n_cols = sum(len(t.columns) for t in cat.tables.values())
    click.echo(f"ok: {cat.path}: {len(cat.tables)} tables, {n_cols} columns, {len(cat.joins)} joins")


@catalog.command("show")
@click.argument("table", required=False)
@click.pass_context
def catalog_show(ctx: click.Context, table: str | None) -> None:
    """List the tables, or the columns of TABLE with role, type and classification."""
    cat = _load_catalog(_settings(ctx))
    if table is None:
        for t in cat.tables.values():
            flag = "restricted" if t.restricted else "          "
            click.echo(f"{t.name:<34} {flag}  {t.classification:<18} {t.description}")
        return
    t = cat.table(table)
    click.echo(f"{t.name} ({t.classification}{', restricted' if t.restricted else ''})")
    for c in t.columns.values():
        extra = f"{len(c.domain)} values" if c.domain else (f"bounds {c.bounds}" if c.bounds else "")
        click.echo(f"  {c.name:<24} {c.role:<11} {c.type:<7} {c.classification:<18} {extra}")


def _register() -> None:
    """Command groups kept in modules of their own (registered before __main__ runs, so
    `python -m safestats.cli audit ...` and `... releases ...` work too)."""
    from safestats.cli_access import access
    from safestats.cli_audit import audit
    from safestats.cli_census import census
    from safestats.cli_factors import second_factor
    from safestats.cli_foi import foi
    from safestats.cli_incidents import incidents
    from safestats.cli_outputs import outputs
    from safestats.cli_releases import releases
    from safestats.cli_retention import retention
    from safestats.cli_serve import doctor, serve

    cli.add_command(access)
    cli.add_command(audit)
    cli.add_command(census)
    cli.add_command(foi)
    cli.add_command(incidents)
    cli.add_command(outputs)
    cli.add_command(releases)
    cli.add_command(retention)
    cli.add_command(serve)
    cli.add_command(doctor)
    users.add_command(second_factor)


_register()

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
