"""Malformed input with a valid token (A1/A4): every one is a 4xx with the stable error shape,
audited under the caller, never a 500 — nested expressions past the parser's recursion,
fields of the wrong type, odd numbers."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from safestats.config import Settings
from safestats.service.app import create_app
from safestats.service.pipeline import Service

AGG = [["count", None, None, "count"]]
CASES = {
    "nested SQL": (
        "/v1/sql",
        {"sql": "SELECT COUNT(*) AS n FROM PupilOnRoll WHERE " + "(" * 3000 + "age = 5" + ")" * 3000},
    ),
    "join of the wrong type": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "join": ["Nationality"], "aggregates": AGG}},
    ),
    "fractional contribution bound": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "max_rows_per_pupil": 1.0000001}},
    ),
    "boolean contribution bound": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "max_rows_per_pupil": True}},
    ),
    "huge epsilon text": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "epsilon": "1" * 5000}},
    ),
    "totals as text": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "totals": "yes", "group_by": ["sex"]}},
    ),
    "quantile q as text": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": [["quantile", "sessions_attended", "x", "q"]]}},
    ),
    "bin width as float": (
        "/v1/query",
        {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "bins": [["sessions_attended", 2.5]]}},
    ),
    "group_by a number": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "group_by": [3]}}),
}


@pytest.fixture
def api(sample_dir, store_url):
    service = Service(Settings.load({}, data_dir=sample_dir, store_url=store_url, rate_limit=1000))
    service.users.add_user("alice", groups=["I_STORE_SC_USERS"], organisation="DfE")
    return TestClient(create_app(service)), service.users.issue_token("alice"), service


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_is_a_4xx_audited_under_the_caller(api, case):
    client, token, service = api
    path, body = CASES[case]
    before = service.audit.count()
    r = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert set(r.json()["error"]) == {"type", "message", "status"}
    last = list(service.audit.records())[-1]
    assert service.audit.count() == before + 1 and last["outcome"] == "refused" and last["user"] == "alice"


def test_a_flood_of_bad_tokens_is_rate_limited_and_cannot_grow_the_log(sample_dir, store_url):
    service = Service(Settings.load({}, data_dir=sample_dir, store_url=store_url, auth_failure_limit=5))
    client = TestClient(create_app(service))
    before = service.audit.count()
    codes = [client.get("/v1/whoami", headers={"Authorization": f"Bearer nope-{i}"}).status_code for i in range(60)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    # five failed logins and one record of the refusals that followed, not sixty records — and
    # the incident the five make, recorded at once (service/incident_watch.py)
    assert service.audit.count() - before == 7
    *requests, last = [r for r in service.audit.records() if r["seq"] > before and r["operation"] != "incident"]
    assert len(requests) + 1 == 6
    assert last["outcome"] == "refused" and "failed authentications" in last["reason"]
    incidents = [r for r in service.audit.records() if r["operation"] == "incident"]
    assert len(incidents) == 1 and "failed_logins" in incidents[0]["reason"]


def test_a_malformed_body_with_a_valid_token_is_recorded_under_its_user(api):
    client, token, service = api
    r = client.post("/v1/query", json={"nope": 1}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422
    assert list(service.audit.records())[-1]["user"] == "alice"


def test_the_audit_separates_what_was_observed_from_what_the_client_claimed(api):
    import json

    client, token, service = api
    claim = {"host": "laptop-of-alice", "remote": "10.9.9.9"}  # a client may claim anything
    r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}", "X-Safestats-Client": json.dumps(claim)})
    assert r.status_code == 200
    rec = list(service.audit.records())[-1]
    assert rec["client"]["observed"] == {"remote": "testclient", "tls": False}
    assert rec["client"]["claimed"]["host"] == "laptop-of-alice" and rec["client"]["remote"] == "testclient"


def _chunks(body: bytes, size: int):
    yield from (body[i : i + size] for i in range(0, len(body), size))


@pytest.mark.parametrize("declared", [None, "10"])
def test_a_body_past_the_limit_is_refused_whatever_length_it_declares(api, declared):
    """No content-length, or one that lies (10 bytes declared, 70 kB sent): the size limit counts
    what arrives and refuses past the limit — a 413, audited under the caller, nothing run — and
    hands a body under the limit on to the route whole."""
    client, token, service = api
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    before = service.audit.count()
    sent = json.dumps({"sql": "SELECT phase, COUNT(*) FROM PupilOnRoll GROUP BY phase"}).encode()
    r = client.post("/v1/sql", content=_chunks(sent, 7), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["audit_id"] and service.audit.count() == before + 1

    big = json.dumps({"sql": "x" * 70_000}).encode()
    lying = headers | ({"content-length": declared} if declared else {})
    r = client.post("/v1/sql", content=_chunks(big, 4096), headers=lying)
    assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLarge"
    rec = list(service.audit.records())[-1]
    assert service.audit.count() == before + 2
    assert rec["outcome"] == "refused" and rec["user"] == "alice" and rec["operation"] == "/v1/sql"
