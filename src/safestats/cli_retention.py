"""``safestats retention``: dispose of outputs past the policy's retention periods."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

__all__ = ["retention"]


@click.group()
def retention() -> None:
    """Retention and disposal of kept results, cached releases, output-checking and report files."""


@retention.command("apply")
@click.option("--dry-run", is_flag=True, help="List what would be destroyed; destroy nothing.")
@click.option(
    "--reports-dir", type=click.Path(path_type=Path), default=None, help="Published reports [default: reports/]."
)
@click.option("--now", "now_text", default=None, help="Judge ages at this ISO time [default: now] (for tests).")
@click.pass_context
def apply_retention(ctx: click.Context, dry_run: bool, reports_dir: Path | None, now_text: str | None) -> None:
    """Destroy what is older than its retention period (policy `retention:`), each kind after an
    audit record saying what goes, when and by whom; then report what was done."""
    import getpass

    from safestats.cli import _service
    from safestats.config import project_root
    from safestats.errors import UserError
    from safestats.service.retention import apply, plan

    try:
        now = dt.datetime.fromisoformat(now_text) if now_text else dt.datetime.now(dt.UTC)
    except ValueError:
        raise UserError(f"--now takes an ISO time (2027-01-31T00:00:00+00:00), not {now_text!r}") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    service = _service(ctx)
    disposals = plan(service, now=now, reports_dir=reports_dir or project_root() / "reports")
    if not disposals:
        click.echo("the policy sets no retention periods: nothing is disposed of")
        return
    if dry_run:
        for d in disposals:
            click.echo(f"would destroy {d.describe()}" if d.items else f"{d.kind}: nothing older than {d.days} days")
        return
    for line in apply(service, disposals, actor=f"data owner ({getpass.getuser()})"):
        click.echo(line)
