"""The national-scale benchmark: the safe path on DuckDB and on Spark, against plain DuckDB.

    python benchmarks/bench_national.py                      # generate the national census, then run
    python benchmarks/bench_national.py --data /tmp/national # reuse a census generated before

In one run: the generation of the national census (8.8 million pupils a term, three terms),
then for each engine (duckdb; spark local[2] where PySpark and Java are installed), in a
process of its own so its peak memory is its own:

1. DP count of pupils by LA x nationality (the Nationality join), spring term;
2. DP mean attendance by LA, spring term;
3. an SDC table with secondary suppression: pupils by LA x ethnicity with margins, spring term;

each timed through the whole safe path (validation, access, bounding, protection, ledger,
audit), with its ratio to plain DuckDB running the same aggregation over the same files.
Writes benchmarks/RESULTS.md and appends JSON lines to benchmarks/results/national.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
TERM = "2017-spring"

PLAIN = {
    "dp_count_la_nationality": """
        SELECT p.la_code, n.nationality, count(DISTINCT p.pupil_id) FROM read_parquet('{d}/PupilOnRoll.parquet') p
        JOIN read_parquet('{d}/Nationality.parquet') n USING (pupil_id, term)
        WHERE p.term = '{t}' GROUP BY ALL""",
    "dp_mean_attendance_la": """
        SELECT la_code, avg(sessions_attended) FROM read_parquet('{d}/PupilOnRoll.parquet')
        WHERE term = '{t}' GROUP BY ALL""",
    "sdc_la_ethnicity_with_margins": """
        SELECT la_code, ethnicity, count(*) FROM read_parquet('{d}/PupilOnRoll.parquet')
        WHERE term = '{t}' GROUP BY ALL""",
}
LABELS = {
    "dp_count_la_nationality": "DP count of pupils by LA × nationality (join)",
    "dp_mean_attendance_la": "DP mean attendance by LA",
    "sdc_la_ethnicity_with_margins": "SDC LA × ethnicity with margins (secondary suppression + audit)",
}


def plain(data: Path) -> dict[str, float]:
    import duckdb

    out = {}
    for name, sql in PLAIN.items():
        con = duckdb.connect()
        start = time.perf_counter()
        con.execute(sql.format(d=data, t=TERM)).fetchall()
        out[name] = time.perf_counter() - start
        con.close()
    return out


def worker(engine: str, data: Path) -> dict:
    """One engine's safe-path runs, in this process (its peak memory is reported)."""
    import safestats as ss
    from safestats.config import Settings
    from safestats.service.pipeline import Service

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(
            {},
            data_dir=data,
            store_url=f"sqlite:///{tmp}/s.db",
            engine=engine,
            output_checking_dir=f"{tmp}/checks",
            secret_key_file=f"{tmp}/key",
        )
        start = time.perf_counter()
        service = Service(settings)
        startup = time.perf_counter() - start
        for user in ("demo.unrestricted", "demo.analyst"):
            service.set_budget(user, Fraction(1000))
        queries = {
            "dp_count_la_nationality": (
                "demo.unrestricted",
                ss.Query(
                    "PupilOnRoll",
                    (ss.Aggregate("count_pupils"),),
                    ("la_code", "nationality"),
                    (ss.Filter("term", "==", TERM),),
                    join="Nationality",
                ),
            ),
            "dp_mean_attendance_la": (
                "demo.analyst",
                ss.Query(
                    "PupilOnRoll",
                    (ss.Aggregate("mean", "sessions_attended"),),
                    ("la_code",),
                    (ss.Filter("term", "==", TERM),),
                ),
            ),
            "sdc_la_ethnicity_with_margins": (
                "demo.statistician",
                ss.Query(
                    "PupilOnRoll",
                    (ss.Aggregate("count"),),
                    ("la_code", "ethnicity"),
                    (ss.Filter("term", "==", TERM),),
                    totals=True,
                ),
            ),
        }
        runs = {}
        for name, (user, query) in queries.items():
            start = time.perf_counter()
            payload = service.query(query.to_wire(), identity=service.identity(user))
            runs[name] = {
                "seconds": time.perf_counter() - start,
                "cells": payload["meta"]["cells"],
                "suppressed": payload["meta"]["suppressed"],
            }
        children = descendants_peak_mib()  # Spark's JVM, before it is stopped
        close = getattr(service.engine, "close", None)
        if close:
            close()
    return {
        "engine": engine,
        "startup_s": startup,
        "runs": runs,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mib": children,
    }


