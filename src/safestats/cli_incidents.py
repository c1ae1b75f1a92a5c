"""``safestats incidents``: find incidents in the audit log, report them, acknowledge them."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import click

__all__ = ["incidents"]

COLUMNS = ("id", "rule", "user", "first_seq", "last_seq", "count", "time_utc", "detail", "acknowledged_by", "note")


def _service(ctx: click.Context) -> Any:
    from safestats.cli import _service as service

    return service(ctx)


def _actor() -> str:
    import getpass

    return f"data owner ({getpass.getuser()})"


@click.group()
def incidents() -> None:
    """Incidents in the audit log: probing, failed logins and codes, budgets spent, differencing
    refusals, out-of-hours use, new addresses, service identities used by hand, a log that fails."""


@incidents.command("scan")
@click.pass_context
def scan(ctx: click.Context) -> None:
    """Run every rule over the whole log (verifying it first); keep and report what is new. Each
    new incident gets an audit record of its own. Exit code 3 when any is new."""
    from safestats.audit.incidents import Thresholds, detect
    from safestats.store.incidents import IncidentStore

    service = _service(ctx)
    verified = service.audit.verify()
    records = list(service.audit.records())
    found = detect(records, Thresholds.from_policy(service.policy.incidents), verified=verified)
    store = IncidentStore(service.audit.engine)
    new = store.add_new(found)
    # every incident without its audit record: the new ones, and any an earlier scan kept but
    # could not record (its audit write failed after the incident was kept)
    unrecorded = [i for i in store.list() if i["audit_seq"] is None]
    for incident in unrecorded:
        seq = service.audit_admin(
            "safestats incidents",
            "incident",
            f"incident {incident['id']}: {incident['rule']} by {incident['user'] or '-'} "
            f"(records {incident['first_seq']}–{incident['last_seq']}): {incident['detail']}",
        )
        store.note_record(incident["id"], seq)
        click.echo(f"{incident['id']:>5} {incident['rule']:<31} {incident['user']:<20} {incident['detail']}")
    open_ = len(store.list(open_only=True))
    click.echo(f"{len(records)} records scanned; {len(new)} new incident(s); {open_} open", err=True)
    if new:
        raise click.exceptions.Exit(3)


@incidents.command("report")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "json"]), default="html", show_default=True)
@click.option("--open", "open_only", is_flag=True, help="Only those not acknowledged.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="File [default: stdout].")
@click.option("--unencrypted", is_flag=True, help="Write --out in clear (audited); else it is a protected archive.")
@click.pass_context
def report(ctx: click.Context, fmt: str, open_only: bool, out: Path | None, unencrypted: bool) -> None:
    """Every incident kept (or the open ones), marked: it names users (a file of it is encrypted)."""
    from safestats.marking import colour, marking_text
    from safestats.store.incidents import IncidentStore

    service = _service(ctx)
    rows = IncidentStore(service.audit.engine).list(open_only=open_only)
    label = "OFFICIAL-SENSITIVE"
    marking = marking_text(label, service.catalog.impact_levels.get(label, ""))
    service.audit_admin(_actor(), "admin", f"incidents report ({fmt}, {len(rows)} incidents)")
    handling = service.policy.caveat(label)
    if fmt == "json":
        text = json.dumps({"marking": marking, "handling": handling, "incidents": rows}, indent=2, default=str)
    elif fmt == "csv":
        buf = io.StringIO()
        buf.write(f"# {marking}\n# Handling: {handling}\n")
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        buf.write(f"# {marking}\n")
        text = buf.getvalue()
    else:
        banner = (
            f'<p style="background:{colour(label)};color:#fff;padding:4px"><b>{html.escape(marking)}</b> '
            f"{html.escape(handling)}</p>"
        )
        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r.get(c) or ''))}</td>" for c in COLUMNS) + "</tr>" for r in rows
        )
        text = (
            f"<!doctype html><title>[{html.escape(marking)}] safestats incidents</title>{banner}<h1>Incidents</h1>"
            f"<table><tr>{head}</tr>{body}</table>{banner}"
        )
    if out is None:
        click.echo(text)
        return
    from safestats.exports import prepare_output

    prepared = prepare_output(
        out,
        text,
        marking=marking,
        caveat=handling,
        policy=service.policy.exports,
        protect=True,
        unencrypted=unencrypted,
        environ=ctx.obj["environ"],
    )
    service.audit_admin(_actor(), "admin", f"incidents report written to {prepared.target} ({prepared.protection})")
    prepared.write()
    click.echo(f"written {prepared.target}", err=True)


@incidents.command("ack")
@click.argument("incident_id", type=int)
@click.option("--note", required=True, help="What was found or done.")
@click.pass_context
def ack(ctx: click.Context, incident_id: int, note: str) -> None:
    """Acknowledge incident ID with a note (audited)."""
    from safestats.store.incidents import IncidentStore

    service = _service(ctx)
    service.audit_admin(_actor(), "admin", f"incident {incident_id} acknowledged: {note[:200]}")
    IncidentStore(service.audit.engine).acknowledge(incident_id, by=_actor(), note=note)
    click.echo(f"incident {incident_id} acknowledged")
