"""``safestats audit``: verify the log against signed heads, prove it only grew, and the data
owner's reports (audit trail, access, transparency)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

__all__ = ["audit"]


def _service(ctx: click.Context) -> Any:
    from safestats.cli import _service as service

    return service(ctx)


class _LogOnly:
    """What `audit verify` needs of the service — its log (keys, witness), ledger and default
    budgets — without the service itself: no engine, pandas or OpenDP, and nothing created."""

    def __init__(self, ctx: click.Context) -> None:
        from pathlib import Path

        from safestats.access.policy import load_policy
        from safestats.audit.heads import Signer, witness_file
        from safestats.audit.log import AuditLog
        from safestats.catalog import load_catalog
        from safestats.dataset import open_dataset
        from safestats.store.ledger import Ledger
        from safestats.store.users import UserStore

        settings = _settings(ctx)
        key_file, signing = Path(settings.secret_key_file), Path(settings.signing_key_file)
        self.audit = AuditLog.open(
            settings.store_url,
            key=bytes.fromhex(key_file.read_text().strip()) if key_file.exists() else None,
            signer=Signer(signing) if signing.exists() else None,
            witness=witness_file(settings),
        )
        self.ledger = Ledger(self.audit.engine)
        self._users = UserStore(self.audit.engine)
        dataset = open_dataset(settings.data_dir)
        catalog = load_catalog(settings.catalog or None, data_dir=dataset.path)
        self._policy = load_policy(settings.policy or None, catalog=catalog)

    def default_budget(self, user: str) -> Any:
        """As Service.default_budget: the policy's budget for ``user`` (None: not dp)."""
        from safestats.errors import UserError

        try:
            managed = None if user in self._policy.users else self._users.get_user(user)
            d = self._policy.disclosure_for(self._policy.identity(user, managed=managed))
        except UserError:
            return None
        return d.budget if d.mode == "dp" else None


def _settings(ctx: click.Context) -> Any:
    from safestats.cli import _settings as settings

    return settings(ctx)


def _admin_audit(service: Any, reason: str) -> None:
    from safestats.cli import _admin_audit as admin_audit

    admin_audit(service, reason)


@click.group()
def audit() -> None:
    """The audit log: verify its hash chain, list its records."""


