"""Operations: readiness, metrics, JSON logs, graceful shutdown and `safestats doctor`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from safestats.audit.log import AuditLog
from safestats.cli import main
from safestats.config import Settings
from safestats.query.model import Aggregate, Query
from safestats.service.app import create_app
from safestats.service.pipeline import Service

BIN = Path(sys.executable).parent / "safestats"


def _count(phase_epsilon: str = "1/4") -> dict:
    return {"query": Query("PupilOnRoll", (Aggregate("count"),), ("phase",), epsilon=phase_epsilon).to_wire()}


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


@pytest.fixture
def ops_app(olive_service):
    service, auth = olive_service()
    return service, TestClient(create_app(service)), auth


def test_ready_reports_each_dependency_and_fails_when_one_goes(sample_dir, tmp_path):
    census = tmp_path / "census"
    shutil.copytree(sample_dir, census)
    service = Service(Settings.load({}, data_dir=census, store_url=f"sqlite:///{tmp_path / 's.db'}"))
    client = TestClient(create_app(service))
    r = client.get("/v1/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"store": "ok", "census": "ok", "engine": "ok"}}
    (census / "PupilOnRoll.parquet").unlink()  # the census goes: not ready, and it says which part
    r = client.get("/v1/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["census"] == "1 file(s) missing"
    service.engine.close()  # type: ignore[attr-defined]
    assert client.get("/v1/ready").json()["checks"]["engine"] == "not answering"
    assert client.get("/v1/health").status_code == 200  # alive, though not ready


def test_metrics_count_requests_refusals_budget_and_audit_appends(ops_app):
    service, client, auth = ops_app
    assert client.post("/v1/query", json=_count("1/4"), headers=auth).status_code == 200
    assert client.post("/v1/query", json=_count("1/8"), headers=auth).status_code == 200
    restricted = {"sql": "SELECT nationality, COUNT(*) FROM Nationality GROUP BY nationality"}
    assert client.post("/v1/sql", json=restricted, headers=auth).status_code == 403
    assert client.get("/v1/whoami", headers={"Authorization": "Bearer nope"}).status_code == 401
    text = client.get("/v1/metrics").text
    assert _metric(text, "safestats_requests_total", route="query", status="200") == 2
    assert _metric(text, "safestats_requests_total", route="sql", status="403") == 1
    assert _metric(text, "safestats_requests_total", route="whoami", status="401") == 1
    assert _metric(text, "safestats_refusals_total", error="AccessDenied") == 1
    assert _metric(text, "safestats_refusals_total", error="AuthError") == 1
    assert _metric(text, "safestats_budget_spent_total", unit="epsilon") == pytest.approx(float(Fraction(3, 8)))
    released = [r for r in AuditLog(service.audit.engine).records() if r["outcome"] == "released"]
    assert _metric(text, "safestats_audit_records_total", operation="query", outcome="released") == len(released)
    appended = sum(1 for _ in AuditLog(service.audit.engine).records())
    assert _metric(text, "safestats_audit_append_seconds_count") == appended
    assert _metric(text, "safestats_request_seconds_count", route="query") == 2
    # a repeat answered from the cache spends nothing, and the metric says so
    assert client.post("/v1/query", json=_count("1/4"), headers=auth).status_code == 200
    again = client.get("/v1/metrics").text
    assert _metric(again, "safestats_budget_spent_total", unit="epsilon") == pytest.approx(0.375)
    # no user names, no tokens, no census values in what a scraper sees
    assert "olive" not in again and auth["Authorization"][7:] not in again


def test_a_failure_is_logged_with_its_type_and_frames_but_not_its_message(ops_app, caplog):
    service, _, auth = ops_app
    client = TestClient(create_app(service), raise_server_exceptions=False)
    secret = "pupil A123456789012 attends 7 days"

    def broken_engine(*args, **kwargs):
        raise RuntimeError(secret)

    def broken_handler(*args, **kwargs):
        raise KeyError(secret)

    caplog.set_level("INFO", logger="safestats.http")
    service.engine.execute = broken_engine  # a failure inside the pipeline: audited, then a ServiceError
    inside = client.post("/v1/query", json=_count(), headers={**auth, "X-Request-Id": "inside-1"})
    service.handle = broken_handler  # a failure outside it: the catch-all handler
    outside = client.post("/v1/query", json=_count(), headers={**auth, "X-Request-Id": "outside-1"})
    assert (inside.status_code, inside.json()["error"]["type"]) == (500, "ServiceError")
    assert (outside.status_code, outside.json()["error"]["type"]) == (500, "KeyError")
    assert secret not in inside.text + outside.text
    failed = {r.fields["request_id"]: r.fields for r in caplog.records if r.getMessage() == "failed"}
    assert set(failed) == {"inside-1", "outside-1"}
    assert failed["inside-1"]["error"] == "ServiceError" and failed["inside-1"]["status"] == 500
    cause, raised = failed["inside-1"]["frames"]  # the engine's error first, then the one it became
    assert cause.startswith("RuntimeError at ") and cause.endswith(
        f"test_operations.py:{broken_engine.__code__.co_firstlineno + 1} broken_engine"
    )
    assert raised.startswith("ServiceError at ") and "pipeline.py:" in raised
    assert failed["outside-1"]["error"] == "KeyError" and "broken_handler" in failed["outside-1"]["frames"][-1]
    assert all(f["route"] == "query" for f in failed.values())
    assert secret not in caplog.text + json.dumps([r.__dict__.get("fields") for r in caplog.records], default=str)
    errors = [r for r in AuditLog(service.audit.engine).records() if r["outcome"] == "error"]
    assert len(errors) == 1 and secret not in json.dumps(errors[0], default=str)


def test_metrics_ask_for_their_token_when_one_is_configured(sample_dir, tmp_path):
    token_file = tmp_path / "metrics.token"
    token_file.write_text("s3cret-scrape\n")
    settings = Settings.load(
        {}, data_dir=sample_dir, store_url=f"sqlite:///{tmp_path / 's.db'}", metrics_token_file=str(token_file)
    )
    client = TestClient(create_app(Service(settings)))
    assert client.get("/v1/metrics").status_code == 401
    assert client.get("/v1/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/v1/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
    assert r.status_code == 200 and "safestats_requests_total" in r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW_ENGINE = """
