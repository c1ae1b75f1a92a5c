"""``safestats access``: data access requests, the data owner's decisions, and the agreements register."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["access"]


def _service(ctx: click.Context) -> Any:
    from safestats.cli import _service as service

    return service(ctx)


def _line(r: dict[str, Any]) -> str:
    tables = ", ".join(t + ("" if c == "all" else f" ({', '.join(c)})") for t, c in r["grants"].items())
    approvers = ", ".join(r.get("approved_by") or []) or "-"
    until = r.get("until") or "no expiry"
    return (
        f"{str(r['id']):<24} {r['standing']:<12} {r['group']:<32} until {until:<10}  approved by {approvers}  {tables}"
    )


@click.group()
def access() -> None:
    """Data access requests: apply, approve (two people for restricted tables), reject, revoke;
    grants expire on the day the approval gives. The policy file's grants count as approved."""


@access.command("request")
@click.option("--requester", required=True, help="Who asks (a user of the policy or the service).")
@click.option("--organisation", default=None, help="Their organisation [default: the requester's].")
@click.option("--group", required=True, help="The group whose members get the grant.")
@click.option("--table", "tables", multiple=True, required=True, help="TABLE (all columns) or TABLE:col,col; repeat.")
@click.option("--purpose", required=True)
@click.option("--legal-basis", required=True)
@click.option("--agreement", required=True, help="The agreement's reference (safestats access agreements).")
@click.option("--start", required=True, help="First day asked for (YYYY-MM-DD).")
@click.option("--end", required=True, help="Last day asked for (YYYY-MM-DD).")
@click.pass_context
def request(
    ctx: click.Context,
    requester: str,
    organisation: str | None,
    group: str,
    tables: tuple[str, ...],
    purpose: str,
    legal_basis: str,
    agreement: str,
    start: str,
    end: str,
) -> None:
    """Record an application (a paper one, entered by the data owner; analysts apply over HTTP:
    POST /v1/access-requests). Prints the request's number."""
    service = _service(ctx)
    who = service.identity(requester, interaction="ad hoc")
    spec = {
        "group": group,
        "tables": list(tables),
        "purpose": purpose,
        "legal_basis": legal_basis,
        "agreement": agreement,
        "start": start,
        "end": end,
        **({"organisation": organisation} if organisation else {}),
    }
    r = service.access.submit(who, spec)
    needs = "two different approvers (restricted data)" if r["approvals_needed"] == 2 else "one approver"
    click.echo(f"access request {r['id']} recorded: pending; needs {needs}")


@access.command("approve")
@click.argument("request_id", type=int)
@click.option("--until", required=True, help="The last day the grant is in force (YYYY-MM-DD).")
@click.option("--by", "by", required=True, help="The approver's name (recorded; not the requester).")
@click.option("--note", default="")
@click.pass_context
def approve(ctx: click.Context, request_id: int, until: str, by: str, note: str) -> None:
    """Approve a request; with its last approval the grant is in force until --until."""
    r = _service(ctx).access.decide(request_id, "approve", by=by, until=until, note=note)
    if r["status"] == "approved":
        click.echo(f"access request {request_id} approved: {r['group_name']} may read it until {r['until']}")
    else:
        done = sum(d["decision"] == "approve" for d in r["decisions"])
        click.echo(f"access request {request_id}: {done} of {r['approvals_needed']} approvals; still pending")


def _closing(decision: str, summary: str) -> Any:
    """``reject`` or ``revoke``: one request, by whom, and why."""

    @click.argument("request_id", type=int)
    @click.option("--by", "by", required=True)
    @click.option("--reason", required=True)
    @click.pass_context
    def command(ctx: click.Context, request_id: int, by: str, reason: str) -> None:
        _service(ctx).access.decide(request_id, decision, by=by, note=reason)
        click.echo(f"access request {request_id} {'rejected' if decision == 'reject' else 'revoked'}")

    command.__doc__ = summary
    return access.command(decision)(command)


reject = _closing("reject", "Reject a pending request (closed; nothing is granted).")
revoke = _closing("revoke", "End an approved grant now.")


@access.command("list")
@click.option("--json", "as_json", is_flag=True, help="Every field, as JSON.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every grant and its standing: the policy file's, and each request's (in force, expired,
    pending, rejected, revoked)."""
    rows = _service(ctx).access.register()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        click.echo(_line(r))


@access.command("show")
@click.argument("request_id", type=int)
@click.pass_context
def show(ctx: click.Context, request_id: int) -> None:
    """One request with its decisions, as JSON."""
    rows = [r for r in _service(ctx).access.register() if r["id"] == request_id]
    if not rows:
        raise click.UsageError(f"no access request {request_id}; list them with `safestats access list`")
    click.echo(json.dumps(rows[0], indent=2, default=str))


@access.group("agreement")
def agreement() -> None:
    """The register of agreements (MOU, data sharing agreement) access rests on."""


@agreement.command("add")
@click.argument("reference")
@click.option("--title", required=True)
@click.option("--party", "parties", multiple=True, required=True, help="Repeat for each party (two or more).")
@click.option("--legal-basis", required=True)
@click.option("--start", required=True)
@click.option("--end", required=True)
@click.option(
    "--document",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The signed document: its sha256 goes in the register.",
)
@click.option("--by", "by", required=True, help="Who adds it (recorded).")
@click.pass_context
def agreement_add(
    ctx: click.Context,
    reference: str,
    title: str,
    parties: tuple[str, ...],
    legal_basis: str,
    start: str,
    end: str,
    document: Path | None,
    by: str,
) -> None:
    """Add an agreement to the register (audited)."""
    a = _service(ctx).access.add_agreement(
        reference,
        title=title,
        parties=list(parties),
        legal_basis=legal_basis,
        start=start,
        end=end,
        document=document,
        actor=by,
    )
    click.echo(
        f"agreement {a['reference']} added ({a['start_date']} to {a['end_date']})"
        + (f"; document sha256 {a['document_sha256']}" if a["document_sha256"] else "")
    )


@access.command("agreements")
@click.pass_context
def agreements(ctx: click.Context) -> None:
    """The register of agreements."""
    for a in _service(ctx).access.agreements():
        click.echo(
            f"{a['reference']:<20} {a['start_date']} to {a['end_date']}  {', '.join(a['parties'])}: {a['title']}"
        )
