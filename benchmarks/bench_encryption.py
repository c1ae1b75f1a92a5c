"""The cost of encryption at rest: the same queries over the plain and the encrypted census.

    python benchmarks/bench_encryption.py --data /tmp/national [--rounds 3] [--work DIR]

Copies the census to ``--work`` (a temporary folder by default), encrypts the copy with
``safestats census encrypt``'s function (timed), then, for issue 19's dp queries, times the
engine step alone (DuckDB over the plain files; over the encrypted files, each decrypted once at
start into anonymous memory) and the whole safe path through an embedded session over each (a fresh
release each time). Rounds are interleaved; the first is dropped; medians; ratios encrypted /
plain in the same round. Appends JSON lines to benchmarks/results/encryption.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from bench_bound import QUERIES, dp_plans, timed  # the same four queries as the contribution-bound benchmark

import safestats as ss
from safestats.catalog import load_catalog
from safestats.census_keys import encrypt_census, load_kek, new_kek_file
from safestats.dataset import open_dataset
from safestats.engines.duckdb import DuckDBEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="safestats-enc-"))
    enc = work / "census"
    if enc.exists():
        shutil.rmtree(enc)
    shutil.copytree(args.data, enc)
    kek_file = work / "kek"
    kek_file.unlink(missing_ok=True)
    new_kek_file(kek_file)
    encrypt_s = timed(lambda: encrypt_census(enc, load_kek(kek_file)))  # type: ignore[arg-type]
    size = {p: sum(f.stat().st_size for f in p.glob("*.parquet")) for p in (args.data, enc)}
    print(f"encrypted {size[args.data] / 1e6:.0f} MB in {encrypt_s:.1f} s ({size[enc] / 1e6:.0f} MB encrypted)")

    catalog = load_catalog(data_dir=args.data)
    start = {}
    t = time.perf_counter()
    plain_engine = DuckDBEngine(open_dataset(args.data))
    start["plain"] = time.perf_counter() - t
    t = time.perf_counter()
    enc_engine = DuckDBEngine(open_dataset(enc, kek=load_kek(kek_file)))
    start["encrypted"] = time.perf_counter() - t
    plans = dp_plans({name: q for name, (q, *_rest) in QUERIES.items()}, catalog)
    for plan in plans.values():  # the per-relation tables of the contribution bound, built once
        start["plain"] += timed(lambda plan=plan: plain_engine._prepare(plan))
        start["encrypted"] += timed(lambda plan=plan: enc_engine._prepare(plan))
    print(f"engine ready: plain {start['plain']:.2f} s, encrypted {start['encrypted']:.2f} s (decrypted into memory)")

    sessions = {}
    for label, folder, kek in (("plain", args.data, ""), ("encrypted", enc, str(kek_file))):
        store = tempfile.mkdtemp(prefix="safestats-bench-")
        s = ss.connect(
            user="demo.unrestricted",
            data_dir=str(folder),
            environ={},
            store_url=f"sqlite:///{store}/s.db",
            max_cells=100_000,
            census_kek_file=kek,
        )
        s._transport._service.set_budget("demo.unrestricted", Fraction(10**6))
        sessions[label] = s
    engines = {"plain": plain_engine, "encrypted": enc_engine}
    rows = {n: {k: [] for k in ("engine plain", "engine encrypted", "safe plain", "safe encrypted")} for n in QUERIES}
    counter = iter(range(10**6))
    for _ in range(args.rounds + 1):
        for name, (_q, _sql, build, kind) in QUERIES.items():
            for label in ("plain", "encrypted"):
                rows[name][f"engine {label}"].append(
                    timed(lambda label=label, name=name: engines[label].execute(plans[name]))
                )
                eps = f"1/{1000 + next(counter)}"

                def safe(build=build, kind=kind, eps=eps, label=label) -> None:
                    q = build(sessions[label])
                    q = (
                        q.count_pupils()
                        if kind == "count_pupils"
                        else q.count()
                        if kind == "count"
                        else q.mean("sessions_attended")
                    )
                    q.epsilon(eps).run()

                rows[name][f"safe {label}"].append(timed(safe))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    print(f"{'query':<34} {'engine':>7} {'enc':>7} {'ratio':>6} {'safe':>7} {'enc':>7} {'ratio':>6}")
    for name, r in rows.items():
        med = {k: statistics.median(v[1:]) for k, v in r.items()}
        ratio = {
            k: statistics.median(e / p for e, p in zip(r[f"{k} encrypted"][1:], r[f"{k} plain"][1:], strict=True))
            for k in ("engine", "safe")
        }
        print(
            f"{name:<34} {med['engine plain']:>7.3f} {med['engine encrypted']:>7.3f} {ratio['engine']:>6.2f} "
            f"{med['safe plain']:>7.3f} {med['safe encrypted']:>7.3f} {ratio['safe']:>6.2f}"
        )
        with (out / "encryption.jsonl").open("a") as f:
            row = {"benchmark": "encryption", "query": name, **{k: round(v, 4) for k, v in med.items()}}
            row |= {f"ratio {k}": round(v, 3) for k, v in ratio.items()}
            row |= {"encrypt_s": round(encrypt_s, 1), "start": {k: round(v, 2) for k, v in start.items()}}
            row |= {"data": str(args.data), "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
            f.write(json.dumps(row) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
