"""The audit log, the ledger and the cache behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest
import sqlalchemy as sa

import safestats as ss
from safestats.audit.log import AuditLog
from safestats.config import Settings
from safestats.query.model import Aggregate, Filter, Query
from safestats.service.pipeline import Service
from safestats.store.ledger import BudgetExceeded, current_period
from safestats.store.migrations import MIGRATIONS, migrate, schema_version


@pytest.fixture
def make_service(sample_dir, any_store_url):
    def make():
        return Service(Settings.load({}, data_dir=sample_dir, store_url=any_store_url))

    return make


def _q(age: int, eps: str = "1/4"):
    return ss.Query("PupilOnRoll", (ss.Aggregate("count"),), ("phase",), (ss.Filter("age", "==", age),), epsilon=eps)


def test_migrations_are_versioned_and_idempotent(any_store_url):
    log = AuditLog.open(any_store_url)
    assert schema_version(log.engine) == len(MIGRATIONS)
    assert migrate(log.engine) == []  # nothing left to apply


def test_exact_budget_cache_and_audit(make_service):
    service = make_service()
    service.set_budget("demo.analyst", Fraction(1))
    who = service.identity("demo.analyst")
    for age in (5, 6, 7):
        service.query(_q(age, "1/3").to_wire(), identity=who)
    with pytest.raises(BudgetExceeded, match="has 0 left of 1"):
        service.query(_q(8, "1/3").to_wire(), identity=who)
    again = service.query(_q(5, "1/3").to_wire(), identity=who)  # cached: no spend, no refusal
    assert again["meta"]["cached_from"] is not None
    restarted = make_service()
    assert restarted.budget(identity=who)["left"] == "0"
    assert restarted.audit.verify().ok


def test_concurrent_queries_never_overspend(make_service):
    services = [make_service() for _ in range(3)]
    services[0].set_budget("demo.analyst", Fraction(1))
    outcomes: list[str] = []

    def fire(i: int) -> None:
        svc = services[i % 3]
        try:
            svc.query(_q(4 + i).to_wire(), identity=svc.identity("demo.analyst"))
            outcomes.append("released")
        except BudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 8 + ["released"] * 4
    log = services[0].audit
    assert log.verify().ok and log.count() == 13
    seqs = [r["seq"] for r in log.records()]
    assert seqs == list(range(1, 14))  # none lost, none duplicated


def test_audit_log_is_append_only_for_the_service_role_on_postgresql(pg_cluster):
    from safestats.store.migrations import harden_postgres

    url = pg_cluster.new_database()
    admin = AuditLog.open(url)
    admin.append({"user": "x", "outcome": "released"})
    with admin.engine.begin() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS safestats_service")
        conn.exec_driver_sql("CREATE ROLE safestats_service LOGIN")
        database = url.rsplit("/", 1)[1]
        conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {database} TO safestats_service")
    harden_postgres(admin.engine, "safestats_service")
    service_url = url.replace("postgres@", "safestats_service@")
    log = AuditLog(sa.create_engine(service_url))
    assert log.append({"user": "y", "outcome": "released"}) == 2
    for statement in ("UPDATE audit_log SET reason = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            with log.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    assert log.verify().ok


def test_the_service_runs_as_its_hardened_role_on_postgresql(pg_cluster, sample_dir, tmp_path):
    """The grants come from the schema (store/schema.py ACCESS): a service whose PostgreSQL
    role has only those can do everything it does — dp and sdc releases, the cross-table
    structure, kept results, named releases, users and tokens — and still cannot rewrite the log."""
    from safestats.store.migrations import harden_postgres
    from safestats.store.schema import ACCESS, metadata

    assert set(ACCESS) == set(metadata.tables)  # every table has its access declared
    url = pg_cluster.new_database()
    admin = AuditLog.open(url)
    with admin.engine.begin() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS safestats_svc2")
        conn.exec_driver_sql("CREATE ROLE safestats_svc2 LOGIN")
        conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {url.rsplit('/', 1)[1]} TO safestats_svc2")
    harden_postgres(admin.engine, "safestats_svc2")
    service_url = url.replace("postgres@", "safestats_svc2@")
    service = Service(
        Settings.load({}, data_dir=sample_dir, store_url=service_url, output_checking_dir=str(tmp_path / "out"))
    )
    service.users.add_user("erin", groups=["I_STORE_SC_USERS"], organisation="DfE")
    assert service.users.issue_token("erin")
    analyst, stats = service.identity("demo.analyst"), service.identity("demo.statistician")
    q = Query("PupilOnRoll", (Aggregate("count"),), ("phase",), (Filter("term", "==", "2017-spring"),))
    dp = service.query(q.to_wire(), identity=analyst)
    assert service.query(q.to_wire(), identity=analyst)["meta"]["cached_from"] == dp["meta"]["audit_id"]
    sdc = service.query(q.to_wire(), identity=stats)
    saved = service.save_release(identity=stats, audit_id=sdc["meta"]["audit_id"], name="phase")
    assert saved["manifest"]["name"] == "phase"
    assert service.audit.verify().ok
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        with service.audit.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM audit_log")


def test_on_sqlite_readers_wait_for_no_writer_and_writers_still_queue(sample_dir, store_url):
    """A read (authentication, balance, the audit log and its verification) takes a snapshot
    while another connection holds the write lock, and sees only what was committed; a second
    writer (a budget reservation) still waits for the first."""
    service = Service(Settings.load({}, data_dir=sample_dir, store_url=store_url))
    service.users.add_user("ann", groups=["I_STORE_SC_USERS"], organisation="DfE")
    token = service.users.issue_token("ann")
    service.set_budget("ann", Fraction(1))
    who = service.identity("ann")
    service.query(_q(5, "1/4").to_wire(), identity=who)
    records = service.audit.count()
    d = service.policy.disclosure_for(who)
    account = ("ann", service.catalog.dataset, current_period(d.period), d.unit)

    def in_thread(work):
        out: dict[str, object] = {}
        thread = threading.Thread(target=lambda: out.setdefault("value", work()), daemon=True)
        thread.start()
        return thread, out

    from safestats.store.schema import audit_table

    holder = service.audit.engine.connect()
    writing = holder.begin()  # BEGIN IMMEDIATE: the write lock, held
    holder.execute(sa.update(audit_table).where(audit_table.c.seq == -1).values(user="nobody"))
    try:
        reads = {
            "user": lambda: service.users.authenticate(token),
            "left": lambda: service.ledger.balance(*account, d.budget).left,
            "records": lambda: len(list(service.audit.records())),
            "verified": lambda: service.audit.verify().ok,
        }
        for name, work in reads.items():
            thread, out = in_thread(work)
            thread.join(5)
            assert not thread.is_alive(), f"{name} waited for the writer"
            assert out["value"] == {"user": "ann", "left": Fraction(3, 4), "records": records, "verified": True}[name]
        ledger = service.ledger
        thread, out = in_thread(lambda: ledger.reserve(*account, Fraction(1, 8), default=d.budget)[1].spent)
        thread.join(1)
        assert thread.is_alive(), "a second writer did not wait for the first"
    finally:
        writing.commit()
        holder.close()
    thread.join(10)
    assert not thread.is_alive() and out["value"] == Fraction(3, 8)


def test_on_sqlite_a_process_s_writers_take_turns_and_every_ending_hands_on(store_url):
    """Writers in one process wait on the process's own lock before SQLite's (store/db.py:
    _WriterGate): a second writer waits while the first holds the write lock, and whichever way
    the first ends (commit, rollback, an exception in its block, a connection closed with its
    write open), the next goes on. 16 threads appending at once all land, in one verified chain."""
    from safestats.store.db import open_store
    from safestats.store.schema import audit_table

    engine = open_store(store_url)
    log = AuditLog(engine)
    log.append({"operation": "setup", "user": "admin", "outcome": "released"})
    touch = sa.update(audit_table).where(audit_table.c.seq == -1).values(user="nobody")

    def commit(conn):
        conn.commit()

    def rollback(conn):
        conn.rollback()

    def close(conn):
        conn.close()  # the write transaction open: rolled back as the connection goes back

    def raise_inside(_conn):
        with pytest.raises(RuntimeError), engine.begin() as conn:  # a block that fails part-way
            conn.execute(touch)
            raise RuntimeError("the block failed")

    for name, end in {"commit": commit, "rollback": rollback, "close": close, "exception": raise_inside}.items():
        conn = engine.connect()
        if name != "exception":
            conn.execute(touch)  # autobegin: BEGIN IMMEDIATE, the gate and the write lock held
            waiting = threading.Thread(target=log.append, args=({"operation": name, "user": "b", "outcome": "x"},))
            waiting.start()
            waiting.join(0.3)
            assert waiting.is_alive(), f"{name}: a second writer did not wait for the first"
        else:
            waiting = None
        end(conn)
        conn.close()
        after = threading.Thread(target=log.append, args=({"operation": f"after {name}", "user": "c", "outcome": "x"},))
        after.start()
        for thread in (waiting, after):
            if thread is not None:
                thread.join(10)
                assert not thread.is_alive(), f"after a {name} the next writer never went on"
    before = log.count()
    errors: list[BaseException] = []

    def appends(k: int) -> None:
        try:
            for j in range(10):
                log.append({"operation": f"w{k}.{j}", "user": f"u{k}", "outcome": "released"})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=appends, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert log.count() == before + 160
    assert log.verify().ok


_WRITER = """
import sys, threading
from safestats.audit.log import AuditLog
from safestats.store.db import open_store
engine = open_store(sys.argv[1])
log = AuditLog(engine)
if sys.argv[2] == "hold":  # take the write turn and never let go: the parent kills us
    conn = engine.connect()
    conn.exec_driver_sql("UPDATE audit_log SET user = user WHERE seq = -1")
    print("holding", flush=True)
    threading.Event().wait()
