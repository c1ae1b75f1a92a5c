"""Fuzz the API from its own OpenAPI schema (schemathesis): whatever arrives, no 5xx, no data
in error bodies, one stable error shape, and every request to an authenticated route audited."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from safestats.config import Settings
from safestats.service.app import create_app
from safestats.service.pipeline import Service
from tests.conftest import SAMPLE

_state: dict = {}


def _real_identifiers() -> set[str]:
    """Values that could only come from the data: UPNs and pupil ids of the sample census."""
    import pyarrow.parquet as pq

    t = pq.read_table(SAMPLE / "PupilOnRoll.parquet", columns=["upn", "pupil_id"]).slice(0, 300)
    return {str(v) for v in t.column("upn").to_pylist()} | {str(v) for v in t.column("pupil_id").to_pylist()}


REAL = _real_identifiers()


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[A-Za-z0-9]+", text))


def _app():
    import tempfile

    tmp = tempfile.mkdtemp(prefix="safestats-fuzz-")
    service = Service(Settings.load({}, data_dir=SAMPLE, store_url=f"sqlite:///{tmp}/s.db", rate_limit=100_000))
    service.users.add_user("fuzzer", groups=["I_STORE_SC_USERS"], organisation="DfE")
    _state["service"] = service
    _state["token"] = service.users.issue_token("fuzzer")
    return create_app(service)


#: the operational endpoints: no data, no token, not audited (docs/deployment.md)
UNAUDITED = ("/v1/health", "/v1/ready", "/v1/metrics")

schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


def _requests(service) -> int:
    """Audit records of requests (not the incidents the watch records beside them)."""
    import sqlalchemy as sa

    from safestats.store.schema import audit_table

    with service.audit.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(audit_table).where(audit_table.c.operation != "incident")
        return int(conn.execute(query).scalar_one())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_survives_fuzzing(case):
    service = _state["service"]
    audited = case.path not in UNAUDITED
    before = _requests(service)
    headers = {"Authorization": f"Bearer {_state['token']}"} if audited else {}
    response = case.call(headers=headers)
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "status"}
        assert body["error"]["status"] == response.status_code
        # no data in error bodies: no identifier of the census as a word of the message, but
        # for what the request itself sent (an echoed audit id 10000000000 is not pupil 1000)
        sent = _words(f"{case.path} {case.path_parameters} {case.query} {case.body}")
        assert not (_words(body["error"]["message"]) & REAL) - sent
    if audited:  # one record per request (and any incidents the requests make, recorded apart)
        assert _requests(service) == before + 1, (case.path, response.status_code)


def test_fuzzed_log_still_verifies():
    if "service" not in _state:
        pytest.skip("fuzzing did not run")
    assert _state["service"].audit.verify().ok
