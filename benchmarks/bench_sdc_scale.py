"""The sdc table of issue 19 at every scale: LA x ethnicity with totals, alone and linked.

    python benchmarks/bench_sdc_scale.py --data data/synthetic/sample --data /tmp/regional --data /tmp/national

For each census, in one process and one run: plain DuckDB's count of rows by LA x ethnicity in
one term (the floor), then through the service (fresh store each time, the default policy: the
cross-table rule in force) the same table with every margin (a) alone and (b) after a table of
pupils by phase of the same term, so the differencing check links the two (the refinement
LA x ethnicity x phase). Also the engine's per-census tables of pupils with several rows in a
term (built once per relation; their build time and rows). A refused table is reported as such,
with how long the refusal took. Appends JSON lines to benchmarks/results/sdc_scale.jsonl and
prints a Markdown table (copied into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

TERM = "2016-autumn"


def plain(data: Path, repeat: int) -> float:
    import duckdb

    sql = (
        f"SELECT la_code, ethnicity, count(*) FROM read_parquet('{data}/PupilOnRoll.parquet') "
        f"WHERE term = '{TERM}' GROUP BY ALL"
    )
    out = []
    for _ in range(repeat):
        con = duckdb.connect()
        start = time.perf_counter()
        con.execute(sql).fetchall()
        out.append(time.perf_counter() - start)
        con.close()
    return statistics.median(out)


def service(data: Path, tmp: str):
    from safestats.config import Settings
    from safestats.service.pipeline import Service

    return Service(
        Settings.load(
            {},
            data_dir=data,
            store_url=f"sqlite:///{tmp}/s.db",
            output_checking_dir=f"{tmp}/checks",
            secret_key_file=f"{tmp}/key",
        )
    )


def table(keys: tuple[str, ...], *, totals: bool, term: str = TERM):
    import safestats as ss

    return ss.Query("PupilOnRoll", (ss.Aggregate("count"),), keys, (ss.Filter("term", "==", term),), totals=totals)


def query(keys: tuple[str, ...], *, totals: bool, term: str = TERM) -> dict:
    return table(keys, totals=totals, term=term).to_wire()


def timed(s, wire: dict) -> dict:
    from safestats.errors import DisclosureRefused

    who = s.identity("demo.statistician")
    start = time.perf_counter()
    try:
        payload = s.query(wire, identity=who)
    except DisclosureRefused as e:
        return {"seconds": time.perf_counter() - start, "refused": str(e)[:80]}
    meta = payload["meta"]
    return {"seconds": time.perf_counter() - start, "cells": meta["cells"], "withheld": meta["suppressed"]}


def one(data: Path, repeat: int) -> dict:
    from safestats.engines.compile import multi_key, rows_key
    from safestats.query.validate import plan_query

    out: dict = {"data": str(data), "plain_s": plain(data, repeat)}
    alone, linked = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            s = service(data, tmp)
            plan = plan_query(table(("phase",), totals=False), catalog=s.catalog, max_cells=10_000)
            start = time.perf_counter()
            s.engine._prepare(plan)  # the per-census tables: built once per relation
            out["index_build_s"] = time.perf_counter() - start
            con = s.engine._con
            out["index_rows"] = {
                "pupils with several rows in a term": int(con.execute(s.engine._tables[multi_key(plan)].count())),
                "their rows": int(con.execute(s.engine._tables[rows_key(plan)].count())),
            }
            out["pupils"] = int(con.execute(s.engine._tables["PupilOnRoll"].count()))
            alone.append(timed(s, query(("la_code", "ethnicity"), totals=True)))
            # the phase table shares its term with the next table (linked), not with the first one
            timed(s, query(("phase",), totals=False, term="2017-spring"))
            linked.append(timed(s, query(("la_code", "ethnicity"), totals=True, term="2017-spring")))
            s.engine.close()
    for name, runs in (("alone", alone), ("linked", linked)):
        best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        out[name] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    rows = []
    for data in args.data:
        r = one(data, args.repeat)
        r |= {"benchmark": "sdc_scale", "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
        with (results / "sdc_scale.jsonl").open("a") as f:
            f.write(json.dumps(r) + "\n")
        rows.append(r)
    print("| census | rows (all terms) | plain DuckDB | sdc alone | sdc linked (after phase) | term tables |")
    print("|---|---|---|---|---|---|")
    for r in rows:

        def cell(x: dict) -> str:
            if "refused" in x:
                return f"refused in {x['seconds']:.2f} s"
            return f"{x['seconds']:.2f} s ({x['withheld']:,} of {x['cells']:,} withheld)"

        index = r["index_rows"]
        print(
            f"| {Path(r['data']).name} | {r['pupils']:,} | {r['plain_s']:.3f} s | {cell(r['alone'])} | "
            f"{cell(r['linked'])} | {r['index_build_s']:.2f} s, {index['their rows']:,} rows of "
            f"{index['pupils with several rows in a term']:,} pupil-terms |"
        )


if __name__ == "__main__":
    main()
