"""Versioned schema migrations, applied by the service itself when it opens its database.

Each migration has a number and a function; ``schema_version`` records the ones applied.
Migrations only add (tables, columns, indexes, grants) or widen a column, so an older service
never meets a table it does not understand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa

from safestats.store.schema import (
    ACCESS,
    GENESIS,
    access_decisions_table,
    access_requests_table,
    agreements_table,
    allowance_table,
    audit_table,
    cache_table,
    checkpoint_table,
    factors_table,
    head_table,
    incidents_table,
    legacy_links_table,
    links_table,
    metadata,
    releases_table,
    results_table,
    sessions_table,
    spend_table,
    tokens_table,
    tree_head_table,
    users_table,
    version_table,
)

__all__ = ["MIGRATIONS", "harden_postgres", "migrate", "schema_version"]


def _v1_core(conn: sa.Connection) -> None:
    """Audit log and head, budget ledger, release cache."""
    for table in (audit_table, head_table, allowance_table, spend_table, cache_table):
        table.create(conn, checkfirst=True)
    # The chain head exists from the start, so concurrent first appends lock the same row.
    if conn.execute(sa.select(head_table.c.id)).first() is None:
        conn.execute(head_table.insert().values(id=1, seq=0, record_hash=GENESIS))


def _v2_users(conn: sa.Connection) -> None:
    """Users managed by the data owner, and their API tokens (salted hashes only)."""

    for table in (users_table, tokens_table):
        table.create(conn, checkfirst=True)


def _v3_checkpoints(conn: sa.Connection) -> None:
    """Signed checkpoints of the audit chain."""

    checkpoint_table.create(conn, checkfirst=True)


def _v4_links(conn: sa.Connection) -> None:
    """What each sdc release published (the cross-table disclosure rule)."""

    legacy_links_table.create(conn, checkfirst=True)


def _v5_releases(conn: sa.Connection) -> None:
    """Released results (by audit record) and named release bundles."""

    for table in (results_table, releases_table):
        table.create(conn, checkfirst=True)


def _v6_domains(conn: sa.Connection) -> None:
    """The published structure of sdc releases per disclosure domain (all users together)."""

    links_table.create(conn, checkfirst=True)


def _v7_tree(conn: sa.Connection) -> None:
    """The Merkle tree of the audit log: its right edge in the head row (filled in for the
    records already there) and the signed tree heads."""
    from safestats.audit.tree import Frontier, leaf_hash  # pure: no tables, no safestats imports

    columns = {c["name"] for c in sa.inspect(conn).get_columns("audit_head")}
    if "frontier" not in columns:
        conn.exec_driver_sql("ALTER TABLE audit_head ADD COLUMN frontier TEXT")
    tree_head_table.create(conn, checkfirst=True)
    frontier = Frontier()
    for (record_hash,) in conn.execute(sa.select(audit_table.c.record_hash).order_by(audit_table.c.seq)):
        frontier.push(leaf_hash(record_hash))
    conn.execute(head_table.update().where(head_table.c.id == 1).values(frontier=frontier.to_json()))


def _v8_formats(conn: sa.Connection) -> None:
    """A record format per audit record, so adding a field keeps old records verifiable."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}
    if "format" not in columns:
        conn.exec_driver_sql("ALTER TABLE audit_log ADD COLUMN format INTEGER")


def _v9_delta(conn: sa.Connection) -> None:
    """δ spent with each budget spend (partition selection), so δ is budgeted like ε."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("budget_spend")}
    if "delta" not in columns:
        conn.exec_driver_sql("ALTER TABLE budget_spend ADD COLUMN delta VARCHAR(100)")


def _v10_second_factor(conn: sa.Connection) -> None:
    """TOTP second factors (sealed seeds) and the short-lived sessions they open."""
    for table in (factors_table, sessions_table):
        table.create(conn, checkfirst=True)


def _v11_incidents(conn: sa.Connection) -> None:
    """Incidents the rules found in the audit log, and their acknowledgements."""
    incidents_table.create(conn, checkfirst=True)


def _v12_access(conn: sa.Connection) -> None:
    """Data access requests, their decisions and the agreements register; audit record format 2
    (the purpose a request declared and the records its release used)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}
    if "purpose" not in columns:
        conn.exec_driver_sql("ALTER TABLE audit_log ADD COLUMN purpose VARCHAR(300)")
    if "records_used" not in columns:
        conn.exec_driver_sql("ALTER TABLE audit_log ADD COLUMN records_used BIGINT")
    for table in (agreements_table, access_requests_table, access_decisions_table):
        table.create(conn, checkfirst=True)