def appends(k):
    for j in range(15):
        log.append({"operation": f"{sys.argv[2]}.{k}.{j}", "user": "u", "outcome": "released"})
threads = [threading.Thread(target=appends, args=(k,)) for k in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_on_sqlite_writers_of_several_processes_take_turns_and_a_dead_one_lets_go(store_url, tmp_path):
    """Writers of several processes (``serve --workers``, the CLI) take turns on SQLite's own
    lock, each after its own process's: three processes of three threads each append at once and
    every record lands in one verified chain; a process killed while it holds the write lock
    lets go of it, and the next writer goes on at once rather than after SQLite's 30 s timeout."""
    import subprocess
    import sys
    import time

    from safestats.store.db import open_store

    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    log = AuditLog(open_store(store_url))
    log.append({"operation": "setup", "user": "admin", "outcome": "released"})
    procs = [subprocess.Popen([sys.executable, str(script), store_url, f"p{i}"]) for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert log.count() == 1 + 3 * 3 * 15 and log.verify().ok
    holder = subprocess.Popen([sys.executable, str(script), store_url, "hold"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    waiting = threading.Thread(target=log.append, args=({"operation": "after", "user": "b", "outcome": "x"},))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive(), "a writer did not wait for another process's"
    holder.kill()
    holder.wait()
    holder.stdout.close()
    started = time.monotonic()
    waiting.join(20)
    assert not waiting.is_alive() and time.monotonic() - started < 10
    assert log.count() == 2 + 3 * 3 * 15 and log.verify().ok


def _spends_sum(ledger, user: str, unit: str = "epsilon") -> tuple[Fraction, Fraction]:
    live = [s for s in ledger.spends(user) if s["status"] != "cancelled" and s["unit"] == unit]
    return (
        sum((Fraction(s["amount"]) for s in live), Fraction(0)),
        sum((Fraction(s["delta"]) for s in live if s["delta"]), Fraction(0)),
    )


def test_the_running_total_is_every_spend_exactly(any_store_url):
    """The balance comes from the allowance row's running total, kept in each reservation's and
    cancellation's transaction; it equals the sum of the spends that are not cancelled, in ε
    and in δ, through reservations, cancellations, a new budget and a change of unit."""
    from safestats.store.db import open_store
    from safestats.store.ledger import Ledger

    ledger = Ledger(open_store(any_store_url))
    account = ("ann", "school_census", "2017-Q1")
    ids = []
    for i in range(1, 8):
        rid, bal = ledger.reserve(
            *account,
            "epsilon",
            Fraction(1, 7 * i),
            default=Fraction(2),
            delta=Fraction(1, 10**9),
            delta_total=Fraction(1, 10**6),
        )
        ids.append(rid)
        assert (bal.spent, bal.delta_spent) == _spends_sum(ledger, "ann")
    ledger.commit(ids[0], None)
    ledger.cancel(ids[1])
    ledger.cancel(ids[1])  # twice: refunds once
    ledger.cancel(ids[0])  # committed: not refunded
    bal = ledger.balance(*account, "epsilon", Fraction(2), Fraction(1, 10**6))
    assert (bal.spent, bal.delta_spent) == _spends_sum(ledger, "ann")
    assert bal.spent == sum(Fraction(1, 7 * i) for i in range(1, 8) if i != 2)
    assert bal.delta_spent == Fraction(6, 10**9)
    dt = Fraction(1, 10**6)
    ledger.set_budget(*account, "epsilon", Fraction(1, 2))  # a new total keeps what was spent
    assert ledger.balance(*account, "epsilon", Fraction(2)).spent == bal.spent
    with pytest.raises(BudgetExceeded):
        ledger.reserve(
            *account, "epsilon", Fraction(1, 2) - bal.spent + Fraction(1, 10**12), default=Fraction(2), delta_total=dt
        )
    ledger.reserve(*account, "epsilon", Fraction(1, 2) - bal.spent, default=Fraction(2), delta_total=dt)  # all left
    assert ledger.balance(*account, "epsilon", Fraction(2)).left == 0
    ledger.set_budget(*account, "rho", Fraction(1))  # another unit: its own spends (none yet)
    assert ledger.balance(*account, "rho", Fraction(2)).spent == 0
    from safestats.store.ledger import unexplained_budgets

    assert not [p for p in unexplained_budgets(ledger, [], lambda _: None) if "running total" in p]


def test_spends_the_running_total_has_not_counted_are_still_counted(any_store_url):
    """A store migrated from before the running total, or a spend written by an older service
    beside this one, has spends after the row's counted mark: a balance adds them, and the next
    reservation folds them into the total."""
    from safestats.store.db import open_store
    from safestats.store.ledger import Ledger
    from safestats.store.schema import allowance_table, spend_table

    engine = open_store(any_store_url)
    ledger = Ledger(engine)
    account = ("bob", "school_census", "2017-Q1")
    ledger.reserve(*account, "epsilon", Fraction(1, 4), default=Fraction(1))
    with engine.begin() as conn:  # as an older service writes: the spend row alone
        conn.execute(
            spend_table.insert().values(
                user="bob",
                dataset="school_census",
                period="2017-Q1",
                unit="epsilon",
                amount="1/3",
                status="committed",
                query_hash="",
                time_utc="2017-01-01T00:00:00+00:00",
            )
        )
    assert ledger.balance(*account, "epsilon", Fraction(1)).spent == Fraction(1, 4) + Fraction(1, 3)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(*account, "epsilon", Fraction(1, 2), default=Fraction(1))
    _, bal = ledger.reserve(*account, "epsilon", Fraction(5, 12), default=Fraction(1))
    assert bal.left == 0
    with engine.begin() as conn:  # as a store before migration 13 has it: nothing counted
        conn.execute(allowance_table.update().values(spent=None, delta_spent=None, counted_to=None))
    assert Ledger(engine).balance(*account, "epsilon", Fraction(1)).left == 0
    with pytest.raises(BudgetExceeded):
        Ledger(engine).reserve(*account, "epsilon", Fraction(1, 10**9), default=Fraction(1))


def test_a_reservation_waiting_on_a_new_budget_reads_it(any_store_url):
    """The data owner lowers a budget while a reservation waits on the allowance row: once the
    new budget commits, the reservation is checked against it, not against the policy's default
    (on PostgreSQL a row deleted and written again would vanish under the waiting reservation)."""
    from sqlalchemy import event

    from safestats.store.db import open_store
    from safestats.store.ledger import Ledger

    engine = open_store(any_store_url)
    ledger = Ledger(engine)
    account = ("cat", "school_census", "2017-Q1")
    ledger.reserve(*account, "epsilon", Fraction(1, 100), default=Fraction(1))  # the row exists
    written, go = threading.Event(), threading.Event()

    def pause(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE BUDGET_ALLOWANCE SET UNIT"):
            written.set()  # the new budget is written, not yet committed: the row is locked
            go.wait(10)

    event.listen(engine, "after_cursor_execute", pause)
    owner = threading.Thread(target=ledger.set_budget, args=(*account, "epsilon", Fraction(1, 10)))
    owner.start()
    assert written.wait(10)
    outcome: dict[str, object] = {}

    def reserve() -> None:
        try:
            outcome["left"] = ledger.reserve(*account, "epsilon", Fraction(1, 2), default=Fraction(1))[1].left
        except BudgetExceeded as e:
            outcome["refused"] = str(e)

    analyst = threading.Thread(target=reserve)
    analyst.start()
    analyst.join(1.0)
    assert analyst.is_alive(), "the reservation did not wait for the budget being set"
    go.set()
    owner.join(10)
    analyst.join(30)
    event.remove(engine, "after_cursor_execute", pause)
    assert "left" not in outcome and "1/10" in str(outcome.get("refused")), outcome
    assert ledger.balance(*account, "epsilon", Fraction(1)).spent == Fraction(1, 100)


def test_a_running_total_of_hundreds_of_digits_is_kept_exactly(any_store_url):
    """Spends of ε = 1/100, 1/101, … 1/179 make a running total whose denominator (their least
    common multiple) has over 60 digits, and ρ = ε²/2 of a 60-character ε has 120: every store
    keeps them exactly (PostgreSQL refused them in VARCHAR(100), and every later dp request of
    that user failed with a 500)."""
    from safestats.store.db import open_store
    from safestats.store.ledger import Ledger
    from safestats.store.migrations import migrate

    engine = open_store(any_store_url)
    migrate(engine)
    ledger = Ledger(engine)
    account = ("ann", "school_census", "2017-Q1")
    spends = [Fraction(1, 100 + i) for i in range(80)]
    for amount in spends:
        ledger.reserve(*account, "epsilon", amount, default=Fraction(10))
    long_rho = Fraction(1, 10**59 + 7) ** 2 / 2
    ledger.reserve(*account, "epsilon", long_rho, default=Fraction(10))
    bal = ledger.balance(*account, "epsilon", Fraction(10))
    assert bal.spent == sum(spends) + long_rho and len(str(bal.spent)) > 200
    assert bal.left == Fraction(10) - bal.spent
    assert Ledger(open_store(any_store_url)).balance(*account, "epsilon", Fraction(10)).spent == bal.spent


def test_a_store_migrated_from_the_narrow_columns_takes_long_fractions(pg_cluster):
    """A PostgreSQL store made before migration 14 (the ledger's fractions in VARCHAR(100)) is
    widened when the service opens it, and then keeps a long running total."""
    from safestats.store.db import open_store
    from safestats.store.ledger import Ledger
    from safestats.store.migrations import migrate

    url = pg_cluster.new_database()
    engine = open_store(url)
    migrate(engine)
    with engine.begin() as conn:  # as migration 13 left it
        conn.exec_driver_sql(
            "ALTER TABLE budget_allowance ALTER COLUMN total TYPE VARCHAR(100), "
            "ALTER COLUMN spent TYPE VARCHAR(100), ALTER COLUMN delta_spent TYPE VARCHAR(100)"
        )
        conn.exec_driver_sql(
            "ALTER TABLE budget_spend ALTER COLUMN amount TYPE VARCHAR(100), ALTER COLUMN delta TYPE VARCHAR(100)"
        )
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 14")
    ledger = Ledger(engine)
    account = ("ann", "school_census", "2017-Q1")
    with pytest.raises(sa.exc.DataError):  # the failure the migration removes
        for i in range(80):
            ledger.reserve(*account, "epsilon", Fraction(1, 100 + i), default=Fraction(10))
    assert migrate(engine) == [14]
    for i in range(80):
        ledger.reserve(*account, "epsilon", Fraction(1, 200 + i), default=Fraction(10))
    assert len(str(ledger.balance(*account, "epsilon", Fraction(10)).spent)) > 100
