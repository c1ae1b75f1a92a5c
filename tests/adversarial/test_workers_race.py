"""The budget raced across `serve --workers 2` on one SQLite store: the workers share nothing
but the store, as replicas do, and the store alone keeps the budget (docs/deployment.md,
"Workers")."""

from __future__ import annotations

import subprocess
from fractions import Fraction

from tests.adversarial.test_replicas import _dp_query
from tests.replicas import assert_spent_exactly, race
from tests.workers import BIN, until


def test_a_budget_raced_by_40_clients_across_two_workers_is_spent_exactly(serve):
    s = serve(2)
    until(lambda: len(s.started()) == 2, what="two workers started")
    subprocess.run([str(BIN), "budget", "set", "pat", "1"], env=s.env, check=True, capture_output=True)
    statuses = race(s.base, s.token, 40, lambda i: _dp_query(i, "1/10"))
    assert sorted(statuses) == [200] * 10 + [403] * 30  # what a budget of 1 holds; no error
    assert_spent_exactly(s.store, "pat", released=10, refused=30, spent=Fraction(1))
