"""The Spark engine on a standalone cluster next to DuckDB on the same census.

    python benchmarks/bench_spark_cluster.py --data /tmp/regional [--repeat 3]

Starts a master and a worker on loopback (tests/spark_cluster.py), times the cluster's start-up,
the engine's session start-up against it, and each query's exact aggregates (the engine step of
a release) on Spark and on DuckDB, median of ``--repeat`` runs. Appends JSON lines to
benchmarks/results/spark_cluster.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_bound import dp_plans  # noqa: E402
from tests.spark_cluster import standalone  # noqa: E402

from safestats.catalog import load_catalog  # noqa: E402
from safestats.config import Settings  # noqa: E402
from safestats.dataset import open_dataset  # noqa: E402
from safestats.engines import create_engine  # noqa: E402
from safestats.query.model import Aggregate, Filter, Query  # noqa: E402

SPRING = (Filter("term", "==", "2017-spring"),)
QUERIES = {
    "dp count by phase": Query("PupilOnRoll", (Aggregate("count"),), ("phase",), SPRING),
    "dp count by LA x phase x FSM": Query(
        "PupilOnRoll", (Aggregate("count"),), ("la_code", "phase", "fsm_eligible"), SPRING
    ),
    "dp mean attendance by LA": Query("PupilOnRoll", (Aggregate("mean", "sessions_attended"),), ("la_code",), SPRING),
    "dp LA x nationality (join)": Query(
        "PupilOnRoll", (Aggregate("count_pupils"),), ("la_code", "nationality"), SPRING, join="Nationality"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ds, catalog = open_dataset(args.data), load_catalog(data_dir=args.data)
    plans = dp_plans(QUERIES, catalog)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with standalone(Path(tempfile.mkdtemp(prefix="safestats-spark-"))) as cluster:
        print(f"cluster (master + 1 worker) up in {cluster['start_s']:.1f} s")
        t = time.perf_counter()
        spark = create_engine("spark", ds, Settings.load({}, spark_master=cluster["url"]))
        session_s = time.perf_counter() - t
        print(f"engine session on {cluster['url']} in {session_s:.1f} s")
        duck = create_engine("duckdb", ds)
        print(f"{'query':<32} {'duckdb s':>9} {'spark s':>9} {'ratio':>6}")
        rows = []
        for name, plan in plans.items():
            times = {}
            for label, engine in (("duckdb", duck), ("spark", spark)):
                engine.execute(plan)  # warm
                runs = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    engine.execute(plan)
                    runs.append(time.perf_counter() - t)
                times[label] = statistics.median(runs)
            ratio = times["spark"] / times["duckdb"]
            print(f"{name:<32} {times['duckdb']:>9.3f} {times['spark']:>9.3f} {ratio:>6.1f}")
            rows.append({"query": name, "duckdb_s": round(times["duckdb"], 4), "spark_s": round(times["spark"], 4)})
        spark.close()
    with (out / "spark_cluster.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {
                    "benchmark": "spark_cluster",
                    "cluster_start_s": round(cluster["start_s"], 2),
                    "session_start_s": round(session_s, 2),
                    "queries": rows,
                    "data": str(args.data),
                    "machine": platform.machine(),
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
