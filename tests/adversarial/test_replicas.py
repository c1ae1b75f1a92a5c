"""Several service processes behind nginx on one PostgreSQL store give the guarantees of one.

Two `safestats serve` replicas, round robin behind nginx (Debian's package), share one
PostgreSQL store and one set of keys. Through the balancer: a budget raced by 100 clients is
spent exactly; both halves of a differencing tracker, asked at the same moment and served by
different replicas, are still protected one in view of the other (the domain lock is the
store's); the audit log stays one gap-free verifiable sequence; and a replica killed with
SIGKILL in the middle of a stream loses no answered release and overspends nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from fractions import Fraction

import httpx
import pytest

import safestats as ss
from safestats.audit.log import AuditLog
from safestats.config import Settings
from safestats.query.model import Aggregate, Filter, Query
from safestats.service.pipeline import Service
from safestats.store.ledger import spend_table
from tests.adversarial.judge import SPRING, assert_not_disclosed, recovered
from tests.factors import second_factor_session
from tests.replicas import NGINX, Cluster, assert_spent_exactly, race

pytestmark = [pytest.mark.slow, pytest.mark.skipif(NGINX is None, reason="needs nginx (.ci/run installs it)")]

HOOK = """
import os, time
if os.environ.get("SAFESTATS_TEST_SLOW_EARLIER"):  # widen the race: read what was published, then dawdle
    from safestats.disclosure.linked import LinkStore
    _earlier = LinkStore.earlier
    def earlier(self, *a, **k):
        found = _earlier(self, *a, **k)
        time.sleep(float(os.environ["SAFESTATS_TEST_SLOW_EARLIER"]))
        return found
    LinkStore.earlier = earlier
