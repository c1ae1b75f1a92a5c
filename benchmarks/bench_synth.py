"""Time the synthetic census generator and record its peak memory.

    python benchmarks/bench_synth.py --scale national [--out DIR]

Prints one line of results and appends it to benchmarks/results/synth.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from safestats.synthetic.census import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="regional", choices=["sample", "regional", "national"])
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--out", type=Path, default=None, help="keep the census here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="safestats-bench-")) / args.scale
    start = time.perf_counter()
    manifest = generate(out, scale=args.scale, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mib = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    rows = sum(v["rows"] for k, v in manifest["files"].items() if k.endswith(".parquet"))
    result = {
        "benchmark": "synth",
        "scale": args.scale,
        "pupils": manifest["pupils"],
        "rows_written": rows,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_mib),
        "size_mib": round(size_mib),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    with (results / "synth.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    if args.out is None:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
