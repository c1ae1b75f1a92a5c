"""``safestats outputs``: the output checker's decision on an sdc output, recorded."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["outputs"]


def _service(ctx: click.Context) -> Any:
    from safestats.cli import _service as service

    return service(ctx)


@click.group()
def outputs() -> None:
    """Output checking: approve or reject an sdc output (its ACRO record and the audit log say
    so). Analysts comment and ask for exceptions from their session: r.comment(...),
    r.request_exception(...)."""


@outputs.command("approve")
@click.argument("audit_id", type=int)
@click.option("--by", "by", required=True, help="The output checker (not the analyst).")
@click.option("--note", default="")
@click.pass_context
def approve(ctx: click.Context, audit_id: int, by: str, note: str) -> None:
    """Approve the output of a released sdc result for use outside."""
    out = _service(ctx).outputs.review(audit_id, "approve", by=by, note=note)
    click.echo(f"output {out['uid']} approved (audit record {out['audit_id']})")


@outputs.command("reject")
@click.argument("audit_id", type=int)
@click.option("--by", "by", required=True, help="The output checker (not the analyst).")
@click.option("--note", required=True, help="Why.")
@click.pass_context
def reject(ctx: click.Context, audit_id: int, by: str, note: str) -> None:
    """Reject the output of a released sdc result."""
    out = _service(ctx).outputs.review(audit_id, "reject", by=by, note=note)
    click.echo(f"output {out['uid']} rejected (audit record {out['audit_id']})")
