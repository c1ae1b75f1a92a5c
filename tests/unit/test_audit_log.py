"""The audit log: the hash chain, tamper detection, concurrency and failing closed.

The same tests run on SQLite and on PostgreSQL (``any_store_url``).
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import sqlalchemy as sa

from safestats.audit.log import AuditLog
from safestats.errors import AuditFailure, AuditIntegrityError


def _rec(i: int, **kw):
    return {
        "user": f"user{i % 3}",
        "operation": "query",
        "outcome": "released",
        "tables": ["PupilOnRoll"],
        "fields_returned": ["la_code", "count"],
        "cells_released": i,
        **kw,
    }


@pytest.fixture
def log(any_store_url):
    log = AuditLog.open(any_store_url)
    for i in range(1, 11):
        assert log.append(_rec(i)) == i
    return log


class _Raw:
    """Plain SQL on the store, as a tamperer with database access would use it."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql, params=()):
        names = {f"p{i}": v for i, v in enumerate(params)}
        for i in range(len(params)):
            sql = sql.replace("?", f":p{i}", 1)
        return self.conn.execute(sa.text(sql.replace(" user ", ' "user" ').replace("SET user", 'SET "user"')), names)


@contextlib.contextmanager
def _db(log):
    with log.engine.begin() as conn:
        yield _Raw(conn)


def test_records_round_trip_and_verify(log):
    assert log.verify().ok and log.verify().records == 10
    recs = list(log.records())
    assert [r["seq"] for r in recs] == list(range(1, 11))
    assert recs[0]["fields_returned"] == ["la_code", "count"] and recs[0]["time_utc"].endswith("+00:00")


def test_an_edited_record_is_detected(log):
    with _db(log) as db:
        db.execute("UPDATE audit_log SET cells_released = 999 WHERE seq = 4")
    report = log.verify()
    assert not report.ok and report.first_bad == 4 and "changed" in report.problem
    with pytest.raises(AuditIntegrityError, match="record 4"):
        log.ensure_intact()


def test_an_edit_that_recomputes_the_hash_still_breaks_the_link(log):
    from safestats.audit.log import _chain_hash

    rec = next(r for r in log.records() if r["seq"] == 4)
    rec["user"] = "someone.else"
    with _db(log) as db:
        prev = db.execute("SELECT prev_hash FROM audit_log WHERE seq = 4").fetchone()[0]
        db.execute(
            "UPDATE audit_log SET user = ?, record_hash = ? WHERE seq = 4", ("someone.else", _chain_hash(4, prev, rec))
        )
    report = log.verify()
    assert not report.ok and report.first_bad == 5


def test_a_deleted_record_is_detected(log):
    with _db(log) as db:
        db.execute("DELETE FROM audit_log WHERE seq = 6")
    report = log.verify()
    assert not report.ok and report.first_bad == 6 and "missing" in report.problem


def test_deleting_the_newest_records_is_detected(log):
    with _db(log) as db:
        db.execute("DELETE FROM audit_log WHERE seq >= 9")
    report = log.verify()
    assert not report.ok and "removed" in report.problem


def test_reordered_records_are_detected(log):
    with _db(log) as db:  # swap the contents of records 2 and 3, keeping sequence numbers
        db.execute("UPDATE audit_log SET seq = -2 WHERE seq = 2")
        db.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        db.execute("UPDATE audit_log SET seq = 3 WHERE seq = -2")
    report = log.verify()
    assert not report.ok and report.first_bad == 2


def test_an_empty_log_verifies(any_store_url):
    assert AuditLog.open(any_store_url).verify().ok


def test_concurrent_appends_keep_one_chain(any_store_url):
    url = any_store_url
    logs = [AuditLog.open(url) for _ in range(4)]  # separate engines, like separate processes
    seqs: list[int] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for i in range(25):
            s = logs[k].append(_rec(i, user=f"t{k}"))
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 101))
    assert logs[0].verify().ok and logs[0].count() == 100


def test_a_read_only_store_fails_closed(tmp_path):
    path = tmp_path / "audit.db"
    AuditLog.open(f"sqlite:///{path}").append(_rec(1))
    ro = AuditLog(sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))
    with pytest.raises(AuditFailure, match="nothing was released"):
        ro.append(_rec(2))
    assert AuditLog.open(f"sqlite:///{path}").count() == 1


def test_unknown_fields_are_refused(log):
    with pytest.raises(AuditFailure, match="unknown fields"):
        log.append({"user": "x", "password": "hunter2"})
    assert log.count() == 10


def test_time_range_reads(log):
    recs = list(log.records())
    mid = recs[5]["time_utc"]
    assert all(r["time_utc"] >= mid for r in log.records(start=mid))
    assert all(r["time_utc"] < mid for r in log.records(end=mid))


