"""The HTTP service: the same pipeline behind tokens, limits and a stable error shape."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from fractions import Fraction

import pandas as pd
import pytest
from fastapi.testclient import TestClient

import safestats as ss
from safestats.config import Settings
from safestats.service.app import create_app
from safestats.service.pipeline import Service
from safestats.store.users import tokens_table
from tests.servers import serving


@pytest.fixture
def service(sample_dir, store_url):
    return Service(Settings.load({}, data_dir=sample_dir, store_url=store_url, rate_limit=1000))


@pytest.fixture
def api(service):
    service.users.add_user("alice", groups=["I_STORE_SC_USERS"], organisation="DfE")
    service.users.add_user("stats", groups=["SC_OFFICIAL_STATISTICS"], organisation="ONS")
    tokens = {"alice": service.users.issue_token("alice"), "stats": service.users.issue_token("stats")}
    client = TestClient(create_app(service))
    return client, tokens, service


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


QUERY = ss.Query("PupilOnRoll", (ss.Aggregate("count"),), ("phase",)).to_wire()


def test_a_query_over_http(api):
    client, tokens, service = api
    r = client.post("/v1/query", json={"query": QUERY}, headers=_auth(tokens["alice"]))
    assert r.status_code == 200
    meta = r.json()["meta"]
    assert meta["label"] == "OFFICIAL" and meta["disclosure"]["mode"] == "dp" and meta["audit_id"]
    rec = list(service.audit.records())[-1]
    assert rec["user"] == "alice" and rec["interaction"] == "api" and rec["client"]["remote"]


@pytest.mark.parametrize("case", ["missing", "malformed", "wrong", "expired", "revoked"])
def test_bad_tokens_are_refused_and_audited_without_the_token(api, case):
    client, tokens, service = api
    token = tokens["alice"]
    if case == "expired":
        with service.audit.engine.begin() as conn:
            past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat(timespec="seconds")
            conn.execute(tokens_table.update().values(expires_utc=past))
    if case == "revoked":
        service.users.revoke("alice")
    headers = {
        "missing": {},
        "malformed": _auth("not-a-token"),
        "wrong": _auth(token[:-4] + "AAAA"),
        "expired": _auth(token),
        "revoked": _auth(token),
    }[case]
    r = client.post("/v1/query", json={"query": QUERY}, headers=headers)
    assert r.status_code == 401
    body = r.json()["error"]
    assert body["type"] == "AuthError" and body["status"] == 401
    assert case in body["message"] or case in ("wrong",) and "invalid" in body["message"]
    rec = list(service.audit.records())[-1]
    assert rec["operation"] == "authenticate" and rec["outcome"] == "refused"
    secret = token.split("_", 2)[2]
    with service.audit.engine.connect() as conn:
        dump = " ".join(
            str(row) for t in ("audit_log", "api_tokens") for row in conn.exec_driver_sql(f"SELECT * FROM {t}")
        )
    assert secret not in dump and secret[:-4] not in dump


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/v1/sql", {"sql": "SELECT * FROM PupilOnRoll"}, 400, "QueryError"),
        ("/v1/sql", {"sql": "SELECT nationality, COUNT(*) FROM Nationality GROUP BY nationality"}, 403, "AccessDenied"),
        ("/v1/query", {"query": {"v": 1, "table": "PupilOnRoll", "aggregates": []}}, 400, "QueryError"),
        ("/v1/query", {"nope": 1}, 422, "QueryError"),
        ("/v1/sql", {"sql": "x" * 70_000}, 413, "RequestTooLarge"),
    ],
)
def test_errors_have_one_shape_and_are_audited(api, path, body, status, kind):
    client, tokens, service = api
    before = service.audit.count()
    r = client.post(path, json=body, headers=_auth(tokens["alice"]))
    assert r.status_code == status
    assert r.json() == {"error": {"type": kind, "message": r.json()["error"]["message"], "status": status}}
    assert service.audit.count() == before + 1
    assert list(service.audit.records())[-1]["outcome"] == "refused"


def test_every_response_carries_a_request_id(api):
    client, tokens, _ = api
    assert client.get("/v1/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/v1/budget", headers=_auth(tokens["alice"])).headers["x-request-id"]
    assert len(made) == 16 and int(made, 16) >= 0
    refused = client.post("/v1/sql", json={"sql": "x" * 70_000}, headers={"x-request-id": "r-1"})
    assert refused.status_code == 413 and refused.headers["x-request-id"] == "r-1"


def test_budget_exhaustion_is_a_403(api):
    client, tokens, service = api
    service.set_budget("alice", Fraction(1, 4))
    r = client.post("/v1/query", json={"query": QUERY}, headers=_auth(tokens["alice"]))
    assert r.status_code == 403 and r.json()["error"]["type"] == "BudgetExceeded"


def test_rate_limit(sample_dir, store_url):
    service = Service(Settings.load({}, data_dir=sample_dir, store_url=store_url, rate_limit=3))
    service.users.add_user("bob", groups=["I_STORE_SC_USERS"], organisation="DfE")
    client = TestClient(create_app(service))
    token = service.users.issue_token("bob")
    codes = [client.get("/v1/budget", headers=_auth(token)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert list(service.audit.records())[-1]["reason"].startswith("more than 3 requests a minute")


def test_openapi_schema_is_published(api):
    client, _, _ = api
    schema = client.get("/openapi.json").json()
    assert {"/v1/query", "/v1/sql", "/v1/tables", "/v1/budget", "/v1/whoami"} <= set(schema["paths"])


def test_scheduled_identities_stay_scheduled_over_http(api):
    client, _, service = api
    service.users.add_user(
        "reports", groups=["SC_QUALITY_REPORTS"], organisation="DfE", service=True, interaction="scheduled"
    )
    token = service.users.issue_token("reports")
    r = client.get("/v1/whoami", headers=_auth(token) | {"X-Safestats-Interaction": "manual"})
    assert r.json()["interaction"] == "scheduled"


# -- a real server, the real client -------------------------------------------------------------


@pytest.fixture
def server(api):
    client, tokens, service = api
    with serving(create_app(service)) as url:
        yield url, tokens, service


def test_the_http_client_gives_the_same_protected_results_as_embedded(server, connect):
    url, tokens, service = server
    remote = ss.connect(url, token=tokens["stats"], environ={})
    request_close = remote.close
    assert remote.user == "stats"
    local = connect("demo.statistician")

    def q(s):
        return (
            s.table("PupilOnRoll").where(term="2017-spring").group_by("phase", "sex").count().mean("sessions_attended")
        )

    a, b = q(remote).run(), q(local).run()
    pd.testing.assert_frame_equal(pd.DataFrame(a), pd.DataFrame(b))
    assert a.label == b.label and a.symbols.equals(b.symbols)
    assert not remote.describe("PupilOnRoll").loc["upn", "usable"]
    with pytest.raises(ss.QueryError, match="only aggregate queries"):
        remote.sql("SELECT * FROM PupilOnRoll")
    request_close()


def test_over_http_a_query_is_checked_while_it_is_built_from_what_connect_learnt(server):
    """connect()'s whoami says what the caller may read, so a typo, an identifier or an ungranted
    table is refused at the step that names it, before any request of its own."""
    url, tokens, service = server
    remote = ss.connect(url, token=tokens["alice"], environ={})  # not in the unrestricted group
    before = service.audit.count()
    with pytest.raises(ss.QueryError, match="did you mean 'sessions_attended'"):
        remote.table("PupilOnRoll").where(term="2017-spring").group_by("phase").mean("sesions_attended")
    with pytest.raises(ss.QueryError, match="cannot be used"):
        remote.table("PupilOnRoll").group_by("upn")
    with pytest.raises(ss.QueryError, match="did you mean 'PupilOnRoll'"):
        remote.table("PupilOnRol")
    with pytest.raises(ss.AccessDenied, match="may not read table"):
        remote.table("PupilOnRoll_Unrestricted")
    assert service.audit.count() == before  # nothing was sent
    assert remote.whoami()["may_read"]["PupilOnRoll"] is True
    remote.close()


def test_many_clients_against_one_budget_over_http(server):
    url, tokens, service = server
    service.set_budget("alice", Fraction(1))
    outcomes: list[str] = []

    def fire(i: int) -> None:
        with ss.connect(url, token=tokens["alice"], environ={}) as s:
            try:
                s.table("PupilOnRoll").where(age=4 + i).group_by("phase").count().epsilon("1/4").run()
                outcomes.append("released")
            except ss.UserError as e:
                outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("released") == 4 and outcomes.count("BudgetExceeded") == 6
    log = service.audit
    assert log.verify().ok
    records = list(log.records())
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    queries = [r for r in records if r["operation"] == "query"]
    assert len(queries) == 10
    spent = sum(Fraction(r["privacy"]["spent"]) for r in queries if r["outcome"] == "released")
    assert spent == 1


def test_the_token_comes_from_the_environment_or_a_file(tmp_path):
    from safestats.client.http import read_token
    from safestats.errors import ConfigError

    assert read_token({"SAFESTATS_TOKEN": " ss_a_b\n"}) == "ss_a_b"
    file = tmp_path / "token"
    file.write_text("ss_c_d\n")
    assert read_token({"SAFESTATS_TOKEN_FILE": str(file)}) == "ss_c_d"
    with pytest.raises(ConfigError, match="no token"):
        read_token({"SAFESTATS_TOKEN_FILE": str(tmp_path / "missing")})


def test_tls(api, tmp_path):
    """`safestats serve` with a certificate: the client verifies it and talks HTTPS."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    import uvicorn

    client, tokens, service = api
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(service),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if srv.started:
                break
            time.sleep(0.05)
        with ss.connect(
            f"https://127.0.0.1:{port}", token=tokens["alice"], environ={"SAFESTATS_CA_BUNDLE": str(cert)}
        ) as s:
            assert s.user == "alice"
            assert s.table("PupilOnRoll").count().run().label == "OFFICIAL"
        with pytest.raises(ss.SafestatsError, match="cannot reach"):  # an unverified certificate is refused
            ss.connect(f"https://127.0.0.1:{port}", token=tokens["alice"], environ={})
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_releases_over_http(server, tmp_path):
    from safestats.releases import verify_bundle

    url, tokens, service = server
    remote = ss.connect(url, token=tokens["stats"], environ={})
    r = remote.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    bundle = r.save_release("phase over http", path=tmp_path / "bundle")
    verify_bundle(bundle, audit=service.audit, store=service.results)
    (release_id,) = remote.releases().index
    assert remote.release(release_id)["name"] == "phase over http"
    report, again = remote.reproduce(release_id)
    assert report["identical"] and again["count"].tolist() == r["count"].tolist()
    with pytest.raises(ss.ReleaseError, match="no release 'rel-nope'"):
        remote.reproduce("rel-nope")
    remote.close()


def test_an_export_is_recorded_over_http_and_refused_for_anothers_result(api):
    client, tokens, service = api
    r = client.post("/v1/query", json={"query": QUERY}, headers=_auth(tokens["alice"]))
    seq = r.json()["meta"]["audit_id"]
    assert r.json()["meta"]["export"] == {"method": "zip", "recipients": [], "required": False}
    body = {"audit_id": seq, "file": "phase.csv.zip", "protection": "zip"}
    done = client.post("/v1/exports", json=body, headers=_auth(tokens["alice"]))
    assert done.status_code == 200
    record = service.audit.record(done.json()["audit_id"])
    assert record["operation"] == "export" and record["user"] == "alice" and "phase.csv.zip" in record["reason"]
    refused = client.post("/v1/exports", json=body, headers=_auth(tokens["stats"]))
    assert refused.status_code == 409 and "not a result released to you" in refused.json()["error"]["message"]
    bad = client.post("/v1/exports", json={**body, "protection": "rot13"}, headers=_auth(tokens["alice"]))
    assert bad.status_code == 422
