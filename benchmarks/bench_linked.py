"""The cost of the cross-table rule (issue 14): the nationality quality report, first and
repeated run, and how one table's protection grows with the number of earlier tables.

    python benchmarks/bench_linked.py [--data DIR] [--tables N]

1. The sample-census nationality report (27 linked tables, scheduled identity) through
   papermill on a fresh store, then the same report again on the same store (its tables are
   repeats: the domain already published them).
2. A sequence of N different linked tables (LA x FSM, then LA counts filtered to one
   ethnicity at a time, alternating with one-school tracker pairs) by one user: the time of
   each release against the number of earlier tables in view.

Appends JSON lines to benchmarks/results/linked.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic" / "sample"))
    parser.add_argument("--tables", type=int, default=40)
    args = parser.parse_args()

    import safestats as ss
    from safestats.config import Settings
    from safestats.reports.runner import run_report

    out: dict[str, object] = {"machine": platform.machine(), "python": platform.python_version(), "data": args.data}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(
            {},
            data_dir=args.data,
            store_url=f"sqlite:///{tmp}/store.db",
            output_checking_dir=f"{tmp}/outputs",
            secret_key_file=f"{tmp}/key",
        )
        for run in ("first", "repeat"):
            started = time.perf_counter()
            report = run_report(
                "nationality_quality",
                {"term": "2017-spring"},
                settings=settings,
                out_root=Path(tmp) / "reports",
                echo=lambda _: None,
            )
            out[f"nationality_report_{run}_s"] = round(time.perf_counter() - started, 2)
            out[f"nationality_report_{run}_requests"] = report.audit_records
            print(
                f"nationality report, {run} run: {out[f'nationality_report_{run}_s']} s "
                f"({report.audit_records} requests)"
            )

        s = ss.connect(
            user="demo.statistician",
            data_dir=args.data,
            environ={},
            store_url=f"sqlite:///{tmp}/growth.db",
            output_checking_dir=f"{tmp}/outputs",
        )
        term = "2017-spring"
        codes = list(s.describe("PupilOnRoll").loc["ethnicity", "domain"].split(": ", 1)[1].split(", "))[:5]
        import pandas as pd

        df = pd.read_parquet(Path(args.data) / "PupilOnRoll.parquet", columns=["term", "school_urn", "ethnicity"])
        schools = df[df.term == term]["school_urn"].value_counts().index.tolist()
        ethnicities = sorted(df["ethnicity"].dropna().unique().tolist())
        builders = [lambda: s.table("PupilOnRoll").where(term=term).group_by("la_code", "fsm_eligible").count()]
        for i in range(args.tables):
            if i % 2 == 0:
                e = ethnicities[(i // 2) % len(ethnicities)]
                builders.append(
                    lambda e=e: s.table("PupilOnRoll").where(term=term, ethnicity=e).group_by("la_code").count()
                )
            else:
                school = int(schools[(i // 2) % len(schools)])
                builders.append(
                    lambda school=school: (
                        s.table("PupilOnRoll")
                        .where(term=term, school_urn=school, ethnicity=ss.not_equal("WBRI"))
                        .count()
                    )
                )
        times = []
        for k, build in enumerate(builders[: args.tables]):
            started = time.perf_counter()
            try:
                build().run()
                outcome = "released"
            except ss.DisclosureRefused:
                outcome = "refused"
            times.append({"earlier": k, "seconds": round(time.perf_counter() - started, 3), "outcome": outcome})
        out["growth"] = times
        for step in (1, 10, 20, 39):
            if step < len(times):
                print(f"table {step + 1} (with {step} earlier): {times[step]['seconds']} s ({times[step]['outcome']})")
        del codes
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with (results / "linked.jsonl").open("a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
