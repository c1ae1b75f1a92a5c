"""Throughput and latency with 1, 2 and 4 service replicas behind nginx on one PostgreSQL store.

    python benchmarks/bench_replicas.py --data /tmp/regional [--clients 16] [--requests 160]

For each replica count: a fresh PostgreSQL database (a throwaway cluster from tests/pg.py),
the replicas (`safestats serve`) and nginx round robin in front (tests/replicas.py), then
``--clients`` concurrent clients send ``--requests`` fresh dp queries (a count by phase with a
different age range each, so the release cache never answers) and a second round of a small
dp LA table. Prints p50/p95 latency and requests a second; appends JSON lines to
benchmarks/results/replicas.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pg import start_cluster  # noqa: E402
from tests.replicas import Cluster  # noqa: E402

from safestats.config import Settings  # noqa: E402
from safestats.query.model import Aggregate, Filter, Query  # noqa: E402
from safestats.service.pipeline import Service  # noqa: E402

PAIRS = [(a, b) for a in range(4, 19) for b in range(a + 1, 19)]


def by_phase(i: int) -> dict:
    low, high = PAIRS[i % len(PAIRS)]
    q = Query(
        "PupilOnRoll",
        (Aggregate("count"),),
        ("phase",),
        (Filter("age", ">=", low), Filter("age", "<=", high), Filter("term", "==", "2017-spring")),
        epsilon=f"1/{1000 + i}",
    )
    return {"query": q.to_wire()}


def by_la(i: int) -> dict:
    q = Query(
        "PupilOnRoll",
        (Aggregate("count"),),
        ("la_code",),
        (Filter("term", "==", "2017-spring"),),
        epsilon=f"1/{5000 + i}",
    )
    return {"query": q.to_wire()}


def load(url: str, token: str, make, n: int, clients: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
            for i in counter:
                t = time.perf_counter()
                r = c.post("/v1/query", json=make(i + time.time_ns() % 10**6 * 1000))
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="safestats-bench-pg-"))
    pg = start_cluster(root)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    print(
        f"{'replicas':>8} {'query':<22} {'clients':>7} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} {'errors':>6}"
    )
    try:
        for replicas in args.replicas:
            tmp = Path(tempfile.mkdtemp(prefix="safestats-bench-"))
            settings = {
                "SAFESTATS_DATA_DIR": str(args.data),
                "SAFESTATS_STORE_URL": pg.new_database(),
                "SAFESTATS_SECRET_KEY_FILE": str(tmp / "secret.key"),
                "SAFESTATS_SIGNING_KEY_FILE": str(tmp / "signing.key"),
                "SAFESTATS_RATE_LIMIT": "1000000",
                "SAFESTATS_LOG_FORMAT": "text",
            }
            owner = Service(Settings.load(settings))
            owner.users.add_user("bench", groups=["I_STORE_SC_USERS"], organisation="DfE")
            token = owner.users.issue_token("bench")
            owner.set_budget("bench", Fraction(10**6))
            cluster = Cluster(tmp, {**os.environ, **settings}, replicas=replicas)
            try:
                load(cluster.url, token, by_phase, 4 * replicas, min(4, args.clients))  # warm every replica
                for name, make in (("dp count by phase", by_phase), ("dp count by LA", by_la)):
                    lat, wall, errors = load(cluster.url, token, make, args.requests, args.clients)
                    p50 = statistics.median(lat) * 1000
                    p95 = statistics.quantiles(lat, n=20)[18] * 1000
                    rps = len(lat) / wall
                    print(
                        f"{replicas:>8} {name:<22} {args.clients:>7} {len(lat):>4} {p50:>8.1f} {p95:>8.1f} "
                        f"{rps:>7.1f} {errors:>6}"
                    )
                    with (out / "replicas.jsonl").open("a") as f:
                        row = {
                            "benchmark": "replicas",
                            "replicas": replicas,
                            "query": name,
                            "clients": args.clients,
                            "requests": len(lat),
                            "errors": errors,
                            "p50_ms": round(p50, 1),
                            "p95_ms": round(p95, 1),
                            "req_per_s": round(rps, 2),
                            "data": str(args.data),
                            "cores": os.cpu_count(),
                            "machine": platform.machine(),
                            "date": time.strftime("%Y-%m-%d"),
                        }
                        f.write(json.dumps(row) + "\n")
            finally:
                cluster.stop()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
