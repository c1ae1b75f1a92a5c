"""``safestats foi answer``: the seed FOI request answered for a period, from the system itself."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["foi"]


@click.group()
def foi() -> None:
    """Freedom-of-information answers, question by question, from the audit log and the policy."""


@foi.command("answer")
@click.option("--from", "start", required=True, help="First day, YYYY-MM-DD (inclusive).")
@click.option("--to", "end", required=True, help="Last day, YYYY-MM-DD (inclusive).")
@click.option("--names", is_flag=True, help="Show user names (OFFICIAL-SENSITIVE); by default they are withheld.")
@click.option("--format", "fmt", type=click.Choice(["html", "json"]), default="html", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="File [default: stdout].")
@click.option("--unencrypted", is_flag=True, help="With --names and --out: write the file in clear (audited).")
@click.option(
    "--schedule",
    "schedule_file",
    type=click.Path(path_type=Path),
    default=None,
    help="The report schedule that says what is published regularly [default: the shipped one].",
)
@click.pass_context
def answer(
    ctx: click.Context,
    start: str,
    end: str,
    names: bool,
    fmt: str,
    out: Path | None,
    unencrypted: bool,
    schedule_file: Path | None,
) -> None:
    """One document answering each question (a)–(h) of the request for the period: what the
    system holds, where each answer comes from, and plainly what it does not hold."""
    from safestats.audit.foi import foi_answer, render_foi
    from safestats.cli_audit import _marked, _publish, _service, inclusive_period
    from safestats.config import read_yaml
    from safestats.resources import RESOURCES

    first, after = inclusive_period(start, end)
    service = _service(ctx)
    schedule = read_yaml(schedule_file or RESOURCES / "schedule.yaml", "schedule") or {}
    report = foi_answer(
        service.audit,
        service.policy,
        service.catalog,
        service.users.users(),
        first,
        after,
        redact=not names,
        key=service.secret_key(),
        names=[*service.policy.users, *service.users.users()],
        schedule=schedule,
        register=service.access.register(),
        agreements=service.access.agreements(),
    )
    report = _marked(report, service, names_users=names)
    what = f"FOI answer {start} to {end} ({fmt}, users {'shown' if names else 'redacted'})"
    _publish(ctx, service, report, render_foi(report, fmt), out, unencrypted, what)
