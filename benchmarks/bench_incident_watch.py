"""What the incident rules at every request cost: the same requests with the watch on and off.

    python benchmarks/bench_incident_watch.py [--requests 300]

Embedded sessions over the sample census, one SQLite store each: ``whoami`` (the cheapest
request, so the watch's share is largest) and a refused query (the records the rules read),
interleaved rounds; medians per request. Appends JSON lines to benchmarks/results/incidents.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import safestats as ss
from safestats.config import project_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    sample = project_root() / "data" / "synthetic" / "sample"
    sessions = {}
    for watch in ("on", "off"):
        store = tempfile.mkdtemp(prefix="safestats-bench-")
        sessions[watch] = ss.connect(
            data_dir=sample,
            store_url=f"sqlite:///{store}/s.db",
            environ={},
            incident_watch=watch == "on",
            output_checking_dir=f"{store}/oc",
        )
    times: dict[str, dict[str, list[float]]] = {w: {"whoami": [], "refused": []} for w in sessions}
    for _ in range(args.requests):
        for watch, s in sessions.items():
            t = time.perf_counter()
            s.whoami()
            times[watch]["whoami"].append(time.perf_counter() - t)
            t = time.perf_counter()
            try:
                s.sql("SELECT upn, COUNT(*) FROM PupilOnRoll GROUP BY upn")
            except Exception:  # noqa: BLE001 - refused, as intended
                pass
            times[watch]["refused"].append(time.perf_counter() - t)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    for kind in ("whoami", "refused"):
        on, off = (statistics.median(times[w][kind]) * 1000 for w in ("on", "off"))
        print(f"{kind:<8} watch on {on:6.2f} ms   off {off:6.2f} ms   cost {on - off:+.2f} ms")
        with (out / "incidents.jsonl").open("a") as f:
            row = {"benchmark": "incident watch", "request": kind, "on_ms": round(on, 3), "off_ms": round(off, 3)}
            row |= {"requests": args.requests, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