def test_signed_checkpoints_catch_a_rewritten_chain(any_store_url):
    """Someone who can write the database recomputes every hash after an edit: the chain then
    verifies on its own, but the checkpoints signed with the service's key do not."""
    from safestats.audit.log import _chain_hash

    key = b"k" * 32
    log = AuditLog.open(any_store_url, key=key, checkpoint_every=4)
    for i in range(1, 11):
        log.append(_rec(i))
    report = log.verify()
    assert report.ok and report.checkpoints == 2  # at records 4 and 8
    assert log.checkpoint() == 10 and log.verify().checkpoints == 3
    # rewrite record 3 and every hash after it, and the head, as a tamperer would
    records = list(log.records())
    records[2]["cells_released"] = 999
    with log.engine.begin() as conn:
        prev = conn.execute(sa.text("SELECT record_hash FROM audit_log WHERE seq = 2")).scalar_one()
        for rec in records[2:]:
            digest = _chain_hash(rec["seq"], prev, rec)
            conn.execute(
                sa.text("UPDATE audit_log SET cells_released = :c, prev_hash = :p, record_hash = :h WHERE seq = :s"),
                {"c": rec["cells_released"], "p": prev, "h": digest, "s": rec["seq"]},
            )
            prev = digest
        conn.execute(sa.text("UPDATE audit_head SET record_hash = :h"), {"h": prev})
    assert AuditLog(log.engine)._verify_chain().ok  # the chain alone is fooled ...
    report = log.verify()
    assert not report.ok and report.first_bad == 4 and "rewritten" in report.problem  # ... the checkpoints are not
    # and a forged checkpoint needs the key
    with log.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE audit_checkpoint SET record_hash = (SELECT record_hash FROM audit_log "
                "WHERE audit_log.seq = audit_checkpoint.seq)"
            )
        )
    report = log.verify()
    assert not report.ok and "signature" in report.problem


@pytest.mark.parametrize("tamper", ["none", "edit", "delete", "swap"])
def test_the_two_process_verification_agrees_with_the_plain_one(log, tamper):
    if tamper == "edit":
        with _db(log) as db:
            db.execute("UPDATE audit_log SET cells_released = 999 WHERE seq = 7")
    elif tamper == "delete":
        with _db(log) as db:
            db.execute("DELETE FROM audit_log WHERE seq = 6")
    elif tamper == "swap":
        with _db(log) as db:
            db.execute("UPDATE audit_log SET seq = -5 WHERE seq = 5")
            db.execute("UPDATE audit_log SET seq = 5 WHERE seq = 6")
            db.execute("UPDATE audit_log SET seq = 6 WHERE seq = -5")
    plain = log._verify_chain(parallel_from=10**9)
    split = log._verify_chain(parallel_from=2)
    assert (plain.ok, plain.first_bad) == (split.ok, split.first_bad)
    assert plain.ok == (tamper == "none")


FUTURE = """
import sys
import sqlalchemy as sa
import safestats.audit.log as log_module
from safestats.audit.log import AuditLog

url = sys.argv[1]
log = AuditLog.open(url)
for i in range(3):
    log.append({"user": f"u{i}", "operation": "query", "outcome": "answered"})
# a later version adds an audit field: a column, FIELDS, and the next record format
with log.engine.begin() as conn:
    conn.exec_driver_sql("ALTER TABLE audit_log ADD COLUMN project TEXT")
log_module.audit_table.append_column(sa.Column("project", sa.Text, nullable=True))
log_module.FIELDS = (*log_module.FIELDS, ("project", sa.Text))
log_module.FIELD_NAMES = tuple(n for n, _ in log_module.FIELDS)
nxt = max(log_module.FORMATS) + 1
log_module.FORMATS[nxt] = log_module.FIELD_NAMES
log_module.RECORD_FORMAT = nxt
for i in range(2):
    log.append({"user": f"v{i}", "operation": "query", "outcome": "answered", "project": "quality work"})
report = log.verify()
assert report.ok and report.records == 5, report
assert [r["project"] for r in log.records()] == [None, None, None, "quality work", "quality work"]
with log.engine.begin() as conn:  # an old record cannot gain the new field unseen ...
    conn.exec_driver_sql("UPDATE audit_log SET project = 'sneaked in' WHERE seq = 1")
bad = log.verify()
assert not bad.ok and bad.first_bad == 1, bad
with log.engine.begin() as conn:
    conn.exec_driver_sql("UPDATE audit_log SET project = NULL WHERE seq = 1")
    conn.exec_driver_sql("UPDATE audit_log SET user = 'someone' WHERE seq = 2")
bad = log.verify()
assert not bad.ok and bad.first_bad == 2, bad  # ... and every field it had is still pinned
with log.engine.begin() as conn:
    conn.exec_driver_sql("UPDATE audit_log SET user = 'u1' WHERE seq = 2")
    conn.exec_driver_sql("UPDATE audit_log SET project = 'other' WHERE seq = 4")
bad = log.verify()
assert not bad.ok and bad.first_bad == 4, bad  # the new format hashes the new field
print("ok")
"""


def test_adding_an_audit_field_keeps_old_records_verifiable(tmp_path):
    """Migration test: records written before a field existed verify under their own format;
    records of the new format hash the new field too."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'future.db'}"
    done = subprocess.run([sys.executable, "-c", FUTURE, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_sqlite_uri_store_creates_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """A read-only store given as a SQLite URI (``file:PATH?mode=ro``) once made a ``file:``
    folder tree in the working directory; nothing may land there."""
    from safestats.service.pipeline import witness_file
    from safestats.store.db import open_store

    db = tmp_path / "store.db"
    open_store(f"sqlite:///{db}").dispose()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    open_store(url).dispose()  # the schema is in place: read-only opening works
    assert list(work.iterdir()) == []
    from safestats.config import Settings

    assert witness_file(Settings.load({}, store_url=url)) == db.with_name("store.db.heads.jsonl")
