"""An insider with the store (A5: reads, edits, deletes, appends rows in the service's
database, recomputes every public hash) against the audit log's transparency: each tampering
that made `audit verify` say "ok" before is now detected — against the signed tree heads the
service keeps in the store, in the witness file outside it, or published earlier (a head a
researcher kept). The insider does not hold the signing key."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlalchemy as sa

from safestats.audit.heads import Signer, read_heads
from safestats.audit.log import _chain_hash
from safestats.audit.tree import Frontier, leaf_hash
from safestats.config import Settings
from safestats.service.pipeline import Service, witness_file
from safestats.store.ledger import unexplained_spends

SPRING = "2017-spring"


def _cli_env(service: Service) -> dict[str, str]:
    """The environment the CLI needs to open ``service``'s store, keys and data."""
    s = service.settings
    return {
        "SAFESTATS_DATA_DIR": str(s.data_dir),
        "SAFESTATS_STORE_URL": s.store_url,
        "SAFESTATS_SECRET_KEY_FILE": s.secret_key_file,
        "SAFESTATS_SIGNING_KEY_FILE": s.signing_key_file,
        "SAFESTATS_OUTPUT_CHECKING_DIR": s.output_checking_dir,
    }


@pytest.fixture
def traffic(sample_dir, tmp_path):
    """A service after some dp and sdc traffic, and a head a researcher kept from halfway."""
    settings = Settings.load(
        {},
        data_dir=sample_dir,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        output_checking_dir=str(tmp_path / "o"),
        secret_key_file=str(tmp_path / "secret.key"),
        signing_key_file=str(tmp_path / "signing.key"),
    )
    service = Service(settings)
    analyst, stats = service.identity("demo.analyst"), service.identity("demo.statistician")

    def query(who, by):
        return service.query(
            {
                "v": 1,
                "table": "PupilOnRoll",
                "filters": [["term", "==", SPRING]],
                "group_by": by,
                "aggregates": [["count", None, None, "count"]],
            },
            identity=who,
        )

    for by in (["phase"], ["sex"]):
        query(analyst, by)
    kept = tmp_path / "published-head.json"
    kept.write_text(json.dumps(service.audit.sign_head().to_dict()))
    for by in (["la_code"], ["fsm_eligible"]):
        query(analyst, by)
        query(stats, by)
    assert service.audit.verify().ok and not unexplained_spends(service.ledger, service.audit.records())
    return service, kept


def _rewind(conn, keep: int) -> None:
    """Move the head back to record ``keep``, recomputing the tree's right edge as anyone can."""
    hashes = [
        h for (h,) in conn.execute(sa.text(f"SELECT record_hash FROM audit_log WHERE seq <= {keep} ORDER BY seq"))
    ]
    f = Frontier()
    for h in hashes:
        f.push(leaf_hash(h))
    conn.execute(
        sa.text("UPDATE audit_head SET seq = :s, record_hash = :h, frontier = :f"),
        {"s": keep, "h": hashes[-1] if hashes else "0" * 64, "f": f.to_json()},
    )


def _rechain(conn, records, start: int) -> None:
    """Recompute every link hash from record ``start`` on (the row hash is public); ``records``
    as the insider edited them."""
    records = [r for r in records if r["seq"] >= start]
    prev = (
        "0" * 64
        if start == 1
        else conn.execute(sa.text(f"SELECT record_hash FROM audit_log WHERE seq = {start - 1}")).scalar_one()
    )
    for rec in records:
        digest = _chain_hash(rec["seq"], prev, rec)
        conn.execute(
            sa.text("UPDATE audit_log SET prev_hash = :p, record_hash = :h WHERE seq = :s"),
            {"p": prev, "h": digest, "s": rec["seq"]},
        )
        prev = digest
    _rewind(conn, records[-1]["seq"])


def test_truncating_the_tail_is_detected(traffic):
    service, _ = traffic
    n = service.audit.count()
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM audit_log WHERE seq > {n - 2}"))
        _rewind(conn, n - 2)
    report = service.audit.verify()
    assert not report.ok and "removed" in report.problem


