"""Attacks on data access requests (docs/security.md, "Access requests"): a grant exists only
while an approved request holds it — approved by as many different people as it needs, none of
them the requester — and not a day after it expires or is revoked; an analyst cannot approve,
widen or back-date a grant over the API; and the records used by a release (the exact number of
pupils its filters select) never reach a client, the transparency report or the FOI answer
except rounded.

Judged against the raw census where a number is involved."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from fastapi.testclient import TestClient

import safestats as ss
from safestats.config import Settings
from safestats.errors import UserError
from safestats.service.app import create_app
from safestats.service.pipeline import Service
from tests.adversarial.judge import SPRING

TODAY = dt.date.today().isoformat()
NATIONALITY = {
    "group": "RESEARCHERS",
    "tables": {"Nationality": "all"},
    "purpose": "nationality and attendance",
    "legal_basis": "DEA 2017 s.64",
    "agreement": "DSA-UOX-2026-014",
    "start": TODAY,
    "end": "2027-09-30",
}


@pytest.fixture
def world(sample_dir, store_url, tmp_path):
    key = str(tmp_path / "key")
    service = Service(Settings.load({}, data_dir=sample_dir, store_url=store_url, secret_key_file=key, rate_limit=1000))

    def researcher():
        return ss.connect(
            user="demo.researcher",
            data_dir=sample_dir,
            store_url=store_url,
            secret_key_file=key,
            output_dir=str(tmp_path / "out"),
            environ={},
        )

    return service, researcher


def _nationality(session):
    return session.table("Nationality").where(term=SPRING).group_by("nationality").count().run()


def test_a_restricted_grant_needs_two_different_people_and_never_the_requester(world):
    service, researcher = world
    r = researcher()
    request = r.request_access(**NATIONALITY)
    assert request["approvals_needed"] == 2 and request["status"] == "pending"
    with pytest.raises(ss.AccessDenied):  # pending: nothing granted
        _nationality(r)
    with pytest.raises(UserError, match="own request"):
        service.access.decide(request["id"], "approve", by="demo.researcher", until="2027-09-30")
    service.access.decide(request["id"], "approve", by="Jo Owner", until="2027-09-30")
    with pytest.raises(UserError, match="already"):  # the same person twice is still one approver
        service.access.decide(request["id"], "approve", by="Jo Owner", until="2027-09-30")
    with pytest.raises(ss.AccessDenied):  # one of two approvals grants nothing
        _nationality(r)
    service.access.decide(request["id"], "approve", by="Sam Second", until="2027-06-30")
    out = _nationality(r)  # the session opened before the approval sees it: no reconnect needed
    assert len(out) > 0
    stood = service.access.store.request(request["id"])
    assert stood["status"] == "approved" and stood["until"] == "2027-06-30"  # the earlier of the two
    # every step has its audit record, the refused ones too, and the log verifies
    ops = [(x["operation"], x["outcome"]) for x in service.audit.records() if x["operation"].startswith("access")]
    assert ops == [
        ("access request", "answered"),
        ("access approve", "refused"),
        ("access approve", "answered"),
        ("access approve", "refused"),
        ("access approve", "answered"),
    ]
    assert service.audit.verify().ok


def test_a_grant_is_gone_the_day_after_it_expires_and_when_revoked(world):
    service, researcher = world
    r = researcher()
    old = r.request_access(
        **{**NATIONALITY, "tables": {"PupilOnRoll": ["ethnicity"]}, "start": "2026-04-01", "end": "2026-06-30"}
    )
    assert old["approvals_needed"] == 1  # not a restricted table
    service.access.decide(old["id"], "approve", by="Jo Owner", until="2026-06-30")
    with pytest.raises(ss.AccessDenied, match=r"expired on 2026-06-30"):
        r.table("PupilOnRoll").where(term=SPRING).group_by("ethnicity").count().run()
    # in force on its last day, gone the next (the same rule the service applies today)
    approved, _ = service.access.grants_for(("RESEARCHERS",), dt.date(2026, 6, 30))
    assert approved == {"PupilOnRoll": frozenset({"ethnicity"})}
    approved, lapsed = service.access.grants_for(("RESEARCHERS",), dt.date(2026, 7, 1))
    assert approved == {} and "expired on 2026-06-30" in lapsed["PupilOnRoll"]
    now = r.request_access(**NATIONALITY)
    service.access.decide(now["id"], "approve", by="Jo Owner", until="2027-09-30")
    service.access.decide(now["id"], "approve", by="Sam Second", until="2027-09-30")
    assert len(_nationality(r)) > 0
    service.access.decide(now["id"], "revoke", by="Jo Owner", note="project closed early")
    with pytest.raises(ss.AccessDenied, match="revoked"):
        _nationality(r)
    with pytest.raises(UserError):  # a closed request cannot be approved again
        service.access.decide(now["id"], "approve", by="Pat Third", until="2027-09-30")


def test_an_approval_cannot_outlast_its_agreement_or_start_before_its_request(world):
    service, researcher = world
    request = researcher().request_access(**{**NATIONALITY, "tables": {"PupilOnRoll": ["ethnicity"]}})
    with pytest.raises(UserError, match="after agreement"):
        service.access.decide(request["id"], "approve", by="Jo Owner", until="2030-01-01")
    with pytest.raises(UserError, match="before the request"):
        service.access.decide(request["id"], "approve", by="Jo Owner", until="2020-01-01")
    with pytest.raises(UserError, match="outside agreement"):
        researcher().request_access(**{**NATIONALITY, "end": "2031-01-01"})
    with pytest.raises(UserError, match="identifiers are never granted"):
        researcher().request_access(**{**NATIONALITY, "tables": {"PupilOnRoll": ["pupil_id"]}})
    assert service.access.store.request(request["id"])["status"] == "pending"  # nothing changed


def test_over_http_an_analyst_applies_but_cannot_approve_or_speak_for_another_organisation(world):
    service, _ = world
    service.users.add_user("rita", groups=["RESEARCHERS"], organisation="UoX")
    auth = {"Authorization": f"Bearer {service.users.issue_token('rita')}"}
    client = TestClient(create_app(service))
    r = client.post("/v1/access-requests", json={"application": NATIONALITY}, headers=auth)
    assert r.status_code == 200, r.text
    mine = r.json()["request"]
    assert mine["status"] == "pending" and mine["approvals_needed"] == 2
    assert service.access.store.request(mine["id"])["requester"] == "rita"
    spoofed = client.post(
        "/v1/access-requests", json={"application": {**NATIONALITY, "organisation": "DfE"}}, headers=auth
    )
    assert spoofed.status_code == 400 and "organisation" in spoofed.json()["error"]["message"]
    for path in (f"/v1/access-requests/{mine['id']}/approve", f"/v1/access-requests/{mine['id']}"):
        assert client.post(path, json={"until": "2027-01-01"}, headers=auth).status_code in (404, 405)
    assert client.get("/v1/access-requests", headers=auth).json()["requests"][0]["status"] == "pending"
    assert client.post("/v1/access-requests", json={"application": NATIONALITY}).status_code == 401


def test_records_used_agree_with_the_raw_data_and_never_reach_a_client(world, census):
    service, _ = world
    service.users.add_user("alice", groups=["I_STORE_SC_USERS"], organisation="DfE")
    auth = {"Authorization": f"Bearer {service.users.issue_token('alice')}"}
    client = TestClient(create_app(service))
    la = census.rows(term=SPRING)["la_code"].value_counts().idxmax()
    bodies = {
        "spring": {
            "v": 1,
            "table": "PupilOnRoll",
            "aggregates": [["count", None, None, "n"]],
            "group_by": ["phase"],
            "filters": [["term", "==", SPRING]],
        },
        "one LA": {
            "v": 1,
            "table": "PupilOnRoll",
            "aggregates": [["count", None, None, "n"]],
            "group_by": ["sex"],
            "filters": [["term", "==", SPRING], ["la_code", "==", la]],
        },
        "every term": {
            "v": 1,
            "table": "PupilOnRoll",
            "aggregates": [["count", None, None, "n"]],
            "group_by": ["phase"],
            "filters": [],
        },
    }
    truth = {
        "spring": census.pupils(term=SPRING),
        "one LA": census.pupils(term=SPRING, la_code=la),
        "every term": census.pupils(),
    }
    for name, body in bodies.items():
        r = client.post("/v1/query", json={"query": body}, headers=auth)
        assert r.status_code == 200, r.text
        text = r.text
        assert "records_used" not in text and "records used" not in text
        record = service.audit.record(r.json()["meta"]["audit_id"])
        assert record["records_used"] == truth[name], name
        assert not re.search(rf"\b{truth[name]}\b", json.dumps(r.json()["meta"]))  # nor under another name
    refused = client.post(
        "/v1/query",
        json={"query": {**bodies["spring"], "table": "Nationality", "group_by": ["nationality"]}},
        headers=auth,
    )
    assert refused.status_code == 403 and list(service.audit.records())[-1]["records_used"] is None
    # the transparency report shows the month's sum rounded to the policy's 1,000, never exact
    from safestats.audit.reports import records_band, transparency

    volume = transparency(service.audit, "", bounds=("2000-01-01", "2100-01-01"), rounding=1000)["volume"]
    dfe = next(v for v in volume if v["organisation"] == "DfE")
    exact = sum(truth.values())
    assert dfe["records_used"] == records_band(exact, 1000) and dfe["records_used"].endswith(",000")
    assert str(exact) not in json.dumps(volume) and f"{exact:,}" not in json.dumps(volume)
    assert records_band(999, 1000) == "fewer than 1,000" and records_band(0, 1000) == "0"
