"""The end-to-end demo that `make demo` runs: the census, the safe query path, the audit log."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from safestats.audit.log import AuditLog
from safestats.client.session import connect
from safestats.config import Settings
from safestats.dataset import open_dataset
from safestats.errors import AccessDenied, QueryError

__all__ = ["run_demo"]


def run_demo(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    def section(title: str) -> None:
        echo("")
        echo(f"== {title} " + "=" * max(0, 76 - len(title)))

    section("The synthetic school census (from its manifest)")
    echo(open_dataset(settings.data_dir).summary())

    common = {"data_dir": settings.data_dir, "store_url": settings.store_url,
              "catalog": settings.catalog, "policy": settings.policy}  # fmt: skip
    analyst = connect(user="demo.analyst", **common)

    section("What demo.analyst (main users group) may query")
    with pd.option_context("display.width", 120, "display.max_colwidth", 40):
        echo(analyst.tables()[["classification", "restricted", "you_may_read"]].to_string())

    section("Secondary pupils by LA and FSM eligibility, spring 2017 (first rows)")
    r = (
        analyst.table("PupilOnRoll")
        .where(term="2017-spring", phase="Secondary")
        .group_by("la_code", "fsm_eligible")
        .count_pupils()
        .run()
    )
    echo(repr(r.head(8)))
    echo(f"-> {len(r)} cells, {r.suppressed} suppressed (c), labelled {r.marking}, audit record {r.audit_id}")

    section("Attendance by phase, all terms (SQL)")
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

    section("Proficiency in English, as a member of the unrestricted group")
    unrestricted = connect(user="demo.unrestricted", **common)
    r = (
        unrestricted.table("PupilOnRoll")
        .join("Nationality")
        .where(term="2017-spring", first_language="OTH")
        .group_by("phase", "proficiency_in_english")
        .count_pupils()
        .run()
    )
    echo(repr(r))

    section("The audit log")
    log = AuditLog.open(settings.store_url)
    for rec in list(log.records())[-6:]:
        echo(
            f"  #{rec['seq']:<5} {rec['time_utc'][:19]}Z {rec['user']:<18} {rec['interaction']:<7} "
            f"{rec['outcome']:<9} tables={','.join(rec['tables'] or []) or '-'} "
            f"returned={','.join(rec['fields_returned'] or []) or '-'}"
        )
    echo(f"  {log.verify()}")
    echo("")
    echo("Next: open JupyterLab (.venv/bin/jupyter lab) and try the same in a notebook, or")
    echo("`safestats query \"SELECT phase, COUNT(*) FROM PupilOnRoll GROUP BY phase\"`.")
