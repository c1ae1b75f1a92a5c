"""Faults: a service killed in the middle of a stream of queries, and a store that goes away."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from safestats.audit.log import AuditLog
from safestats.config import Settings
from safestats.query.model import Aggregate, Filter, Query
from safestats.service.app import create_app
from safestats.service.pipeline import Service
from safestats.store.cache import cache_table
from safestats.store.ledger import spend_table

BIN = Path(sys.executable).parent / "safestats"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=0.5)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the service did not start")


def _query(i: int) -> dict:
    q = Query(
        "PupilOnRoll", (Aggregate("count"),), ("phase",), (Filter("age", "==", 4 + i % 15),), epsilon=f"1/{100 + i}"
    )
    return {"query": q.to_wire()}


def test_killing_the_service_mid_stream_loses_nothing(sample_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = {**os.environ, "SAFESTATS_DATA_DIR": str(sample_dir), "SAFESTATS_STORE_URL": store}
    token = subprocess.run(
        [str(BIN), "users", "add", "carol", "--group", "I_STORE_SC_USERS", "--org", "DfE"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = _free_port()
    proc = _serve(env, port)
    answered: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    r = c.post("/v1/query", json=_query(i), timeout=5)
                    if r.status_code == 200:
                        answered.append(r.json()["meta"]["audit_id"])
                except httpx.HTTPError:
                    return

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    stop.set()
    thread.join()
    assert answered, "the stream never got going"

    proc = _serve(env, port)  # restart on the same store
    try:
        log = AuditLog.open(store)
        assert log.verify().ok
        released = {r["seq"]: r for r in log.records() if r["outcome"] == "released"}
        assert set(answered) <= set(released)  # every answer the client saw has its record
        with log.engine.connect() as conn:
            cached = conn.execute(cache_table.select()).mappings().all()
            spends = conn.execute(spend_table.select()).mappings().all()
        assert all(c["audit_seq"] in released for c in cached)  # no release without its record
        committed = [s for s in spends if s["status"] == "committed"]
        assert all(s["audit_seq"] in released for s in committed)
        # budgets are consistent: every released draw is charged; a draw cut off by the kill
        # stays reserved, and so counted as spent (never refunded on a guess)
        charged = sum(Fraction(s["amount"]) for s in spends if s["status"] != "cancelled")
        paid = sum(Fraction(r["privacy"]["spent"]) for r in released.values())
        assert charged >= paid
        assert charged - paid <= Fraction(1, 100)  # at most the one query in flight
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.post("/v1/query", json=_query(99_999)).status_code == 200
    finally:
        proc.kill()
        proc.wait()


def test_a_store_that_goes_away_fails_closed_and_recovers(sample_dir, pg_cluster):
    url = pg_cluster.new_database()
    service = Service(Settings.load({}, data_dir=sample_dir, store_url=url))
    service.users.add_user("dave", groups=["I_STORE_SC_USERS"], organisation="DfE")
    token = service.users.issue_token("dave")
    client = TestClient(create_app(service))
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/query", json=_query(1), headers=auth).status_code == 200
    pg_cluster.stop()
    try:
        r = client.post("/v1/query", json=_query(2), headers=auth)
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "AuditFailure" and "meta" not in r.json()
    finally:
        pg_cluster.start()
    r = client.post("/v1/query", json=_query(3), headers=auth)
    assert r.status_code == 200
    assert service.audit.verify().ok