import os, time
from safestats.engines import duckdb as _d
_execute = _d.DuckDBEngine.execute
def execute(self, plan):
    time.sleep(float(os.environ["SAFESTATS_TEST_SLOW_S"]))
    return _execute(self, plan)
_d.DuckDBEngine.execute = execute
"""


def test_serve_logs_json_and_finishes_a_release_in_flight_on_sigterm(sample_dir, tmp_path):
    """SIGTERM while a release is being computed: the release completes and is answered, its
    audit record is written, the process exits by the signal, and every log line is one JSON object."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_ENGINE)  # a slow engine, for a request surely in flight
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = {
        **os.environ,
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": store,
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "key"),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
    }
    token = subprocess.run(
        [str(BIN), "users", "add", "pat", "--group", "I_STORE_SC_USERS", "--org", "DfE"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = _free_port()
    served = {**env, "PYTHONPATH": str(hook), "SAFESTATS_TEST_SLOW_S": "2"}
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        env=served,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/v1/ready", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        answer: dict = {}

        def ask() -> None:
            r = httpx.post(f"{base}/v1/query", json=_count(), headers={"Authorization": f"Bearer {token}"}, timeout=30)
            answer.update(status=r.status_code, body=r.json())

        thread = threading.Thread(target=ask)
        thread.start()
        for _ in range(200):  # wait until the service itself says the release is in flight
            if _metric(httpx.get(f"{base}/v1/metrics").text, "safestats_requests_in_flight") >= 2:  # it, and this
                break
            time.sleep(0.02)
        else:
            pytest.fail("the release never got in flight")
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read()
        proc.stderr.close()
    assert answer["status"] == 200
    audit_id = answer["body"]["meta"]["audit_id"]
    log = AuditLog.open(store)
    assert log.verify().ok
    assert {r["seq"]: r["outcome"] for r in log.records()}[audit_id] == "released"
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines[0]["message"] == "started" and lines[-1]["message"] == "stopped"
    query = [x for x in lines if x.get("route") == "query"]
    assert len(query) == 1 and query[0]["status"] == 200 and query[0]["ms"] >= 2000
    assert all({"time", "level", "request_id"} <= set(x) for x in lines if x["message"] == "request")


def test_doctor_says_what_is_wrong_and_creates_nothing(sample_dir, tmp_path, capsys):
    census = tmp_path / "census"
    shutil.copytree(sample_dir, census)
    manifest = json.loads((census / "manifest.json").read_text())
    manifest["synthetic"] = False  # as a real census would be
    (census / "manifest.json").write_text(json.dumps(manifest))
    key = tmp_path / "keys" / "secret.key"
    env = {
        "SAFESTATS_DATA_DIR": str(census),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "SAFESTATS_SECRET_KEY_FILE": str(key),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
        "SAFESTATS_HOST": "0.0.0.0",
    }
    assert main(["doctor", "--no-engine"], environ=env) == 5
    out = capsys.readouterr()
    assert re.search(r"FAIL\s+census\s+readable by other users", out.out)
    assert re.search(r"FAIL\s+tls\s+serving on 0.0.0.0 without TLS", out.out)
    assert re.search(r"warn\s+store\s+no store", out.out)
    assert out.err.startswith("error: 2 check(s) failed")
    assert not key.exists() and not (tmp_path / "store.db").exists()  # it read; it made nothing

    # the same deployment put right: private census, a store and keys, loopback: all ok
    os.chmod(census, 0o700)
    for f in census.iterdir():
        os.chmod(f, 0o600)
    settings = Settings.load(env | {"SAFESTATS_HOST": "127.0.0.1"})
    service = Service(settings)
    service.audit.append(service.recorder.draft(service.identity("demo.analyst"), "whoami") | {"outcome": "answered"})
    env["SAFESTATS_HOST"] = "127.0.0.1"
    assert main(["doctor"], environ=env) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert re.search(r"ok\s+audit log\s+ok: 1 audit records", out)
    assert re.search(r"ok\s+engine\s+duckdb", out)