def descendants_peak_mib() -> float:
    """The summed peak resident memory (VmHWM) of this process's descendants (Linux /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    total = 0.0
    for pid in mine:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def generate(data: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "safestats"), "synth", "--scale", "national", "--out", str(data), "--quiet"],
        check=True,
    )
    seconds = time.perf_counter() - start
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    manifest = json.loads((data / "manifest.json").read_text())
    rows = sum(n for terms in manifest["row_counts"].values() for n in terms.values())
    return {"seconds": seconds, "peak_rss_mib": peak, "pupils": manifest["pupils"], "rows": rows}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("safestats", "duckdb", "ibis-framework", "opendp", "pandas", "scipy", "pyspark"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    except (OSError, IndexError):
        java = "not installed"
    out["java"] = java
    return out


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def render(result: dict) -> str:
    plain_s = result["plain_duckdb_s"]
    lines = [
        "# National-scale benchmark",
        "",
        f"Run {result['date']} on {result['machine']}.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    g = result["generation"]
    if g:
        lines += [
            f"Generating the national census: **{g['seconds']:.1f} s**, peak memory {g['peak_rss_mib']:,.0f} MiB "
            f"({g['pupils']:,} pupils a term, {g['rows']:,} rows in all).",
            "",
        ]
    else:
        lines += [
            f"The census at `{result['data']}` was generated before this run (see benchmarks/results/"
            "synth.jsonl for generation timings).",
            "",
        ]
    lines += [
        "| query (spring 2017, national) | plain DuckDB | "
        + " | ".join(f"safestats on {e['engine']}" for e in result["engines"])
        + " |",
        "|---|---|" + "---|" * len(result["engines"]),
    ]
    for name, label in LABELS.items():
        cells = [f"{plain_s[name]:.2f} s"]
        for e in result["engines"]:
            run = e["runs"][name]
            cells.append(
                f"{run['seconds']:.2f} s ({run['seconds'] / plain_s[name]:.1f}×; {run['cells']:,} cells, "
                f"{run['suppressed']:,} withheld)"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| engine | start-up | peak memory, service process | peak memory, child processes (Spark's JVM) |",
        "|---|---|---|---|",
    ]
    for e in result["engines"]:
        lines.append(
            f"| {e['engine']} | {e['startup_s']:.1f} s | {e['peak_rss_mib']:,.0f} MiB | "
            f"{e['peak_rss_children_mib']:,.0f} MiB |"
        )
    lines += [
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "Ratios are to plain DuckDB running the same aggregation over the same Parquet files with no "
        "protection (the SQL is in the script). The safe path adds validation, access control, the "
        "contribution bound, OpenDP noise on every cell of the public grid (dp) or the rules, margins, "
        "secondary suppression and the attacker audit (sdc), the ledger and the audit record. Spark runs "
        "in process (`local[2]`); on a cluster set `engine: spark` and `spark_master`.",
        "",
        "Where the time goes: the plain mean is one columnar scan, while the safe path first bounds each "
        "pupil's contribution (a window over 8.8 million pupils, the price of a sensitivity that does not "
        "depend on the data); the SDC table counts distinct pupils in every cell and every margin (four "
        "aggregations over the term, where plain DuckDB counts rows once), then runs the rules, secondary "
        "suppression and the audit. Re-render this page from the last run with "
        "`python benchmarks/bench_national.py --render`.",
        "",
    ]
    return "\n".join(lines)


#: Where the national page ends in RESULTS.md: the sections after it (other benchmarks') are kept.
KEEP = "\n## "


def _write(page: str) -> None:
    """RESULTS.md with this page first and the other benchmarks' sections after it, unchanged."""
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    rest = old[old.index(KEEP) :] if KEEP in old else ""
    path.write_text(page.rstrip("\n") + "\n" + rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="A national census already generated.")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE.parent / "data" / "synthetic" / "national",
        help="Where to generate the census when --data is not given.",
    )
    parser.add_argument("--engines", default="duckdb,spark")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="Rewrite RESULTS.md from the last run recorded.")
    args = parser.parse_args()
    if args.render:
        last = (HERE / "results" / "national.jsonl").read_text().strip().splitlines()[-1]
        _write(render(json.loads(last)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.data)))
        return
    generation = None
    data = args.data
    if data is None:
        data = args.out
        generation = generate(data)
        print(f"generated {data} in {generation['seconds']:.1f} s", flush=True)
    from safestats.engines import spark_available

    plain_s = plain(data)
    print("plain duckdb", json.dumps(plain_s), flush=True)
    engines = []
    for engine in args.engines.split(","):
        if engine == "spark" and not spark_available():
            print("spark: skipped (install the spark extra and Java 17)", flush=True)
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--worker", engine, "--data", str(data)],
            check=True,
            capture_output=True,
            text=True,
        )
        engines.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(engine, json.dumps(engines[-1]), flush=True)
    result = {
        "benchmark": "national",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/bench_national.py", *sys.argv[1:]]),
        "data": str(data),
        "generation": generation,
        "plain_duckdb_s": plain_s,
        "engines": engines,
        "versions": versions(),
    }
    (HERE / "results").mkdir(exist_ok=True)
    with (HERE / "results" / "national.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    _write(render(result))
    print(f"written {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