def _v13_running_total(conn: sa.Connection) -> None:
    """The budget's running total on its allowance row, kept in the reservation's transaction,
    so a balance reads one row instead of every spend of the period. Rows already there start
    with nothing counted: their first balance sums their spends, their next reservation keeps it."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("budget_allowance")}
    for name, kind in (("spent", "VARCHAR(100)"), ("delta_spent", "VARCHAR(100)"), ("counted_to", "INTEGER")):
        if name not in columns:
            conn.exec_driver_sql(f"ALTER TABLE budget_allowance ADD COLUMN {name} {kind}")


def _v14_exact_text(conn: sa.Connection) -> None:
    """The ledger's fractions as unbounded text. A running total of spends with different
    denominators has their least common multiple for its own (after 40 spends of ε = 1/100,
    1/101 … it is over 100 digits): PostgreSQL refused to store it in VARCHAR(100), and every
    later dp request of that user failed. SQLite never enforced the width: nothing to do there."""
    if conn.dialect.name != "postgresql":
        return
    widened = (("budget_allowance", ("total", "spent", "delta_spent")), ("budget_spend", ("amount", "delta")))
    for table, columns in widened:
        conn.exec_driver_sql(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} TYPE TEXT" for c in columns))


MIGRATIONS: tuple[tuple[int, str, Callable[[sa.Connection], None]], ...] = (
    (1, "audit log, budget ledger, release cache", _v1_core),
    (2, "users and API tokens", _v2_users),
    (3, "signed audit checkpoints", _v3_checkpoints),
    (4, "published structure of sdc releases", _v4_links),
    (5, "released results and release bundles", _v5_releases),
    (6, "published structure of sdc releases per disclosure domain", _v6_domains),
    (7, "Merkle tree of the audit log and signed tree heads", _v7_tree),
    (8, "a record format per audit record", _v8_formats),
    (9, "delta spent with each budget spend", _v9_delta),
    (10, "second factors (TOTP) and sessions", _v10_second_factor),
    (11, "incidents found in the audit log", _v11_incidents),
    (12, "access requests, decisions and agreements; audit record format 2", _v12_access),
    (13, "the budget's running total on its allowance row", _v13_running_total),
    (14, "the ledger's exact fractions as unbounded text", _v14_exact_text),
)


def schema_version(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(version_table.c.version), 0))).scalar_one())


def migrate(engine: sa.Engine) -> list[int]:
    """Apply the migrations not yet applied, in order; returns the versions applied now."""
    applied = []
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # two processes opening a fresh store migrate one at a time
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7277050263391862637)"))
        version_table.create(conn, checkfirst=True)
        done = set(conn.execute(sa.select(version_table.c.version)).scalars())
        for number, description, step in MIGRATIONS:
            if number in done:
                continue
            step(conn)
            conn.execute(
                version_table.insert().values(
                    version=number,
                    description=description,
                    applied_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                )
            )
            applied.append(number)
    return applied


def harden_postgres(engine: sa.Engine, service_role: str) -> None:
    """Grant the service's role what it needs, and make the audit log append-only for it."""
    if engine.dialect.name != "postgresql":
        raise ValueError("hardening applies to PostgreSQL")
    quoted = engine.dialect.identifier_preparer.quote(service_role)
    with engine.begin() as conn:
        for name in sorted(metadata.tables):  # every table, with the access the schema declares
            grants = ACCESS[name]
            conn.exec_driver_sql(f"GRANT {grants} ON {name} TO {quoted}")
            if "UPDATE" not in grants:
                conn.exec_driver_sql(f"REVOKE UPDATE, DELETE, TRUNCATE ON {name} FROM {quoted}")
        conn.exec_driver_sql(f"GRANT SELECT ON {version_table.name} TO {quoted}")
        conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {quoted}")