@audit.command("verify")
@click.option(
    "--head",
    "heads",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signed tree head published earlier (JSON, or a file of them one a line); repeatable.",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The service's public key (<signing_key_file>.pub) [default: the configured one].",
)
@click.pass_context
def audit_verify(ctx: click.Context, heads: tuple[Path, ...], public_key: Path | None) -> None:
    """Check the hash chain, the Merkle tree against every signed tree head (in the store, the
    witness file and --head), and that the budget ledger agrees with the log."""
    from safestats.audit.heads import load_public_key, read_heads
    from safestats.errors import AuditIntegrityError, UserError
    from safestats.store.ledger import unexplained_budgets, unexplained_spends

    service = _LogOnly(ctx)
    if public_key is not None:
        service.audit.public_key = load_public_key(public_key)
    try:
        given = read_heads(heads)
    except ValueError as e:
        raise UserError(f"--head: {e}") from None
    report = service.audit.verify(given)
    if not report.ok:
        raise AuditIntegrityError(f"audit log verification {report}")
    records = list(service.audit.records())
    problems = unexplained_spends(service.ledger, records) + unexplained_budgets(
        service.ledger, records, service.default_budget
    )
    if problems:
        raise AuditIntegrityError(
            f"the budget ledger disagrees with the audit log: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    click.echo(f"{report}; budget ledger agrees with the log")


@audit.command("prove")
@click.option(
    "--old",
    "old_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signed tree head published earlier (JSON).",
)
@click.pass_context
def audit_prove(ctx: click.Context, old_file: Path) -> None:
    """Print a consistency proof (JSON) that the log now extends the tree of an earlier head;
    anyone checks it with `audit check-proof` and the public key alone."""
    import json

    from safestats.audit.heads import read_heads
    from safestats.errors import UserError

    try:
        (old,) = read_heads([old_file])[-1:]
    except ValueError as e:
        raise UserError(f"--old: {e}") from None
    click.echo(json.dumps(_service(ctx).audit.consistency(old), sort_keys=True))


@audit.command("check-proof")
@click.argument("proof_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def audit_check_proof(proof_file: Path, public_key: Path) -> None:
    """Check a consistency proof offline: both heads signed by the key, the newer log extends the older."""
    import json

    from safestats.audit.heads import check_consistency, load_public_key
    from safestats.errors import AuditIntegrityError

    try:
        click.echo(check_consistency(json.loads(proof_file.read_text()), load_public_key(public_key)))
    except (ValueError, KeyError) as e:
        raise AuditIntegrityError(f"consistency proof: {e}") from None


@audit.command("head")
@click.pass_context
def audit_head(ctx: click.Context) -> None:
    """Sign the log's tree head now and print it (JSON): keep it, publish it, verify against it later."""
    import json

    head = _service(ctx).audit.sign_head()
    if head is None:
        from safestats.errors import UserError

        raise UserError("the audit log has no records yet")
    click.echo(json.dumps(head.to_dict(), sort_keys=True))


def inclusive_period(start: str, end: str) -> tuple[str, str]:
    """``--from``/``--to`` (days, both inclusive) as [first day, the day after the last): a
    clear error for a malformed or reversed range."""
    import datetime as dt

    from safestats.errors import UserError

    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError:
        raise UserError("--from and --to take dates as YYYY-MM-DD") from None
    if last < first:
        raise UserError(f"--to {end} is before --from {start}: the period runs from --from to --to, inclusive")
    return first.isoformat(), (last + dt.timedelta(days=1)).isoformat()


def _marked(report: dict[str, Any], service: Any, *, names_users: bool) -> dict[str, Any]:
    """The report with its marking and handling caveat: OFFICIAL-SENSITIVE when it names users
    (and what each asked for), OFFICIAL otherwise (redacted, or counts only)."""
    from safestats.marking import marking_text

    order = service.catalog.classifications
    label = order[-1] if names_users else order[0]
    marking = marking_text(label, service.catalog.impact_levels.get(label, ""))
    return {"marking": marking, "label": label, "handling": service.policy.caveat(label), **report}


def _publish(
    ctx: click.Context,
    service: Any,
    report: Mapping[str, Any],
    text: str,
    out: Path | None,
    unencrypted: bool,
    what: str,
) -> None:
    """Print ``text``, or write it to ``out`` — protected when the report is OFFICIAL-SENSITIVE
    (it names users) unless ``--unencrypted`` — after the audit record of the report says where
    it went and how."""
    from safestats.exports import prepare_output

    if out is None:
        _admin_audit(service, what)
        click.echo(text, nl=not text.endswith("\n"))
        return
    prepared = prepare_output(
        out,
        text,
        marking=report["marking"],
        caveat=report["handling"],
        policy=service.policy.exports,
        protect=report["label"] != service.catalog.classifications[0],
        unencrypted=unencrypted,
        environ=ctx.obj["environ"],
    )
    how = {"clear": "", "none": ", in clear (--unencrypted)"}.get(
        prepared.protection, f", encrypted ({prepared.protection})"
    )
    _admin_audit(service, f"{what}, written to {prepared.target}{how}")
    prepared.write()
    click.echo(f"written {prepared.target}", err=True)


_unencrypted_option = click.option(
    "--unencrypted", is_flag=True, help="Write an OFFICIAL-SENSITIVE report to --out in clear (audited)."
)


_format_option = click.option(
    "--format", "fmt", type=click.Choice(["html", "csv", "json"]), default="html", show_default=True
)
_out_option = click.option("--out", type=click.Path(path_type=Path), default=None, help="File [default: stdout].")
_redact_option = click.option("--redact-users", is_flag=True, help="Stable pseudonyms instead of user names.")


@audit.command("report")
@click.option("--from", "start", required=True, help="First day, YYYY-MM-DD (inclusive).")
@click.option("--to", "end", required=True, help="Last day, YYYY-MM-DD (inclusive).")
@_redact_option
@_format_option
@_out_option
@_unencrypted_option
@click.pass_context
def audit_report(
    ctx: click.Context, start: str, end: str, redact_users: bool, fmt: str, out: Path | None, unencrypted: bool
) -> None:
    """Every request in the period, in time order, with field names used and returned; summaries."""

    from safestats.audit.reports import audit_trail, render

    first, after = inclusive_period(start, end)
    service = _service(ctx)
    names = [*service.policy.users, *service.users.users()]
    report = audit_trail(
        service.audit,
        first,
        after,
        redact=redact_users,
        key=service.secret_key(),
        names=names,
    )
    report = _marked(report, service, names_users=not redact_users)
    what = f"audit report {start} to {end} ({fmt}, users {'redacted' if redact_users else 'shown'})"
    text = render(report, fmt)
    _publish(ctx, service, report, text, out, unencrypted, what)
    service.audit.checkpoint()  # a published report is anchored by a signed checkpoint


@audit.command("access")
@_redact_option
@_format_option
@_out_option
@_unencrypted_option
@click.pass_context
def audit_access(ctx: click.Context, redact_users: bool, fmt: str, out: Path | None, unencrypted: bool) -> None:
    """Members of each group, the permission matrix of groups and tables, and what each table holds."""
    from safestats.audit.reports import access_report, render

    service = _service(ctx)
    report = access_report(
        service.policy,
        service.catalog,
        service.users.users(),
        service.audit,
        redact=redact_users,
        key=service.secret_key(),
        register=service.access.register(),
        agreements=service.access.agreements(),
    )
    report = _marked(report, service, names_users=not redact_users)
    what = f"access report ({fmt}, users {'redacted' if redact_users else 'shown'})"
    _publish(ctx, service, report, render(report, fmt), out, unencrypted, what)


@audit.command("transparency")
@click.option("--period", required=True, help="A quarter (2017-Q1), a month (2017-03) or a year (2017).")
@_format_option
@_out_option
@click.pass_context
def audit_transparency(ctx: click.Context, period: str, fmt: str, out: Path | None) -> None:
    """Volume of use by organisation and month (requests, releases, refusals), fit to publish."""
    from safestats.audit.reports import render, transparency

    service = _service(ctx)
    report = _marked(
        transparency(service.audit, period, rounding=service.policy.records_rounding), service, names_users=False
    )
    _publish(ctx, service, report, render(report, fmt), out, False, f"transparency report {period} ({fmt})")


@audit.command("log")
@click.option("--last", type=int, default=20, show_default=True, help="How many of the newest records.")
@click.pass_context
def audit_log(ctx: click.Context, last: int) -> None:
    """List the newest audit records, one line each."""
    from safestats.audit.log import AuditLog

    records = list(AuditLog.open(_settings(ctx).store_url).records())[-last:]
    for r in records:
        click.echo(
            f"{r['seq']:>6} {r['time_utc'][:19]} {r['user']:<18} {r['interaction']:<9} "
            f"{r['operation']:<8} {r['outcome']:<8} {','.join(r['tables'] or []):<28} "
            f"returned={','.join(r['fields_returned'] or [])}"
        )
