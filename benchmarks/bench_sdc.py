"""Disclosure-control timings.

    python benchmarks/bench_sdc.py [--data DIR]

1. Secondary suppression on a 152 LAs x 20 categories table with margins, and on a three-level
   hierarchy (region > LA > school phase) with its subtotals: the Gaussian elimination alone,
   the full protection loop (elimination + the attacker audit the service runs, with its fast
   paths), and the exact audit (two plain HiGHS LPs per hidden cell) for comparison.
2. End to end through the service on a census (default: the committed sample): a one-way LA
   table after a two-way LA x FSM table (the cross-table rule), and a dominance-checked sum.

Appends JSON lines to benchmarks/results/sdc.jsonl.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from safestats.disclosure.linked_audit import protect_linked
from safestats.disclosure.secondary import secondary_suppression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the exact LP oracle lives with the tests
from tests.oracles import attacker_intervals  # noqa: E402

THRESHOLD = 10


def two_way(rows: int, cols: int, rng: np.random.Generator):
    t = rng.negative_binomial(1, 0.02, size=(rows, cols))
    n = rows * cols
    columns = [frozenset([k]) for k in range(n)]
    columns += [frozenset(r * cols + c for c in range(cols)) for r in range(rows)]
    columns += [frozenset(r * cols + c for r in range(rows)) for c in range(cols)]
    columns.append(frozenset(range(n)))
    values = t.ravel().tolist() + t.sum(axis=1).tolist() + t.sum(axis=0).tolist() + [int(t.sum())]
    return columns, [int(v) for v in values], n


def hierarchy(rng: np.random.Generator):
    """9 regions > 152 LAs > 4 phases: inner cells LA x phase; subtotals per LA, region, region x
    phase, phase and the grand total."""
    las = 152
    region_of = [i % 9 for i in range(las)]
    t = rng.negative_binomial(1, 0.01, size=(las, 4))
    n = las * 4
    columns = [frozenset([k]) for k in range(n)]
    values = t.ravel().tolist()
    groups = [frozenset(la * 4 + p for p in range(4)) for la in range(las)]  # LA totals
    groups += [frozenset(la * 4 + p for la in range(las) if region_of[la] == g for p in range(4)) for g in range(9)]
    groups += [frozenset(la * 4 + p for la in range(las) if region_of[la] == g) for g in range(9) for p in range(4)]
    groups += [frozenset(la * 4 + p for la in range(las)) for p in range(4)]
    groups.append(frozenset(range(n)))
    for g in groups:
        columns.append(g)
        values.append(int(sum(values[i] for i in g)))
    return columns, [int(v) for v in values], n


def run(name: str, columns, values, n) -> dict:
    primary = {k for k in range(n) if values[k] < THRESHOLD}
    order = sorted(range(len(columns)), key=lambda j: (j < n, -values[j], j))
    t = time.perf_counter()
    hidden = secondary_suppression(columns, primary, order)
    secondary_s = time.perf_counter() - t
    t = time.perf_counter()
    attacker_intervals(columns, values, hidden, n)
    audit_s = time.perf_counter() - t
    t = time.perf_counter()
    protected, _ = protect_linked(
        columns,
        values,
        primary=primary,
        candidates=[j for j in order if j not in primary],
        forced=set(),
        kept_hidden=set(),
        widths=dict.fromkeys(primary, float(THRESHOLD)),
        atom_values=np.array(values[:n], dtype=float),
    )
    protect_s = time.perf_counter() - t
    result = {
        "benchmark": "sdc_secondary",
        "table": name,
        "inner_cells": n,
        "publishable": len(columns),
        "primary": len(primary),
        "hidden": len(hidden),
        "secondary_s": round(secondary_s, 3),
        "exact_audit_s": round(audit_s, 2),
        "protect_with_audit_s": round(protect_s, 2),
        "hidden_after_audit": len(protected),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    return result


def service_runs(data: str) -> list[dict]:
    """Through the service: the cross-table rule and a dominance-checked sum."""
    import tempfile

    import safestats as ss

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        s = ss.connect(
            user="demo.statistician",
            data_dir=data,
            environ={},
            store_url=f"sqlite:///{tmp}/s.db",
            output_checking_dir=f"{tmp}/outputs",
        )
        term = s.table("PupilOnRoll").group_by("term").count().run()["term"].iloc[-1]
        steps = [
            (
                "LA x FSM counts (first table)",
                lambda: s.table("PupilOnRoll").where(term=term).group_by("la_code", "fsm_eligible").count().run(),
            ),
            (
                "LA counts after LA x FSM (cross-table rule)",
                lambda: s.table("PupilOnRoll").where(term=term).group_by("la_code").count().run(),
            ),
            (
                "LA x sex sum of sessions attended (dominance rules)",
                lambda: (
                    s.table("PupilOnRoll").where(term=term).group_by("la_code", "sex").sum("sessions_attended").run()
                ),
            ),
        ]
        for name, step in steps:
            t = time.perf_counter()
            r = step()
            result = {
                "benchmark": "sdc_service",
                "step": name,
                "data": data,
                "cells": len(r),
                "suppressed": int(r.suppressed),
                "seconds": round(time.perf_counter() - t, 2),
                "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
            }
            print(json.dumps(result))
            out.append(result)
    return out


def main() -> None:
    import argparse

    from safestats.config import project_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(project_root() / "data" / "synthetic" / "sample"))
    args = parser.parse_args()
    rng = np.random.default_rng(2017)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with (out / "sdc.jsonl").open("a") as f:
        for name, table in (
            ("152 LAs x 20 categories + margins", two_way(152, 20, rng)),
            ("region > LA > phase hierarchy", hierarchy(rng)),
        ):
            f.write(json.dumps(run(name, *table)) + "\n")
        for result in service_runs(args.data):
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
