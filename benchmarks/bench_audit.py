"""Reports over a large audit log: fill it with a valid, signed chain, then time the reports.

    python benchmarks/bench_audit.py [--records 1000000]

Fills a fresh SQLite store with N records over one year (2017) spread over users, organisations,
interaction types and outcomes, with the Merkle tree's right edge and an Ed25519-signed tree
head every 1,000 records (and HMAC checkpoints); then times `audit verify` (chain, tree against
every head), the audit trail for one quarter (CSV), the transparency report for the year; the
cost of one append with and without a signed head (the service signs one at every release,
written to the witness file with fsync); and the size and time of an inclusion proof and of a
consistency proof at that size. Appends JSON lines to benchmarks/results/audit.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import tempfile
import time
from pathlib import Path

from safestats.audit.heads import Signer
from safestats.audit.log import FIELD_NAMES, AuditLog, _encode, _mac, _row_hash
from safestats.audit.reports import audit_trail, render, transparency
from safestats.audit.tree import Frontier, consistency_proof, inclusion_proof, leaf_hash, verify_consistency
from safestats.store.schema import GENESIS, audit_table, checkpoint_table, head_table, tree_head_table

KEY = b"b" * 32
USERS = [
    ("ana", "DfE", "I_STORE_SC_USERS"),
    ("ben", "DfE", "I_STORE_SC_UNRESTRICTED_USERS"),
    ("cal", "ONS", "SC_OFFICIAL_STATISTICS"),
    ("quality.reports", "DfE", "SC_QUALITY_REPORTS"),
    ("dee", "UoX", "RESEARCHERS"),
]


def fill(log: AuditLog, n: int) -> None:
    frontier = Frontier()
    heads = []
    rng = random.Random(7)
    start = dt.datetime(2017, 1, 1, tzinfo=dt.UTC)
    step = dt.timedelta(days=365) / n
    prev = GENESIS
    batch, checkpoints = [], []
    with log.engine.begin() as conn:
        for seq in range(1, n + 1):
            user, org, group = USERS[rng.randrange(len(USERS))]
            outcome = rng.choice(["released", "released", "released", "refused"])
            record = {
                "time_utc": (start + step * seq).isoformat(timespec="microseconds"),
                "user": user,
                "groups": [group],
                "organisation": org,
                "interaction": "scheduled" if user == "quality.reports" else rng.choice(["manual", "ad hoc", "api"]),
                "client": {"host": "bench"},
                "dataset": "school_census",
                "tables": ["PupilOnRoll"],
                "fields_filter": ["term"],
                "fields_group": ["la_code", "phase"],
                "fields_measure": [],
                "fields_requested": ["la_code", "phase", "count"],
                "fields_returned": ["la_code", "phase", "count"] if outcome == "released" else [],
                "operation": "query",
                "outcome": outcome,
                "reason": "",
                "cells_released": 600,
                "cells_suppressed": 8,
                "disclosure": {"mode": "dp"},
                "privacy": {"spent": "1/2"},
                "label": "OFFICIAL",
                "duration_ms": 40,
                "query_hash": "0" * 64,
                "query": {"v": 1},
                "snapshot_id": "0" * 64,
            }
            row = _encode(record)
            digest = _row_hash(seq, prev, [row[k] for k in FIELD_NAMES])
            batch.append({"seq": seq, "prev_hash": prev, "record_hash": digest, **row})
            frontier.push(leaf_hash(digest))
            if seq % 1000 == 0 and log.signer is not None:
                head = log.signer.sign(log.origin, seq, frontier.root())
                heads.append({"size": seq, "head": json.dumps(head.to_dict(), sort_keys=True)})
            if seq % 1000 == 0:
                checkpoints.append(
                    {"seq": seq, "record_hash": digest, "mac": _mac(KEY, seq, digest), "time_utc": record["time_utc"]}
                )
            prev = digest
            if len(batch) == 20_000:
                conn.execute(audit_table.insert(), batch)
                batch = []
        if batch:
            conn.execute(audit_table.insert(), batch)
        if checkpoints:
            conn.execute(checkpoint_table.insert(), checkpoints)
        if heads:
            conn.execute(tree_head_table.insert(), heads)
        conn.execute(
            head_table.update().where(head_table.c.id == 1).values(seq=n, record_hash=prev, frontier=frontier.to_json())
        )


def timed(label: str, fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    print(f"{label:<42} {seconds:>8.1f} s")
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    log = AuditLog.open(
        f"sqlite:///{tmp}/audit.db", key=KEY, signer=Signer(f"{tmp}/signing.key"), witness=f"{tmp}/heads.jsonl"
    )
    _, fill_s = timed(f"fill {args.records:,} records", lambda: fill(log, args.records))
    report, verify_s = timed("verify (chain, tree against every head)", log.verify)
    assert report.ok and report.heads >= args.records // 1000, report
    record = dict(next(iter(log.records(start="2017-06-01"))))
    record.pop("seq")

    def appends(outcome: str, k: int = 300) -> float:
        t = time.perf_counter()
        for _ in range(k):
            log.append(record | {"outcome": outcome})
        return (time.perf_counter() - t) / k * 1000

    plain_ms, signed_ms = appends("refused"), appends("released")
    print(f"{'append, no head / with a signed head':<42} {plain_ms:>6.2f} ms / {signed_ms:.2f} ms")
    import sqlalchemy as sa

    with log.engine.connect() as conn:
        leaves = [
            leaf_hash(h) for (h,) in conn.execute(sa.select(audit_table.c.record_hash).order_by(audit_table.c.seq))
        ]
    t = time.perf_counter()
    path = inclusion_proof(leaves, len(leaves) // 3)
    incl_s = time.perf_counter() - t
    t = time.perf_counter()
    cons = consistency_proof(leaves, len(leaves) // 2)
    cons_s = time.perf_counter() - t
    from safestats.audit.tree import root_of

    assert verify_consistency(
        len(leaves) // 2, len(leaves), root_of(leaves[: len(leaves) // 2])[1], root_of(leaves)[1], cons
    )
    print(f"{'inclusion proof: hashes, bytes, time':<42} {len(path)}, {32 * len(path)} B, {incl_s:.2f} s")
    print(f"{'consistency proof n/2 -> n: hashes, time':<42} {len(cons)}, {cons_s:.2f} s")
    quarter = lambda: render(audit_trail(log, "2017-01-01", "2017-04-01"), "csv")  # noqa: E731
    trail, trail_s = timed("audit trail 2017-Q1 (CSV)", quarter)
    _, transp_s = timed("transparency 2017 (CSV)", lambda: render(transparency(log, "2017"), "csv"))
    result = {
        "benchmark": "audit_reports",
        "records": args.records,
        "fill_s": round(fill_s, 1),
        "verify_s": round(verify_s, 1),
        "trail_quarter_s": round(trail_s, 1),
        "append_ms": round(plain_ms, 2),
        "append_signed_ms": round(signed_ms, 2),
        "inclusion_hashes": len(path),
        "inclusion_s": round(incl_s, 2),
        "consistency_hashes": len(cons),
        "consistency_s": round(cons_s, 2),
        "trail_rows": trail.count("\n") - 6,
        "transparency_year_s": round(transp_s, 1),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with (out / "audit.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
