"""Start-up to the first answer, in fresh processes: import, connect, first query; and the CLI.

    python benchmarks/bench_startup.py [--data data/synthetic/sample] [--repeat 5]

Each round starts a new interpreter (nothing cached in the process): ``import safestats``,
``connect()`` (embedded service: catalog, policy, audit store; the engine opens on the first
query), the first DP count, and ``safestats audit verify`` on a fresh store. Prints medians and
appends a JSON line to benchmarks/results/startup.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, time, tempfile, pathlib
t0 = time.perf_counter()
import safestats
t1 = time.perf_counter()
d = pathlib.Path(tempfile.mkdtemp())
s = safestats.connect(user="demo.analyst", data_dir=sys.argv[1], environ={}, store_url=f"sqlite:///{d}/s.db",
                      output_checking_dir=str(d / "o"), secret_key_file=str(d / "k"), signing_key_file=str(d / "sk"))
t2 = time.perf_counter()
s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "connect": t2 - t1, "first_query": t3 - t2}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic" / "sample"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE, args.data], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1]) | {"process": time.perf_counter() - started}
        with tempfile.TemporaryDirectory() as d:
            env = {
                "SAFESTATS_STORE_URL": f"sqlite:///{d}/s.db",
                "SAFESTATS_SECRET_KEY_FILE": f"{d}/k",
                "SAFESTATS_SIGNING_KEY_FILE": f"{d}/sk",
                "SAFESTATS_DATA_DIR": args.data,
                "PATH": "",
            }
            t = time.perf_counter()
            subprocess.run(
                [str(Path(sys.executable).with_name("safestats")), "audit", "verify"],
                env=env,
                capture_output=True,
                check=True,
            )
            row["audit_verify_cli"] = time.perf_counter() - t
        rounds.append(row)
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    for k, v in medians.items():
        print(f"{k:>18}: {v:6.2f} s")
    result = {
        "bench": "startup",
        "data": args.data,
        "repeat": args.repeat,
        "machine": platform.machine(),
        "medians_s": medians,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "startup.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
