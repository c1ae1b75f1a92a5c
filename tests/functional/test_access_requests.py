"""`safestats access`: a paper application entered, approved by two people, listed with its
standing; the agreements register with a document's checksum; `audit access` shows, per group,
the agreement, the approval and its expiry — and what expired. Bad input is one line and changes
nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from safestats.cli import main
from safestats.config import Settings
from safestats.service.pipeline import Service


@pytest.fixture
def env(sample_dir, tmp_path):
    return {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "k"),
    }


def _run(env, capsys, *args):
    code = main(list(args), environ=env)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_paper_application_from_request_to_two_approvals_and_the_access_report(env, capsys, tmp_path):
    doc = tmp_path / "dsa.pdf"
    doc.write_bytes(b"%PDF- the signed agreement")
    code, out, _ = _run(
        env,
        capsys,
        "access",
        "agreement",
        "add",
        "DSA-ONS-2026-3",
        "--title",
        "ONS nationality tables",
        "--party",
        "DfE data owner",
        "--party",
        "Office for National Statistics",
        "--legal-basis",
        "Statistics and Registration Service Act 2007 s.45",
        "--start",
        "2026-01-01",
        "--end",
        "2027-12-31",
        "--document",
        str(doc),
        "--by",
        "Jo Owner",
    )
    assert code == 0 and hashlib.sha256(doc.read_bytes()).hexdigest() in out
    code, _, err = _run(
        env,
        capsys,
        "access",
        "agreement",
        "add",
        "DSA-ONS-2026-3",
        "--title",
        "again",
        "--party",
        "a",
        "--party",
        "b",
        "--legal-basis",
        "x",
        "--start",
        "2026-01-01",
        "--end",
        "2027-12-31",
        "--by",
        "Jo Owner",
    )
    assert code != 0 and "already" in err and len(err.strip().splitlines()) == 1
    ask = [
        "access",
        "request",
        "--requester",
        "demo.statistician",
        "--group",
        "SC_OFFICIAL_STATISTICS",
        "--table",
        "Nationality",
        "--table",
        "PupilOnRoll:first_language,la_code",
        "--purpose",
        "nationality tables for publication",
        "--legal-basis",
        "SRSA 2007 s.45",
        "--agreement",
        "DSA-ONS-2026-3",
        "--start",
        dt.date.today().isoformat(),
        "--end",
        "2027-06-30",
    ]
    code, out, _ = _run(env, capsys, *ask)
    assert code == 0 and "access request 1 recorded" in out and "two different approvers" in out
    code, _, err = _run(env, capsys, "access", "approve", "1", "--until", "2027-06-30", "--by", "demo.statistician")
    assert code != 0 and "own request" in err
    code, out, _ = _run(env, capsys, "access", "approve", "1", "--until", "2027-06-30", "--by", "Jo Owner")
    assert code == 0 and "1 of 2 approvals; still pending" in out
    code, out, _ = _run(env, capsys, "access", "approve", "1", "--until", "2027-03-31", "--by", "Sam Second")
    assert code == 0 and "may read it until 2027-03-31" in out
    code, out, _ = _run(env, capsys, "access", "list", "--json")
    rows = {str(r["id"]): r for r in json.loads(out)}
    assert rows["1"]["standing"] == "in force" and rows["1"]["approved_by"] == ["Jo Owner", "Sam Second"]
    assert rows["policy:RESEARCHERS"]["agreement"] == "DSA-UOX-2026-014"
    assert [d["os_user"] for d in rows["1"]["decisions"]] != [] and rows["1"]["decisions"][0]["audit_seq"]
    # a grant that ended yesterday is listed as expired
    past = [
        "access",
        "request",
        "--requester",
        "demo.statistician",
        "--group",
        "SC_OFFICIAL_STATISTICS",
        "--table",
        "Nationality",
        "--purpose",
        "last year's tables",
        "--legal-basis",
        "SRSA 2007 s.45",
        "--agreement",
        "DSA-ONS-2026-3",
        "--start",
        "2026-01-01",
        "--end",
        "2026-03-31",
    ]
    assert _run(env, capsys, *past)[0] == 0
    for who in ("Jo Owner", "Sam Second"):
        assert _run(env, capsys, "access", "approve", "2", "--until", "2026-03-31", "--by", who)[0] == 0
    code, out, _ = _run(env, capsys, "audit", "access", "--format", "json")
    assert code == 0
    report = json.loads(out)
    grants = {str(e["id"]): e for e in report["grants"]["SC_OFFICIAL_STATISTICS"]}
    assert grants["1"]["standing"] == "in force" and grants["1"]["until"] == "2027-03-31"
    assert grants["1"]["agreement"] == "DSA-ONS-2026-3" and grants["1"]["approved_by"] == ["Jo Owner", "Sam Second"]
    assert grants["2"]["standing"] == "expired"
    assert grants["policy:SC_OFFICIAL_STATISTICS"]["approved_by"][0].startswith("policy file")
    code, out, _ = _run(env, capsys, "audit", "access", "--format", "csv")
    assert code == 0 and "access request 2: expired, until 2026-03-31, agreement DSA-ONS-2026-3" in out
    refs = {a["reference"]: a for a in report["agreements"]}
    assert refs["DSA-ONS-2026-3"]["document_sha256"] == hashlib.sha256(doc.read_bytes()).hexdigest()
    service = Service(Settings.load(env))
    ops = [r["operation"] for r in service.audit.records() if r["operation"].startswith(("access", "agreement"))]
    assert ops.count("agreement add") == 2 and ops.count("access request") == 2 and ops.count("access approve") == 5
    assert service.audit.verify().ok
    code, out, _ = _run(env, capsys, "access", "revoke", "1", "--by", "Jo Owner", "--reason", "project closed")
    assert code == 0 and "access request 1 revoked" in out
    code, _, err = _run(env, capsys, "access", "reject", "1", "--by", "Jo Owner", "--reason", "late")
    assert code != 0 and "revoked already" in err
    rows = {str(r["id"]): r for r in json.loads(_run(env, capsys, "access", "list", "--json")[1])}
    assert rows["1"]["standing"] == "revoked"


def test_bad_input_is_one_line_and_changes_nothing(env, capsys):
    base = [
        "access",
        "request",
        "--requester",
        "demo.researcher",
        "--group",
        "RESEARCHERS",
        "--purpose",
        "p",
        "--legal-basis",
        "l",
        "--agreement",
        "DSA-UOX-2026-014",
        "--start",
        "2026-12-01",
        "--end",
        "2027-01-31",
    ]
    cases = {
        "unknown table": [*base, "--table", "Pupils"],
        "unknown column": [*base, "--table", "PupilOnRoll:shoe_size"],
        "identifier": [*base, "--table", "PupilOnRoll:upn"],
        "unknown agreement": [*base[:-6], "--agreement", "NOPE", *base[-4:], "--table", "Nationality"],
        "reversed period": [*base[:-4], "--start", "2027-01-31", "--end", "2026-12-01", "--table", "Nationality"],
        "not a date": [*base[:-4], "--start", "soon", "--end", "2027-01-31", "--table", "Nationality"],
        "unknown group": [*base[:4], "--group", "ADMINS", *base[6:], "--table", "Nationality"],
    }
    for name, args in cases.items():
        code, out, err = _run(env, capsys, *args)
        assert code != 0 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (name, err)
    code, _, err = _run(env, capsys, "access", "approve", "7", "--until", "2027-01-01", "--by", "Jo Owner")
    assert code != 0 and "no access request 7" in err
    service = Service(Settings.load(env))
    assert service.access.store.requests() == []  # nothing recorded as a request ...
    refused = [r for r in service.audit.records() if r["operation"].startswith("access")]
    assert len(refused) == len(cases) + 1 and all(r["outcome"] == "refused" for r in refused)  # ... each audited


def test_the_policy_can_require_a_declared_purpose_for_restricted_tables(sample_dir, tmp_path):
    import safestats as ss
    from safestats.access.policy import DEFAULT_POLICY

    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("require_purpose: never", "require_purpose: restricted"))
    common = {
        "data_dir": sample_dir,
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "secret_key_file": str(tmp_path / "k"),
        "policy": str(policy),
        "output_dir": str(tmp_path / "out"),
    }
    quiet = ss.connect(user="demo.unrestricted", environ={}, **common)
    with pytest.raises(ss.AccessDenied, match="declare its purpose"):
        quiet.table("Nationality").where(term="2017-spring").group_by("nationality").count().run()
    assert len(quiet.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()) > 0
    said = ss.connect(user="demo.unrestricted", environ={"SAFESTATS_PURPOSE": "EAL provision review"}, **common)
    assert len(said.table("Nationality").where(term="2017-spring").group_by("nationality").count().run()) > 0
    records = list(Service(Settings.load({}, **common)).audit.records())
    assert [(r["outcome"], r["purpose"]) for r in records if r["operation"] == "query"] == [
        ("refused", None),
        ("released", None),
        ("released", "EAL provision review"),
    ]
    policy.write_text(DEFAULT_POLICY.read_text().replace("require_purpose: never", "require_purpose: sometimes"))
    from safestats.errors import ConfigError

    with pytest.raises(ConfigError, match="require_purpose"):
        ss.connect(user="demo.unrestricted", environ={}, **common)
