"""Two-factor access to IL3 data over the network (Becta; docs/security.md).

The attacker holds a user's API token (phished, or read from a notebook) but not their
authenticator. Over HTTP they cannot get an OFFICIAL-SENSITIVE result: without a session the
request is refused (401) and audited; a code seen once cannot be replayed; codes more than one
step off are refused; guessing locks the second factor (the right code is refused too while
locked); an expired or revoked session is refused. OFFICIAL data needs the token only, embedded
mode (synthetic data) needs nothing, and the client asks for the code and carries on.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

import safestats as ss
from safestats.audit.log import AuditLog
from safestats.cli import main
from safestats.config import Settings
from safestats.errors import SecondFactorRequired
from safestats.query.model import Aggregate, Filter, Query
from safestats.service.app import create_app
from safestats.service.pipeline import Service
from tests.factors import code_now, seed_of
from tests.servers import serving

SPRING = (Filter("term", "==", "2017-spring"),)
SENSITIVE = {"query": Query("PupilOnRoll", (Aggregate("count"),), ("ethnicity",), SPRING).to_wire()}  # IL3 column
OFFICIAL = {"query": Query("PupilOnRoll", (Aggregate("count"),), ("phase",), SPRING).to_wire()}


_seed, _code = seed_of, code_now


@pytest.fixture
def world(sample_dir, tmp_path):
    settings = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
        "SAFESTATS_OUTPUT_CHECKING_DIR": str(tmp_path / "oc"),
        "SAFESTATS_SECOND_FACTOR_ATTEMPTS": "3",
    }
    service = Service(Settings.load(settings))
    service.users.add_user("ana", groups=["I_STORE_SC_USERS"], organisation="DfE")
    service.users.add_user(
        "bot", groups=["SC_QUALITY_REPORTS"], organisation="DfE", service=True, interaction="scheduled"
    )
    tokens = {u: service.users.issue_token(u) for u in ("ana", "bot")}
    client = TestClient(create_app(service))
    return service, client, tokens, settings


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _records(service: Service) -> list[dict]:
    return list(AuditLog(service.audit.engine).records())


def test_il3_over_http_needs_a_session_and_official_does_not(world):
    service, client, tokens, _ = world
    r = client.post("/v1/query", json=SENSITIVE, headers=_auth(tokens["ana"]))
    assert r.status_code == 401 and r.json()["error"]["type"] == "SecondFactorRequired"
    assert "OFFICIAL-SENSITIVE" in r.json()["error"]["message"] and "/v1/session" in r.json()["error"]["message"]
    refused = _records(service)[-1]
    assert refused["outcome"] == "refused" and "second factor" in refused["reason"] and refused["cells_released"] == 0
    assert client.post("/v1/query", json=OFFICIAL, headers=_auth(tokens["ana"])).status_code == 200
    # a service identity's group does not require it (its token lives with the runner's OS user)
    assert client.post("/v1/query", json=SENSITIVE, headers=_auth(tokens["bot"])).status_code == 200


def test_a_code_opens_a_session_once_and_the_session_reads_il3(world):
    service, client, tokens, _ = world
    seed = _seed(service.factors.enrol("ana"))
    code = _code(seed)
    r = client.post("/v1/session", json={"code": code}, headers=_auth(tokens["ana"]))
    assert r.status_code == 200, r.text
    session = r.json()["session"]
    assert session.startswith("ss2_") and r.json()["user"] == "ana"
    answer = client.post("/v1/query", json=SENSITIVE, headers=_auth(session))
    assert answer.status_code == 200 and answer.json()["meta"]["label"] == "OFFICIAL-SENSITIVE"
    assert client.get("/v1/whoami", headers=_auth(session)).json()["second_factor"] == "session open"
    # the same code again (someone who saw it): refused and audited
    again = client.post("/v1/session", json={"code": code}, headers=_auth(tokens["ana"]))
    assert again.status_code == 401 and "used already" in again.json()["error"]["message"]
    opened = [r for r in _records(service) if r["operation"] == "session open"]
    assert [r["outcome"] for r in opened] == ["answered", "refused"]
    stored = json.dumps(_records(service))
    assert code not in stored and session[4:] not in stored  # neither the code nor the credential is logged


def test_skew_beyond_one_step_is_refused(world):
    service, client, tokens, _ = world
    seed = _seed(service.factors.enrol("ana"))
    far = client.post("/v1/session", json={"code": _code(seed, +3)}, headers=_auth(tokens["ana"]))
    assert far.status_code == 401 and "wrong code" in far.json()["error"]["message"]
    near = client.post("/v1/session", json={"code": _code(seed, +1)}, headers=_auth(tokens["ana"]))
    assert near.status_code == 200


def test_guessing_locks_the_second_factor_and_every_guess_is_audited(world):
    service, client, tokens, _ = world
    seed = _seed(service.factors.enrol("ana"))
    statuses = [
        client.post("/v1/session", json={"code": f"{n:06d}"}, headers=_auth(tokens["ana"])).status_code
        for n in range(3)
        if f"{n:06d}" != _code(seed)
    ]
    assert statuses[-1] == 429 and set(statuses[:-1]) <= {401}
    locked = client.post("/v1/session", json={"code": _code(seed)}, headers=_auth(tokens["ana"]))
    assert locked.status_code == 429 and "locked" in locked.json()["error"]["message"]
    refused = [r for r in _records(service) if r["operation"] == "session open"]
    assert len(refused) == len(statuses) + 1 and all(r["outcome"] == "refused" for r in refused)


def test_expired_and_revoked_sessions_are_refused(world, sample_dir, tmp_path):
    service, client, tokens, settings = world
    seed = _seed(service.factors.enrol("ana"))
    session = client.post("/v1/session", json={"code": _code(seed)}, headers=_auth(tokens["ana"])).json()["session"]
    assert main(["users", "2fa", "revoke-sessions", "ana"], environ=settings) == 0
    r = client.post("/v1/query", json=SENSITIVE, headers=_auth(session))
    assert r.status_code == 401 and "ended" in r.json()["error"]["message"]
    # sessions of no length: expired as soon as opened
    short = Service(Settings.load(settings | {"SAFESTATS_SESSION_HOURS": "0"}))
    c2 = TestClient(create_app(short))
    time.sleep(0.01)
    opened = c2.post("/v1/session", json={"code": _code(seed, +1)}, headers=_auth(tokens["ana"]))
    assert opened.status_code == 200
    r = c2.post("/v1/query", json=SENSITIVE, headers=_auth(opened.json()["session"]))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_embedded_mode_needs_none_and_says_so(connect):
    s = connect("demo.analyst")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("ethnicity").count().run()
    assert r.label == "OFFICIAL-SENSITIVE"
    assert s.whoami()["second_factor"] == "not needed: embedded mode over the synthetic census"


def test_the_client_asks_for_the_code_once_and_carries_on(world):
    service, _, tokens, _ = world
    seed = _seed(service.factors.enrol("ana"))
    asked: list[int] = []

    def authenticator() -> str:
        asked.append(1)
        return _code(seed)

    with serving(create_app(service)) as url:
        s = ss.connect(url, token=tokens["ana"], environ={}, second_factor=authenticator)
        first = s.table("PupilOnRoll").where(term="2017-spring").group_by("ethnicity").count().run()
        second = s.table("PupilOnRoll").where(term="2017-spring").group_by("sen_provision").count().run()
        assert first.label == second.label == "OFFICIAL-SENSITIVE" and len(asked) == 1
        strict = ss.connect(url, token=tokens["ana"], environ={}, second_factor=False)
        with pytest.raises(SecondFactorRequired, match="needs a second factor"):
            strict.table("PupilOnRoll").where(term="2017-spring").group_by("ethnicity").count().run()

        def no_one_to_ask() -> str:  # e.g. getpass in a kernel that has no stdin
            raise RuntimeError("stdin is not available")

        unattended = ss.connect(url, token=tokens["ana"], environ={}, second_factor=no_one_to_ask)
        with pytest.raises(SecondFactorRequired, match="needs a second factor"):  # the refusal, not the RuntimeError
            unattended.table("PupilOnRoll").where(term="2017-spring").group_by("ethnicity").count().run()


def test_a_kept_il3_result_does_not_come_back_on_the_token_alone(world):
    """An IL3 result made in a session is kept by the service; with only the token, neither saving
    it as a release (which returns it) nor reproducing it gives it back."""
    service, client, tokens, _ = world
    seed = _seed(service.factors.enrol("ana"))
    session = client.post("/v1/session", json={"code": _code(seed)}, headers=_auth(tokens["ana"])).json()["session"]
    made = client.post("/v1/query", json=SENSITIVE, headers=_auth(session)).json()
    audit_id = made["meta"]["audit_id"]
    stolen = client.post("/v1/releases", json={"audit_id": audit_id, "name": "grab"}, headers=_auth(tokens["ana"]))
    assert stolen.status_code == 401 and stolen.json()["error"]["type"] == "SecondFactorRequired"
    assert "cells" not in stolen.text and "payload" not in stolen.json()
    saved = client.post("/v1/releases", json={"audit_id": audit_id, "name": "mine"}, headers=_auth(session))
    assert saved.status_code == 200, saved.text
    release_id = saved.json()["manifest"]["release_id"]
    again = client.post(f"/v1/releases/{release_id}/reproduce", headers=_auth(tokens["ana"]))
    assert again.status_code == 401 and again.json()["error"]["type"] == "SecondFactorRequired"
    assert client.post(f"/v1/releases/{release_id}/reproduce", headers=_auth(session)).status_code == 200
    refused = [r for r in _records(service) if r["operation"] in ("release save", "reproduce")]
    assert [r["outcome"] for r in refused] == ["refused", "answered", "refused", "answered"]