"""


@pytest.fixture
def cluster(pg_cluster, sample_dir, tmp_path):
    store = pg_cluster.new_database()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    settings = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": store,
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "keys" / "secret.key"),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
        "SAFESTATS_OUTPUT_CHECKING_DIR": str(tmp_path / "outputs"),
        "SAFESTATS_RATE_LIMIT": "100000",
    }
    owner = Service(Settings.load(settings))  # the data owner's set-up, before the replicas start
    tokens = {}
    for user, group, org in (
        ("racer", "I_STORE_SC_USERS", "DfE"),
        ("streamer", "I_STORE_SC_USERS", "DfE"),
        ("stat.one", "SC_OFFICIAL_STATISTICS", "ONS"),
        ("stat.two", "SC_OFFICIAL_STATISTICS", "ONS"),
    ):
        owner.users.add_user(user, groups=[group], organisation=org)
        tokens[user] = owner.users.issue_token(user)
    for user in ("stat.one", "stat.two"):  # the tracker asks for ethnicity (IL3): they hold sessions
        tokens[user] = second_factor_session(owner, user)
    owner.set_budget("racer", Fraction(1))
    owner.set_budget("streamer", Fraction(1000))
    env = {**os.environ, **settings, "PYTHONPATH": str(hook), "SAFESTATS_TEST_SLOW_EARLIER": "0.5"}
    c = Cluster(tmp_path, env, replicas=2)
    c.tokens, c.store = tokens, store
    try:
        yield c
    finally:
        c.stop()


def _dp_query(i: int, epsilon: str) -> dict:
    """Query ``i`` of a family of distinct dp counts (distinct, so no repeat comes from the cache)."""
    pairs = [(a, b) for a in range(4, 19) for b in range(a + 1, 19)]
    low, high = pairs[i % len(pairs)]
    q = Query(
        "PupilOnRoll",
        (Aggregate("count"),),
        ("phase",),
        (Filter("age", ">=", low), Filter("age", "<=", high), Filter("term", "==", SPRING)),
        epsilon=epsilon,
    )
    return {"query": q.to_wire()}


def test_a_budget_raced_by_100_clients_across_replicas_is_spent_exactly(cluster):
    statuses = race(cluster.url, cluster.tokens["racer"], 100, lambda i: _dp_query(i, "1/10"))
    assert sorted(statuses) == [200] * 10 + [403] * 90, cluster.failures()  # what a budget of 1 holds; no error
    assert cluster.metric(0, "query") > 0 and cluster.metric(1, "query") > 0  # both replicas served
    assert_spent_exactly(cluster.store, "racer", released=10, refused=90, spent=Fraction(1))


def test_a_tracker_split_across_two_replicas_is_still_protected(cluster, census, target):
    """Both halves of a tracker at the same moment, one user each, served by the two replicas
    (the replicas dawdle between reading the published structure and protecting)."""
    where = {"term": SPRING, "school_urn": target["school_urn"], "nc_year": target["nc_year"]}
    barrier = threading.Barrier(2)
    found: dict[str, float | None] = {}

    queries = {}
    for user, other in (("stat.one", None), ("stat.two", target["ethnicity"])):
        filters = dict(where)
        if other is not None:
            filters["ethnicity"] = ss.not_equal(other)
        s = ss.connect(cluster.url, token=cluster.tokens[user], environ={})
        queries[user] = s.table("PupilOnRoll").where(**filters).count()
    before = [cluster.metric(i, "query") for i in range(2)]

    def ask(user: str) -> None:
        barrier.wait()  # the two POSTs reach nginx together: round robin sends them to both replicas
        try:
            r = queries[user].run()
            found[user] = None if r["count"].isna().iloc[0] else float(r["count"].iloc[0])
        except ss.DisclosureRefused:
            found[user] = None

    threads = [
        threading.Thread(target=ask, args=("stat.one",)),
        threading.Thread(target=ask, args=("stat.two",)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = [cluster.metric(i, "query") - before[i] for i in range(2)]
    assert served == [1, 1], f"the two halves were not served by different replicas: {served}"
    assert_not_disclosed(
        recovered([(1, found["stat.one"]), (-1, found["stat.two"])]),
        census.count(**where, ethnicity=target["ethnicity"]),
        pupils=target["pupils"],
        what="a tracker split across two replicas behind a load balancer",
    )
    assert (found["stat.one"] is None) != (found["stat.two"] is None)  # one published, one protected


def test_killing_one_replica_mid_stream_loses_nothing(cluster):
    auth = {"Authorization": f"Bearer {cluster.tokens['streamer']}"}
    answered: list[int] = []
    failed: list[int] = []
    stop = threading.Event()

    def stream(offset: int) -> None:
        with httpx.Client(base_url=cluster.url, headers=auth, timeout=60) as c:
            i = offset
            while not stop.is_set():
                try:
                    r = c.post("/v1/query", json=_dp_query(i, f"1/{100 + i}"))
                except httpx.HTTPError:
                    failed.append(0)
                else:
                    if r.status_code == 200:
                        answered.append(r.json()["meta"]["audit_id"])
                    else:
                        failed.append(r.status_code)
                i += 4

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    cluster.procs[0].send_signal(signal.SIGKILL)  # no chance to clean up
    cluster.procs[0].wait()
    killed_at = len(answered)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    assert killed_at > 0 and len(answered) > killed_at  # the stream went on through the other replica
    assert all(code in (0, 502, 503) for code in failed), (failed, cluster.failures())  # only cut-off requests
    assert len(failed) <= 4  # at most one in flight per client when the replica died
    log = AuditLog.open(cluster.store)
    assert log.verify().ok
    records = list(log.records())
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    released = {r["seq"]: r for r in records if r["outcome"] == "released"}
    assert set(answered) <= set(released)  # every answer a client saw has its record
    with log.engine.connect() as conn:
        spends = [s for s in conn.execute(spend_table.select()).mappings() if s["user"] == "streamer"]
    committed = [s for s in spends if s["status"] == "committed"]
    assert all(s["audit_seq"] in released for s in committed)  # no charge without its release record
    charged = sum(Fraction(s["amount"]) for s in spends if s["status"] != "cancelled")
    paid = sum(Fraction(r["privacy"]["spent"]) for r in released.values() if r["user"] == "streamer")
    assert paid <= charged <= paid + len(failed) * Fraction(1, 100)  # a draw cut off stays charged
