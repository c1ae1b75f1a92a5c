"""DP queries through the whole safe path against plain DuckDB, and the contribution bound's cost.

    python benchmarks/bench_bound.py --data /tmp/national [--rounds 5]

For each query (issue 19's table): plain DuckDB over the same Parquet files; the engine step
alone with the bound as a window over every row, and with the window over the pupils with
several rows in the term only (the per-relation table the engine builds once — its build time
is reported); and the whole safe path through an embedded session (a fresh release each time:
a different ε, so the cache never answers). Rounds are interleaved; medians; ratios to plain
DuckDB in the same round. Appends JSON lines to benchmarks/results/bound.jsonl.
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

import duckdb

import safestats as ss
from safestats.access.policy import Disclosure
from safestats.catalog import load_catalog
from safestats.dataset import open_dataset
from safestats.disclosure.dp import plan_dp
from safestats.engines.compile import multi_key
from safestats.engines.duckdb import DuckDBEngine
from safestats.query.model import Aggregate, Filter, Query
from safestats.query.validate import plan_query

TERM = "2017-spring"
SPRING = (Filter("term", "==", TERM),)
QUERIES = {
    "count by LA x nationality (join)": (
        Query("PupilOnRoll", (Aggregate("count_pupils"),), ("la_code", "nationality"), SPRING, join="Nationality"),
        "SELECT p.la_code, n.nationality, count(DISTINCT p.pupil_id) FROM pupils p JOIN nat n USING (pupil_id, term) "
        f"WHERE p.term = '{TERM}' GROUP BY ALL",
        lambda s: s.table("PupilOnRoll").join("Nationality").where(term=TERM).group_by("la_code", "nationality"),
        "count_pupils",
    ),
    "count by LA x phase x FSM": (
        Query("PupilOnRoll", (Aggregate("count"),), ("la_code", "phase", "fsm_eligible"), SPRING),
        f"SELECT la_code, phase, fsm_eligible, count(*) FROM pupils WHERE term = '{TERM}' GROUP BY ALL",
        lambda s: s.table("PupilOnRoll").where(term=TERM).group_by("la_code", "phase", "fsm_eligible"),
        "count",
    ),
    "mean attendance by LA": (
        Query("PupilOnRoll", (Aggregate("mean", "sessions_attended"),), ("la_code",), SPRING),
        f"SELECT la_code, avg(least(greatest(sessions_attended, 0), 400)) FROM pupils WHERE term = '{TERM}' "
        "GROUP BY ALL",
        lambda s: s.table("PupilOnRoll").where(term=TERM).group_by("la_code"),
        "mean",
    ),
    "count by phase": (
        Query("PupilOnRoll", (Aggregate("count"),), ("phase",), SPRING),
        f"SELECT phase, count(*) FROM pupils WHERE term = '{TERM}' GROUP BY ALL",
        lambda s: s.table("PupilOnRoll").where(term=TERM).group_by("phase"),
        "count",
    ),
}


def dp_plans(queries, catalog) -> dict:
    """The dp plan of each query (ε = 1, up to 100,000 cells): what the engine step runs."""
    return {
        name: plan_dp(
            plan_query(q, catalog=catalog, max_cells=100_000),
            Disclosure(mode="dp", per_query=Fraction(1)),
            max_cells=100_000,
        ).plan
        for name, q in queries.items()
    }


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    d = args.data
    plain = duckdb.connect()
    plain.execute(f"CREATE VIEW pupils AS SELECT * FROM read_parquet('{d}/PupilOnRoll.parquet')")
    plain.execute(f"CREATE VIEW nat AS SELECT * FROM read_parquet('{d}/Nationality.parquet')")
    ds, catalog = open_dataset(d), load_catalog(data_dir=d)
    engine, windowed = DuckDBEngine(ds), DuckDBEngine(ds, term_index=False)
    plans = dp_plans({name: q for name, (q, *_rest) in QUERIES.items()}, catalog)
    builds = {}
    for plan in plans.values():  # the per-relation tables, built once (the first query pays)
        if multi_key(plan) not in engine._tables:
            builds[multi_key(plan)] = timed(lambda plan=plan: engine._prepare(plan))
    store = tempfile.mkdtemp(prefix="safestats-bench-")
    session = ss.connect(
        user="demo.unrestricted", data_dir=str(d), environ={}, store_url=f"sqlite:///{store}/s.db", max_cells=100_000
    )
    session._transport._service.set_budget("demo.unrestricted", Fraction(10**6))
    rows: dict[str, dict[str, list[float]]] = {n: {"plain": [], "window": [], "multi": [], "safe": []} for n in QUERIES}
    counter = iter(range(10**6))
    for _ in range(args.rounds + 1):  # the first round warms caches and is dropped
        for name, (_q, sql, build, kind) in QUERIES.items():
            plan = plans[name]
            rows[name]["plain"].append(timed(lambda sql=sql: plain.execute(sql).fetchall()))
            rows[name]["window"].append(timed(lambda plan=plan: windowed.execute(plan)))
            rows[name]["multi"].append(timed(lambda plan=plan: engine.execute(plan)))
            eps = f"1/{1000 + next(counter)}"

            def safe(build=build, kind=kind, eps=eps) -> None:
                q = build(session)
                q = (
                    q.count_pupils()
                    if kind == "count_pupils"
                    else q.count()
                    if kind == "count"
                    else q.mean("sessions_attended")
                )
                q.epsilon(eps).run()

            rows[name]["safe"].append(timed(safe))
    names = {k: k.split("|")[0] + (" + " + k.split("|")[1] if k.split("|")[1] else "") for k in builds}
    print("built once: " + ", ".join(f"{names[k]} {v:.2f} s" for k, v in builds.items()))
    print(f"{'query':<34} {'plain':>7} {'window':>7} {'bound':>7} {'safe':>7} {'ratio':>6}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    for name, r in rows.items():
        med = {k: statistics.median(v[1:]) for k, v in r.items()}
        ratio = statistics.median(s / p for s, p in zip(r["safe"][1:], r["plain"][1:], strict=True))
        print(
            f"{name:<34} {med['plain']:>7.3f} {med['window']:>7.3f} {med['multi']:>7.3f} {med['safe']:>7.3f} "
            f"{ratio:>6.2f}"
        )
        with (out / "bound.jsonl").open("a") as f:
            row = {"benchmark": "bound", "query": name, **{k: round(v, 4) for k, v in med.items()}}
            row |= {"ratio": round(ratio, 3), "data": str(d), "machine": platform.machine()}
            row["date"] = time.strftime("%Y-%m-%d")
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
