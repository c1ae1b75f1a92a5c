"""The safe path against plain DuckDB: a DP count of pupils by LA x nationality.

    python benchmarks/bench_dp.py --data data/synthetic/regional [--data /tmp/national] [--repeat 3]

For each census: plain DuckDB (the same join and aggregation over the same Parquet files, no
protection), then the whole safe path as a dp analyst (parse, validate, access, contribution
bounding, OpenDP noise on every one of the ~31,000 cells, the ledger and the audit record).
Each safe-path run uses a new service database, so the release cache never answers. Prints a
table and appends JSON lines to benchmarks/results/dp.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import duckdb

from safestats.config import Settings
from safestats.query.model import Aggregate, Filter, Query
from safestats.service.pipeline import Service

QUERY = Query(
    "PupilOnRoll",
    (Aggregate("count_pupils"),),
    ("la_code", "nationality"),
    (Filter("term", "==", "2017-spring"),),
    join="Nationality",
)

PLAIN = """
    SELECT p.la_code, n.nationality, count(DISTINCT p.pupil_id) AS pupils
    FROM read_parquet('{d}/PupilOnRoll.parquet') p
    JOIN read_parquet('{d}/Nationality.parquet') n USING (pupil_id, term)
    WHERE p.term = '2017-spring'
    GROUP BY ALL
"""


def plain(data: Path) -> tuple[float, int]:
    con = duckdb.connect()
    start = time.perf_counter()
    rows = con.execute(PLAIN.format(d=data)).fetchall()
    return time.perf_counter() - start, len(rows)


def safe(data: Path) -> tuple[float, int, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Settings.load({}, data_dir=data, store_url=f"sqlite:///{tmp}/s.db"))
        service.set_budget("demo.unrestricted", Fraction(1000))
        who = service.identity("demo.unrestricted")
        _ = service.engine  # opened before the clock, as a running service has it (it opens on first use)
        start = time.perf_counter()
        payload = service.query(QUERY.to_wire(), identity=who)
        elapsed = time.perf_counter() - start
        return elapsed, payload["meta"]["cells"], {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="census folder (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    print(f"{'census':<40} {'pupils':>10} {'plain s':>9} {'safe s':>9} {'ratio':>6} {'cells':>7}")
    for data in args.data:
        pupils = json.loads((data / "manifest.json").read_text())["pupils"]
        plain(data)  # warm the file cache
        p_times, s_times = [], []
        for _ in range(args.repeat):
            t, _rows = plain(data)
            p_times.append(t)
            t, cells, _ = safe(data)
            s_times.append(t)
        p, s = statistics.median(p_times), statistics.median(s_times)
        print(f"{str(data):<40} {pupils:>10,} {p:>9.2f} {s:>9.2f} {s / p:>6.2f} {cells:>7,}")
        with (results / "dp.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {
                        "benchmark": "dp_la_by_nationality",
                        "data": str(data),
                        "pupils": pupils,
                        "plain_s": round(p, 3),
                        "safe_s": round(s, 3),
                        "ratio": round(s / p, 2),
                        "cells": cells,
                        "repeat": args.repeat,
                        "machine": platform.machine(),
                        "date": time.strftime("%Y-%m-%d"),
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
