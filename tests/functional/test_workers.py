"""`safestats serve --workers N` and the request threads: several processes on one port, each
replaced if it dies, all stopped by one signal or by their parent's death; at most
`request_threads` requests at work in a process, liveness never queued behind them."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from safestats.audit.log import AuditLog
from safestats.query.model import Aggregate, Query
from safestats.service.app import create_app
from tests.workers import alive, until


def _count(epsilon: str) -> dict:
    return {"query": Query("PupilOnRoll", (Aggregate("count"),), ("phase",), epsilon=epsilon).to_wire()}


def test_two_workers_share_the_port_a_killed_one_is_replaced_and_sigterm_stops_both(serve):
    s = serve(2)
    until(lambda: len(s.started()) == 2, what="two workers started")
    first = {x["worker"]: x["pid"] for x in s.started()}
    assert sorted(first) == [0, 1] and len(set(first.values())) == 2 and s.proc.pid not in first.values()
    answers = [s.ask(f"1/{10 + i}") for i in range(6)]
    assert [r.status_code for r in answers] == [200] * 6
    os.kill(first[0], signal.SIGKILL)  # a worker dies while serving: it is started again
    until(lambda: len(s.started()) == 3, what="the killed worker started again")
    again = s.started()[-1]
    assert again["worker"] == 0 and again["pid"] not in first.values()
    assert any(x["message"] == "worker exited; starting it again" and x["exit"] == "signal 9" for x in s.lines())
    more = [s.ask(f"1/{20 + i}") for i in range(6)]
    assert [r.status_code for r in more] == [200] * 6
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=30) == -signal.SIGTERM  # exits by the signal, as one process does
    until(lambda: not alive(first[1]) and not alive(again["pid"]), what="both workers stopped")
    assert sum(x["message"] == "stopped" for x in s.lines()) == 2
    log = AuditLog.open(s.store)
    assert log.verify().ok
    released = [r["seq"] for r in log.records() if r["operation"] == "query" and r["outcome"] == "released"]
    assert sorted(r.json()["meta"]["audit_id"] for r in answers + more) == released  # one sequence, no gap


def test_a_ctrl_c_at_the_terminal_stops_the_workers_gracefully(serve):
    """SIGINT to the whole process group (a Ctrl-C) reaches the parent alone, which passes it on
    once: each worker finishes and logs `stopped` (a second SIGINT would make uvicorn drop the
    requests in flight), and the parent exits by the signal."""
    s = serve(2)
    until(lambda: len(s.started()) == 2, what="two workers started")
    pids = [x["pid"] for x in s.started()]
    assert all(os.getpgid(p) != os.getpgid(s.proc.pid) for p in pids)
    os.killpg(os.getpgid(s.proc.pid), signal.SIGINT)
    assert s.proc.wait(timeout=30) == -signal.SIGINT
    until(lambda: not any(alive(p) for p in pids), what="both workers stopped")
    assert sorted(x["pid"] for x in s.lines() if x["message"] == "stopped") == sorted(pids)


def test_workers_stop_when_their_parent_is_killed(serve):
    s = serve(2)
    until(lambda: len(s.started()) == 2, what="two workers started")
    pids = [x["pid"] for x in s.started()]
    s.proc.send_signal(signal.SIGKILL)  # no chance to pass anything on
    s.proc.wait()
    until(lambda: not any(alive(p) for p in pids), seconds=30, what="the orphaned workers stopped")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{s.base}/v1/health", timeout=2)


def test_a_worker_that_cannot_start_stops_serve_with_one_error(serve, tmp_path):
    s = serve(2, user=False, SAFESTATS_DATA_DIR=str(tmp_path / "no-census-here"))
    assert s.proc.wait(timeout=60) != 0
    text = s.log_path.read_text()
    assert "no-census-here" in text  # the worker's own error, one line
    assert text.rstrip().endswith("a worker failed at its start (its error is above); nothing is served")
    assert "Traceback" not in text
    assert not [x for x in s.lines() if x["message"] == "started"]


def test_a_certificate_the_workers_cannot_load_is_a_failed_start_not_a_restart_loop(serve, tmp_path):
    """The workers open the census and the store, then uvicorn cannot load the certificate: that
    is a failed start too (a worker is ready only once uvicorn serves), so `serve` stops."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    s = serve(2, SAFESTATS_TLS_CERT=str(bad), SAFESTATS_TLS_KEY=str(bad))
    assert s.proc.wait(timeout=60) == 5
    text = s.log_path.read_text()
    assert "SSLError" in text and "worker exited; starting it again" not in text
    assert text.rstrip().endswith("a worker failed at its start (its error is above); nothing is served")


def test_at_most_request_threads_requests_work_at_once_and_liveness_never_waits(olive_service):
    service, auth = olive_service(request_threads=2)
    working, most, lock = [0], [0], threading.Lock()
    release = threading.Event()
    real = service.handle

    def slow(*args, **kwargs):
        with lock:
            working[0] += 1
            most[0] = max(most[0], working[0])
        try:
            release.wait(30)
            return real(*args, **kwargs)
        finally:
            with lock:
                working[0] -= 1

    service.handle = slow  # type: ignore[method-assign]
    with TestClient(create_app(service)) as client:  # with: the lifespan sets the threads
        statuses: list[int] = []
        threads = [
            threading.Thread(
                target=lambda i=i: statuses.append(
                    client.post("/v1/query", json=_count(f"1/{30 + i}"), headers=auth).status_code
                )
            )
            for i in range(6)
        ]
        for t in threads:
            t.start()
        until(lambda: working[0] == 2, seconds=10, what="two requests at work")
        time.sleep(0.3)  # the other four are waiting, not working
        assert working[0] == 2
        started = time.perf_counter()
        assert client.get("/v1/health").status_code == 200  # not queued behind them
        assert time.perf_counter() - started < 2
        release.set()
        for t in threads:
            t.join(60)
    assert statuses == [200] * 6 and most[0] == 2
