"""Round trips through the HTTP service: latency and throughput with concurrent clients.

    python benchmarks/bench_http.py --data /tmp/regional [--clients 4] [--requests 40] [--only-many] [--workers 2]

Starts `safestats serve` on loopback over the census with a fresh store, then measures, client
-> service -> client: a small exact query (sdc, counts by phase: over every term, and in one
term, where distinct pupils are rows less repeats) and the ~31,000-cell dp table of
pupils by LA x nationality (each request a fresh draw: a different epsilon, so the release cache
never answers), a small dp query fresh and cached (the same epsilon again: the release cache
answers, with its own audit record). Prints p50/p95 latency for one client and throughput with
several; then `--many` clients at once over `--users` users (half sdc, half dp) with p50/p95 and
the number of failed requests. Appends JSON lines to benchmarks/results/http.jsonl.
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


def dp_small(i: int) -> dict:
    """Pupils by phase in one term under dp, a fresh draw each time (a new epsilon)."""
    q = Query(
        "PupilOnRoll",
        (Aggregate("count_pupils"),),
        ("phase",),
        (Filter("term", "==", "2017-spring"),),
        epsilon=f"1/{1000 + i}",
    )
    return {"query": q.to_wire()}


def dp_cached(i: int) -> dict:
    """The same dp query every time: after the first, the release cache answers."""
    q = Query(
        "PupilOnRoll", (Aggregate("count_pupils"),), ("phase",), (Filter("term", "==", "2017-spring"),), epsilon="1/2"
    )
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


def many(
    url: str,
    tokens: list[tuple[str, object]],
    clients: int,
    per_client: int,
    kinds: dict[str, list[float]] | None = None,
) -> tuple[list[float], int, float]:
    """`clients` threads at once, client k as user k mod len(tokens), each sending `per_client`
    requests back to back. Returns the latencies, the number of failed requests and the wall time;
    ``kinds`` gets the latencies by request kind (the name of the function that made it)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    go = threading.Barrier(clients)

    def worker(k: int) -> None:
        nonlocal errors
        token, make = tokens[k % len(tokens)]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
            go.wait()
            for j in range(per_client):
                t = time.perf_counter()
                try:
                    r = c.post("/v1/query", json=make(k * 1000 + j + int(time.time_ns() % 10**6) * 1000))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t)
                    errors += not ok
                    if kinds is not None:
                        kinds.setdefault(make.__name__, []).append(latencies[-1])

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def _commit() -> str:
    """The commit of the safestats sources this run imports (A/B rounds run older ones)."""
    import safestats

    where = Path(safestats.__file__).parent
    done = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def record(out: Path, data: Path, row: dict) -> None:
    """Append ``row`` (with the census, the machine, the date and the commit) to http.jsonl."""
    row |= {"data": str(data), "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), "commit": _commit()}
    with (out / "http.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--many", type=int, default=100, help="clients at once in the many-analysts round (0: skip)")
    parser.add_argument("--users", type=int, default=10, help="distinct users the many clients share")
    parser.add_argument("--only-many", action="store_true", help="skip the one- and few-client rounds")
    parser.add_argument("--workers", type=int, default=1, help="service processes (safestats serve --workers)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    env = {
        **os.environ,
        "SAFESTATS_DATA_DIR": str(args.data),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp}/s.db",
        "SAFESTATS_RATE_LIMIT": "100000",
    }

    def user(name: str, group: str, org: str = "DfE", *, budget: bool = False) -> str:
        """A new user's bearer token (with a budget no round spends, for a dp analyst)."""
        token = subprocess.run(
            [str(BIN), "users", "add", name, "--group", group, "--org", org],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if budget:
            subprocess.run([str(BIN), "budget", "set", name, "1000000"], env=env, check=True, capture_output=True)
        return token

    stats = user("bench.stats", "SC_OFFICIAL_STATISTICS", "ONS")
    analyst = user("bench.dp", "I_STORE_SC_UNRESTRICTED_USERS", budget=True)
    small_dp = user("bench.small", "I_STORE_SC_USERS", budget=True)
    # the many-analysts round: half official statisticians (exact, sdc), half dp analysts
    crowd: list[tuple[str, object]] = []
    for k in range(args.users if args.many else 0):
        sdc = k % 2 == 0
        token = user(f"bench.crowd{k}", "SC_OFFICIAL_STATISTICS" if sdc else "I_STORE_SC_USERS", budget=not sdc)
        crowd.append((token, small_term if sdc else dp_small))
    # LA x nationality is OFFICIAL-SENSITIVE: over the network it needs a second-factor session
    uri = subprocess.run(
        [str(BIN), "users", "2fa", "enrol", "bench.dp", "--no-qr"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve = [str(BIN), "serve", "--port", str(port)] + (["--workers", str(args.workers)] if args.workers > 1 else [])
    proc = subprocess.Popen(serve, env=env, stderr=subprocess.DEVNULL)
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
            ("small dp, one term, fresh", dp_small, small_dp, args.requests * 5),
            ("small dp, cached", dp_cached, small_dp, args.requests * 5),
            ("dp LA x nationality 31k", big, analyst, args.requests),
        )[: 0 if args.only_many else None]:
            run(url, token, make, 3, 1)  # warm up
            for clients in (1, args.clients):
                lat, wall = run(url, token, make, n, clients)
                p50 = statistics.median(lat) * 1000
                p95 = statistics.quantiles(lat, n=20)[18] * 1000
                rps = len(lat) / wall
                print(f"{name:<28} {clients:>7} {len(lat):>4} {p50:>8.1f} {p95:>8.1f} {rps:>7.1f}")
                record(
                    out,
                    args.data,
                    {
                        "benchmark": "http_round_trip",
                        "query": name,
                        "clients": clients,
                        "workers": args.workers,
                        "requests": len(lat),
                        "p50_ms": round(p50, 1),
                        "p95_ms": round(p95, 1),
                        "req_per_s": round(rps, 2),
                    },
                )
        if crowd:
            for tok, make in crowd:
                many(url, [(tok, make)], 1, 2)  # warm up each user
            kinds: dict[str, list[float]] = {}
            lat, errors, wall = many(url, crowd, args.many, 5, kinds)
            p50 = statistics.median(lat) * 1000
            p95 = statistics.quantiles(lat, n=20)[18] * 1000
            name = f"{args.many} clients / {len(crowd)} users"
            rps = len(lat) / wall
            print(f"{name:<28} {args.many:>7} {len(lat):>4} {p50:>8.1f} {p95:>8.1f} {rps:>7.1f}  errors {errors}")
            by_kind = {
                k: (statistics.median(v) * 1000, statistics.quantiles(v, n=20)[18] * 1000) for k, v in kinds.items()
            }
            for k, (k50, k95) in by_kind.items():
                print(f"  of which {k:<18} {'':>7} {len(kinds[k]):>4} {k50:>8.1f} {k95:>8.1f}")
            record(
                out,
                args.data,
                {
                    "benchmark": "http_many_clients",
                    "query": "small sdc (one term) and small dp (one term, fresh), half the users each",
                    "clients": args.many,
                    "workers": args.workers,
                    "users": len(crowd),
                    "requests": len(lat),
                    "errors": errors,
                    "p50_ms": round(p50, 1),
                    "p95_ms": round(p95, 1),
                    "req_per_s": round(len(lat) / wall, 2),
                    "by_kind": {k: {"p50_ms": round(a, 1), "p95_ms": round(b, 1)} for k, (a, b) in by_kind.items()},
                },
            )
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
