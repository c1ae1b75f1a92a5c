"""Malformed input with a valid token (A1/A4): every one is a 4xx with the stable error shape,
audited under the caller, never a 500 — nested expressions past the parser's recursion,
fields of the wrong type, odd numbers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from safestats.config import Settings
from safestats.service.app import create_app
from safestats.service.pipeline import Service

AGG = [["count", None, None, "count"]]
CASES = {
    "nested SQL": ("/v1/sql", {"sql": "SELECT COUNT(*) AS n FROM PupilOnRoll WHERE " + "(" * 3000 + "age = 5"
                                      + ")" * 3000}),  # fmt: skip
    "join of the wrong type": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "join": ["Nationality"],
                                                       "aggregates": AGG}}),  # fmt: skip
    "fractional contribution bound": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG,
                                                              "max_rows_per_pupil": 1.0000001}}),  # fmt: skip
    "boolean contribution bound": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG,
                                                           "max_rows_per_pupil": True}}),  # fmt: skip
    "huge epsilon text": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG,
                                                  "epsilon": "1" * 5000}}),  # fmt: skip
    "totals as text": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG, "totals": "yes",
                                               "group_by": ["sex"]}}),  # fmt: skip
    "quantile q as text": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll",
                                                   "aggregates": [["quantile", "sessions_attended", "x", "q"]]}}),
    "bin width as float": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG,
                                                   "bins": [["sessions_attended", 2.5]]}}),  # fmt: skip
    "group_by a number": ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": AGG,
                                                  "group_by": [3]}}),  # fmt: skip
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