def test_truncating_past_the_newest_heads_in_the_store_is_detected_by_the_witness(traffic):
    service, _ = traffic
    n = service.audit.count()
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM audit_log WHERE seq > {n - 4}"))
        conn.execute(sa.text(f"DELETE FROM audit_tree_head WHERE size > {n - 4}"))
        conn.execute(sa.text(f"DELETE FROM audit_checkpoint WHERE seq > {n - 4}"))
        _rewind(conn, n - 4)
    report = service.audit.verify()
    assert not report.ok and "removed" in report.problem


def test_an_edited_record_with_a_recomputed_chain_is_detected(traffic):
    service, _ = traffic
    records = list(service.audit.records())
    records[1]["cells_released"] = 999
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET cells_released = 999 WHERE seq = 2"))
        _rechain(conn, records, 2)
        conn.execute(sa.text("DELETE FROM audit_tree_head"))
    assert service.audit._verify_chain().ok  # the hash chain alone is fooled
    report = service.audit.verify()
    assert not report.ok and "rewritten" in report.problem


def test_a_forged_release_appended_is_detected(traffic):
    service, _ = traffic
    log = service.audit
    last = list(log.records())[-1]
    forged = {k: v for k, v in last.items() if k != "seq"} | {"outcome": "released", "user": "nobody"}
    unsigned = type(log)(log.engine)  # appending as the insider can: no signing key
    unsigned.append(forged)
    report = log.verify()
    assert not report.ok and "no signed tree head covers" in report.problem


