"""The end-to-end demo that `make demo` runs: the census, the safe query path, the audit log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from safestats.audit.log import AuditLog
from safestats.client.session import connect
from safestats.config import Settings
from safestats.dataset import open_dataset
from safestats.errors import AccessDenied, DisclosureRefused, QueryError
from safestats.result import show_amount

__all__ = ["run_demo"]


def _budget_line(b: dict[str, str]) -> str:
    if b.get("mode") != "dp":
        return str(b.get("message", ""))
    return (
        f"{b['unit']} budget for {b['period']}: {show_amount(b['total'])}, spent {show_amount(b['spent'])}, "
        f"left {show_amount(b['left'])} (each query spends {show_amount(b['per_query'])} unless it says otherwise)"
    )


def run_demo(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    def section(title: str) -> None:
        echo("")
        echo(f"== {title} " + "=" * max(0, 76 - len(title)))

    section("The synthetic school census (from its manifest)")
    echo(open_dataset(settings.data_dir).summary())

    common: dict[str, Any] = {
        "data_dir": settings.data_dir,
        "store_url": settings.store_url,
        "catalog": settings.catalog,
        "policy": settings.policy,
    }
    analyst = connect(user="demo.analyst", **common)

    section("What demo.analyst (main users group) may query")
    with pd.option_context("display.width", 120, "display.max_colwidth", 40):
        echo(analyst.tables()[["classification", "restricted", "you_may_read"]].to_string())

    section("demo.analyst's privacy budget (differential privacy)")
    echo(_budget_line(analyst.budget()))

    section("Secondary pupils by LA and FSM eligibility, spring 2017 (dp; first rows)")
    q = (
        analyst.table("PupilOnRoll")
        .where(term="2017-spring", phase="Secondary")
        .group_by("la_code", "fsm_eligible")
        .count_pupils()
    )
    r = q.run()
    echo(repr(r.head(8)))
    echo(f"-> {len(r)} cells, {r.suppressed} suppressed (c), labelled {r.marking}, audit record {r.audit_id}")
    again = q.run()
    echo(
        f"asked again: the same release (cached from record {again.provenance.cached_from}), no new noise, "
        f"no new spend; {_budget_line(analyst.budget())}"
    )

    section("Attendance by phase, all terms (SQL, dp)")
    r = analyst.sql(
        "SELECT phase, COUNT(DISTINCT pupil_id) AS pupils, "
        "AVG(sessions_attended) AS mean_attended, AVG(sessions_possible) AS mean_possible "
        "FROM PupilOnRoll GROUP BY phase"
    )
    echo(repr(r))

    section("Refused: a nationality table asked for by the main users group")
    try:
        analyst.table("Nationality").where(term="2017-spring").group_by("nationality").count().run()
    except AccessDenied as e:
        echo(f"refused (and audited): {e}")
    try:
        analyst.sql("SELECT upn, COUNT(*) FROM PupilOnRoll GROUP BY upn")
    except QueryError as e:
        echo(f"refused (and audited): {e}")

    section("Spring 2017 under statistical disclosure control (exact, small cells withheld)")
    statistician = connect(user="demo.statistician", **common)
    r = statistician.sql(
        "SELECT phase, COUNT(DISTINCT pupil_id) AS pupils, AVG(sessions_attended) AS mean_attended "
        "FROM PupilOnRoll WHERE term = '2017-spring' GROUP BY phase"
    )
    echo(repr(r))
    try:  # distinct pupils over all terms cannot be checked for differencing: refused in sdc
        statistician.sql("SELECT phase, COUNT(DISTINCT pupil_id) AS pupils FROM PupilOnRoll GROUP BY phase")
    except DisclosureRefused as e:
        echo(f"refused (and audited): {e}")

    section("Proficiency in English, as a member of the unrestricted group (dp, with totals)")
    unrestricted = connect(user="demo.unrestricted", **common)
    r = (
        unrestricted.table("PupilOnRoll")
        .join("Nationality")
        .where(term="2017-spring", first_language="OTH")
        .group_by("phase", "proficiency_in_english")
        .count_pupils()
        .with_totals()
        .run()
    )
    echo(repr(r))

    section("The audit log (newest records)")
    log = AuditLog.open(settings.store_url)
    for rec in list(log.records())[-9:]:
        privacy = rec.get("privacy") or {}
        spent = f" spent={show_amount(privacy['spent'])}" if "spent" in privacy else ""
        echo(
            f"  #{rec['seq']:<5} {rec['time_utc'][:19]}Z {rec['user']:<18} {rec['interaction']:<7} "
            f"{rec['operation']:<8} {rec['outcome']:<9} tables={','.join(rec['tables'] or []) or '-'} "
            f"returned={','.join(rec['fields_returned'] or []) or '-'}{spent}"
        )
    echo(f"  {log.verify()}")

    section("The nationality quality report (papermill, as the scheduled-reports identity)")
    import os

    from safestats.exports import PASSWORD_ENV
    from safestats.reports.runner import run_report

    clear = not os.environ.get(PASSWORD_ENV)  # the synthetic demo publishes in clear unless given a password
    report = run_report("nationality_quality", {"term": "2017-spring"}, settings=settings, echo=echo, unencrypted=clear)
    echo(f"  {report.audit_records} requests, all audited as 'scheduled'; marked {report.marking}")
    if report.archive is not None:
        echo(f"  protected archive: {report.archive} (AES-256; the notebook, page and releases inside)")
    else:
        echo(f"  executed notebook: {report.notebook}")
        echo(f"  HTML report:       {report.html}")
        echo(
            f"  (OFFICIAL-SENSITIVE, published in clear as `--unencrypted` does, and audited: with {PASSWORD_ENV}"
            " set the run is one protected archive)"
        )
    echo("")
    echo("Next: open JupyterLab (.venv/bin/jupyter lab) and try the same in a notebook, or")
    echo('`safestats query "SELECT phase, COUNT(*) FROM PupilOnRoll GROUP BY phase"`.')
