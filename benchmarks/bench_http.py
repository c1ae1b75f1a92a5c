"""Round trips through the HTTP service: latency and throughput with concurrent clients.

    python benchmarks/bench_http.py --data /tmp/regional [--clients 4] [--requests 40]

Starts `safestats serve` on loopback over the census with a fresh store, then measures, client
-> service -> client: a small exact query (sdc, counts by phase: over every term, and in one
term, where distinct pupils are rows less repeats) and the ~31,000-cell dp table of
pupils by LA x nationality (each request a fresh draw: a different epsilon, so the release cache
never answers). Prints p50/p95 latency for one client and throughput with several; appends JSON
lines to benchmarks/results/http.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from safestats.query.model import Aggregate, Filter, Query

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.factors import code_now, seed_of  # noqa: E402

BIN = Path(sys.executable).parent / "safestats"


def small(i: int) -> dict:
    return {"query": Query("PupilOnRoll", (Aggregate("count"),), ("phase",)).to_wire()}


def small_term(i: int) -> dict:
    q = Query("PupilOnRoll", (Aggregate("count"),), ("phase",), (Filter("term", "==", "2017-spring"),))
    return {"query": q.to_wire()}


def big(i: int) -> dict:
    q = Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"),),
        ("la_code", "nationality"),
        (Filter("term", "==", "2017-spring"),),
        join="Nationality",
        epsilon=f"1/{1000 + i}",
    )
    return {"query": q.to_wire()}


def run(url: str, token: str, make, n: int, clients: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
            for i in counter:
                t = time.perf_counter()
                r = c.post("/v1/query", json=make(i + int(time.time_ns() % 10**6) * 1000))
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    env = {
        **os.environ,
        "SAFESTATS_DATA_DIR": str(args.data),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp}/s.db",
        "SAFESTATS_RATE_LIMIT": "100000",
    }
    add = [str(BIN), "users", "add"]
    stats = subprocess.run(
        [*add, "bench.stats", "--group", "SC_OFFICIAL_STATISTICS", "--org", "ONS"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    analyst = subprocess.run(
        [*add, "bench.dp", "--group", "I_STORE_SC_UNRESTRICTED_USERS", "--org", "DfE"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([str(BIN), "budget", "set", "bench.dp", "1000000"], env=env, check=True, capture_output=True)
    # LA x nationality is OFFICIAL-SENSITIVE: over the network it needs a second-factor session
    uri = subprocess.run(
        [str(BIN), "users", "2fa", "enrol", "bench.dp", "--no-qr"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/v1/health", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        opened = httpx.post(
            url + "/v1/session",
            json={"code": code_now(seed_of(uri))},
            headers={"Authorization": f"Bearer {analyst}"},
        )
        opened.raise_for_status()
        analyst = opened.json()["session"]
        print(f"{'query':<28} {'clients':>7} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7}")
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        for name, make, token, n in (
            ("small sdc count by phase", small, stats, args.requests * 5),
            ("small sdc, one term", small_term, stats, args.requests * 5),
            ("dp LA x nationality 31k", big, analyst, args.requests),
        ):
            run(url, token, make, 3, 1)  # warm up
            for clients in (1, args.clients):
                lat, wall = run(url, token, make, n, clients)
                p50 = statistics.median(lat) * 1000
                p95 = statistics.quantiles(lat, n=20)[18] * 1000
                rps = len(lat) / wall
                print(f"{name:<28} {clients:>7} {len(lat):>4} {p50:>8.1f} {p95:>8.1f} {rps:>7.1f}")
                with (out / "http.jsonl").open("a") as f:
                    f.write(
                        json.dumps(
                            {
                                "benchmark": "http_round_trip",
                                "query": name,
                                "clients": clients,
                                "requests": len(lat),
                                "p50_ms": round(p50, 1),
                                "p95_ms": round(p95, 1),
                                "req_per_s": round(rps, 2),
                                "data": str(args.data),
                                "machine": platform.machine(),
                                "date": time.strftime("%Y-%m-%d"),
                            }
                        )
                        + "\n"
                    )
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