def test_emptying_the_log_is_detected(traffic):
    service, kept = traffic
    with service.audit.engine.begin() as conn:
        for table in ("audit_log", "audit_checkpoint", "audit_tree_head"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
        conn.execute(sa.text("UPDATE audit_head SET seq = 0, record_hash = :g, frontier = '[]'"), {"g": "0" * 64})
    report = service.audit.verify()
    assert not report.ok and "removed" in report.problem
    # with the witness file gone too, nothing the insider can reach remembers the log (the limit
    # docs/audit.md states) — but the head a researcher kept still shows it
    witness_file(service.settings).unlink()
    assert service.audit.verify().ok
    report = service.audit.verify(read_heads([kept]))
    assert not report.ok and "removed" in report.problem


def test_a_refund_in_the_database_is_detected(traffic):
    service, _ = traffic
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE budget_spend SET status = 'cancelled'"))
    assert service.audit.verify().ok  # the log itself is untouched ...
    problems = unexplained_spends(service.ledger, service.audit.records())
    assert problems and "the ledger has cancelled" in problems[0]  # ... but the ledger disagrees with it


def test_a_head_signed_with_another_key_is_refused(traffic, tmp_path):
    service, kept = traffic
    other = Signer(tmp_path / "other.key")
    honest = read_heads([kept])[0]
    forged = other.sign(honest.origin, honest.size, b"\x00" * 32)
    (tmp_path / "forged.json").write_text(json.dumps(forged.to_dict()))
    report = service.audit.verify(read_heads([tmp_path / "forged.json"]))
    assert not report.ok and "signature" in report.problem


def test_the_store_and_its_write_ahead_log_are_private_and_a_backup_holds_every_record(traffic, tmp_path):
    """docs/deployment.md: an SQLite store runs in write-ahead-log mode; the store, its log and
    its shared-memory index are the service user's alone (another local user reads none of
    them), and SQLite's backup of the live store holds every record the service wrote."""
    import os
    import stat

    service, _ = traffic
    path = service.settings.store_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as live:
        assert live.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
        assert mode & 0o077 == 0, (suffix, oct(mode))
    copy = tmp_path / "backup.db"
    with sqlite3.connect(path) as live, sqlite3.connect(copy) as out:
        live.backup(out)
    with sqlite3.connect(copy) as out:
        backed_up = out.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    assert backed_up == len(list(service.audit.records())) > 0


def test_a_rewritten_store_is_detected_offline_with_only_the_public_key_and_an_old_head(traffic, tmp_path):
    """A researcher holding the public key and a head published earlier verifies a copy of the
    store in which the insider rewrote a record, recomputed everything public, and deleted every
    head the service kept (in the store and in the witness file)."""
    from safestats.audit.heads import load_public_key
    from safestats.audit.log import AuditLog

    service, kept = traffic
    copy = tmp_path / "copy.db"
    with sqlite3.connect(service.settings.store_url.removeprefix("sqlite:///")) as live, sqlite3.connect(copy) as out:
        live.backup(out)  # a copy of the live store (its write-ahead log included)
    log = AuditLog.open(f"sqlite:///{copy}", public_key=load_public_key(service.settings.signing_key_file + ".pub"))
    records = list(log.records())
    records[0]["user"] = "someone else"
    with log.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET user = 'someone else' WHERE seq = 1"))
        _rechain(conn, records, 1)
        conn.execute(sa.text("DELETE FROM audit_tree_head"))
    assert not log.verify().ok  # the service's own releases are not covered any more
    report = log.verify(read_heads([kept]))
    assert not report.ok and "rewritten" in report.problem


def test_the_cli_verifies_against_a_published_head(traffic, capsys):
    from safestats.cli import main

    service, kept = traffic
    env = _cli_env(service)
    assert main(["audit", "verify", "--head", str(kept)], environ=env) == 0
    out = capsys.readouterr().out
    assert "signed tree heads" in out and "ledger agrees" in out, out
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE budget_spend SET status = 'cancelled'"))
    assert main(["audit", "verify", "--head", str(kept)], environ=env) != 0
    assert "ledger disagrees" in capsys.readouterr().err


def test_a_budget_raised_in_the_database_is_detected(traffic):
    from safestats.store.ledger import unexplained_budgets

    service, _ = traffic
    records = list(service.audit.records())
    assert unexplained_budgets(service.ledger, records, service.default_budget) == []
    service.set_budget("demo.analyst", __import__("fractions").Fraction(20))  # audited: fine
    records = list(service.audit.records())
    assert unexplained_budgets(service.ledger, records, service.default_budget) == []
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE budget_allowance SET total = '1000'"))
    problems = unexplained_budgets(service.ledger, records, service.default_budget)
    assert problems and "in the ledger but 20 in the audit log" in problems[0]


def test_a_running_total_lowered_in_the_database_is_detected(traffic, capsys):
    """The insider lowers the budget's running total (the spends and the log untouched): the
    next balance believes it, and `audit verify` shows the ledger disagreeing with itself."""
    from safestats.cli import main
    from safestats.store.ledger import unexplained_budgets

    service, kept = traffic
    analyst = service.identity("demo.analyst")
    spent = service.budget(identity=analyst)["spent"]
    assert spent != "0"
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE budget_allowance SET spent = '0' WHERE user = 'demo.analyst'"))
    assert service.budget(identity=analyst)["spent"] == "0"  # the refund took ...
    problems = unexplained_budgets(service.ledger, list(service.audit.records()), service.default_budget)
    assert problems and f"running total for {service.budget(identity=analyst)['period']} is 0" in problems[0]
    assert f"add up to {spent}" in problems[0]  # ... and verification names what it should be
    env = _cli_env(service)
    capsys.readouterr()
    assert main(["audit", "verify", "--head", str(kept)], environ=env) != 0
    assert "ledger disagrees" in capsys.readouterr().err


def test_a_consistency_proof_shows_the_log_only_grew_offline(traffic, tmp_path, capsys):
    """A researcher with a head kept earlier asks for a proof that the log extends it, and checks
    it with the public key alone; against a rewritten log the service cannot produce one."""
    from safestats.cli import main

    service, kept = traffic
    env = _cli_env(service)
    assert main(["audit", "prove", "--old", str(kept)], environ=env) == 0
    proof = tmp_path / "proof.json"
    proof.write_text(capsys.readouterr().out)
    assert (
        main(
            ["audit", "check-proof", str(proof), "--public-key", service.settings.signing_key_file + ".pub"], environ={}
        )
        == 0
    )
    assert "only grew" in capsys.readouterr().out
    # the insider rewrites record 1 (recomputing everything public): the new head's tree no longer extends the old
    records = list(service.audit.records())
    records[0]["user"] = "someone else"
    with service.audit.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET user = 'someone else' WHERE seq = 1"))
        _rechain(conn, records, 1)
    assert main(["audit", "prove", "--old", str(kept)], environ=env) == 0
    proof.write_text(capsys.readouterr().out)
    assert (
        main(
            ["audit", "check-proof", str(proof), "--public-key", service.settings.signing_key_file + ".pub"], environ={}
        )
        != 0
    )
    assert "rewritten" in capsys.readouterr().err
