"""The budget raced across `serve --workers 2` on one SQLite store: the workers share nothing
but the store, as replicas do, and the store alone keeps the budget (docs/deployment.md,
"Workers")."""

from __future__ import annotations

import subprocess
import threading
from fractions import Fraction

import httpx

from safestats.audit.log import AuditLog
from safestats.store.schema import spend_table
from tests.adversarial.test_replicas import _dp_query
from tests.workers import BIN, until


def test_a_budget_raced_by_40_clients_across_two_workers_is_spent_exactly(serve):
    s = serve(2)
    until(lambda: len(s.started()) == 2, what="two workers started")
    subprocess.run([str(BIN), "budget", "set", "pat", "1"], env=s.env, check=True, capture_output=True)
    statuses: list[int] = []
    barrier = threading.Barrier(40)
    auth = {"Authorization": f"Bearer {s.token}"}

    def fire(i: int) -> None:
        with httpx.Client(base_url=s.base, headers=auth, timeout=120) as c:
            barrier.wait()
            statuses.append(c.post("/v1/query", json=_dp_query(i, "1/10")).status_code)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 10 + [403] * 30  # what a budget of 1 holds; no error
    log = AuditLog.open(s.store)
    assert log.verify().ok
    seqs = [r["seq"] for r in log.records()]
    assert seqs == list(range(1, len(seqs) + 1))  # one sequence across both workers
    mine = [r for r in log.records() if r["user"] == "pat" and r["operation"] == "query"]
    assert sorted(r["outcome"] for r in mine) == ["refused"] * 30 + ["released"] * 10
    with log.engine.connect() as conn:
        spends = [x for x in conn.execute(spend_table.select()).mappings() if x["user"] == "pat"]
    assert sum(Fraction(x["amount"]) for x in spends if x["status"] == "committed") == 1
    assert not [x for x in spends if x["status"] == "reserved"]
