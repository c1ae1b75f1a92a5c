"""``safestats users 2fa``: the data owner enrols, resets and ends the second factors of users."""

from __future__ import annotations

import io
from typing import Any

import click

__all__ = ["second_factor"]


def _service(ctx: click.Context) -> Any:
    from safestats.cli import _service as service

    return service(ctx)


def _admin_audit(service: Any, reason: str) -> None:
    from safestats.cli import _admin_audit as admin_audit

    admin_audit(service, reason)


@click.group("2fa")
def second_factor() -> None:
    """Second factors (TOTP) for OFFICIAL-SENSITIVE data over the network (Becta IL3)."""


@second_factor.command("enrol")
@click.argument("name")
@click.option("--no-qr", is_flag=True, help="Print the otpauth URI only, no QR code.")
@click.pass_context
def enrol(ctx: click.Context, name: str, no_qr: bool) -> None:
    """Enrol NAME (or replace their second factor): prints, once, the otpauth URI and a QR code to
    scan into an authenticator app. Their earlier sessions end."""
    service = _service(ctx)
    service.identity(name)  # must exist
    _admin_audit(service, f"second factor enrolled for {name}")
    uri = service.factors.enrol(name)
    if not no_qr:
        import segno

        out = io.StringIO()
        segno.make(uri, error="m").terminal(out=out, compact=True)
        click.echo(out.getvalue())
    click.echo(uri)
    click.echo(f"shown once: {name} scans it into an authenticator app (or types the secret); keep no copy", err=True)


@second_factor.command("reset")
@click.argument("name")
@click.pass_context
def reset(ctx: click.Context, name: str) -> None:
    """Remove NAME's second factor and end their sessions (they must be enrolled again)."""
    service = _service(ctx)
    _admin_audit(service, f"second factor of {name} reset")
    had = service.factors.reset(name)
    click.echo(f"second factor of {name} removed" if had else f"{name} had no second factor; their sessions ended")


@second_factor.command("revoke-sessions")
@click.argument("name")
@click.pass_context
def revoke_sessions(ctx: click.Context, name: str) -> None:
    """End every session of NAME (their token then needs a new code for OFFICIAL-SENSITIVE data)."""
    service = _service(ctx)
    _admin_audit(service, f"sessions of {name} ended")
    click.echo(f"ended {service.factors.revoke_sessions(name)} session(s) of {name}")
