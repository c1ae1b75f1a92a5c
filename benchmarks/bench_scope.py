"""What counting the records used costs a release: the engine step alone, the scope count the
first time a scope is seen, and the same count answered from the engine's scope cache.

    python benchmarks/bench_scope.py --data /tmp/national [--rounds 5]

DuckDB engine, dp plans of issue 19's queries (the contribution bound on). Medians of interleaved
rounds; the first count of a scope is measured on a fresh engine each round. Appends JSON lines
to benchmarks/results/scope.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from fractions import Fraction
from pathlib import Path

from safestats.access.policy import Disclosure
from safestats.catalog import load_catalog
from safestats.dataset import open_dataset
from safestats.disclosure.dp import plan_dp
from safestats.engines.duckdb import DuckDBEngine
from safestats.query.model import Aggregate, Filter, Query
from safestats.query.validate import plan_query

TERM = (Filter("term", "==", "2017-spring"),)
QUERIES = {
    "count by phase": Query("PupilOnRoll", (Aggregate("count"),), ("phase",), TERM),
    "count by LA x phase x FSM": Query(
        "PupilOnRoll", (Aggregate("count"),), ("la_code", "phase", "fsm_eligible"), TERM
    ),
    "count by LA x nationality (join)": Query(
        "PupilOnRoll", (Aggregate("count_pupils"),), ("la_code", "nationality"), TERM, join="Nationality"
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dataset = open_dataset(args.data)
    catalog = load_catalog(data_dir=dataset.path)
    d = Disclosure(mode="dp", per_query=Fraction(1, 2))
    plans = {
        n: plan_dp(plan_query(q, catalog=catalog, max_cells=100_000), d, max_cells=100_000).plan
        for n, q in QUERIES.items()
    }
    times: dict[str, dict[str, list[float]]] = {n: {"execute": [], "first": [], "cached": []} for n in plans}
    for _ in range(args.rounds):
        engine = DuckDBEngine(dataset)
        for name, plan in plans.items():
            engine.execute(plan)  # warm: the per-relation tables are built once per engine
            t = time.perf_counter()
            engine.execute(plan)
            times[name]["execute"].append(time.perf_counter() - t)
            t = time.perf_counter()
            engine.scope(plan)
            times[name]["first"].append(time.perf_counter() - t)
            t = time.perf_counter()
            engine.scope(plan)
            times[name]["cached"].append(time.perf_counter() - t)
        engine.close()
    out = Path(__file__).parent / "results" / "scope.jsonl"
    with out.open("a") as f:
        for name, t in times.items():
            row = {
                "benchmark": "scope",
                "query": name,
                **{f"{k}_s": round(statistics.median(v), 4) for k, v in t.items()},
                "first_over_execute": round(statistics.median(t["first"]) / statistics.median(t["execute"]), 2),
                "data": args.data,
                "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
            }
            print(json.dumps(row))
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
