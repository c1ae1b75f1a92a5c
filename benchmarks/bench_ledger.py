"""The budget ledger's cost per dp request as a user's releases in the period grow.

    python benchmarks/bench_ledger.py [--spends 0 100 1000 5000] [--repeat 200]

On a fresh SQLite store (a temporary directory), writes N committed spends for one user and
period through the ledger, then times the two ledger steps of every dp request: the balance
read (`Ledger.balance`, what /v1/budget and a release's "budget left" read) and a reservation
with its cancellation (the reservation is the serialised write). Medians in milliseconds.
Appends JSON lines to benchmarks/results/ledger.jsonl.
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

from safestats.store.db import open_store
from safestats.store.ledger import Ledger

ACCOUNT = ("ann", "school_census", "2017-Q1", "epsilon")


def measure(spends: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(open_store(f"sqlite:///{Path(tmp) / 'store.db'}"))
        budget = Fraction(10**6)
        for i in range(spends):
            rid, _ = ledger.reserve(*ACCOUNT, Fraction(1, 1000 + i), default=budget)
            ledger.commit(rid, None)
        balance, reserve = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            ledger.balance(*ACCOUNT, budget)
            balance.append(time.perf_counter() - t)
            t = time.perf_counter()
            rid, _ = ledger.reserve(*ACCOUNT, Fraction(1, 7), default=budget)
            reserve.append(time.perf_counter() - t)
            ledger.cancel(rid)
        return {
            "balance_ms": round(statistics.median(balance) * 1000, 3),
            "reserve_ms": round(statistics.median(reserve) * 1000, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spends", type=int, nargs="+", default=[0, 100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    out = Path(__file__).resolve().parent / "results" / "ledger.jsonl"
    out.parent.mkdir(exist_ok=True)
    print(f"{'spends before':>14} {'balance ms':>11} {'reserve ms':>11}")
    for n in args.spends:
        row = measure(n, args.repeat)
        print(f"{n:>14} {row['balance_ms']:>11.3f} {row['reserve_ms']:>11.3f}", flush=True)
        with out.open("a") as f:
            f.write(json.dumps({"spends": n, **row, "host": platform.node(), "time": time.time()}) + "\n")


if __name__ == "__main__":
    main()
