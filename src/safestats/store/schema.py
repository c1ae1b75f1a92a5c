"""The one schema of the service's database: every table, on one ``MetaData``.

Each module that reads or writes a table imports it from here; ``store/migrations.py`` creates
and alters them from here, and the PostgreSQL grants are derived from ``metadata.tables``
(checked by ``tests/unit/test_store_schema.py``). This module imports nothing of safestats.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = [
    "ACCESS",
    "FIELDS",
    "FIELDS_V1",
    "GENESIS",
    "JSON_FIELDS",
    "access_decisions_table",
    "access_requests_table",
    "agreements_table",
    "allowance_table",
    "audit_table",
    "cache_table",
    "checkpoint_table",
    "factors_table",
    "head_table",
    "incidents_table",
    "legacy_links_table",
    "links_table",
    "metadata",
    "releases_table",
    "results_table",
    "sessions_table",
    "spend_table",
    "tokens_table",
    "tree_head_table",
    "users_table",
    "version_table",
]

#: The hash the audit chain starts from (the head row of an empty log).
GENESIS = "0" * 64

metadata = sa.MetaData()

# -- the audit log (audit/log.py) ------------------------------------------------------------------
#: Every field of a record, in the order they are hashed. JSON fields hold lists or objects.
FIELDS: tuple[tuple[str, Any], ...] = (
    ("time_utc", sa.String(32)),
    ("user", sa.String(200)),
    ("groups", sa.Text),
    ("organisation", sa.String(200)),
    ("interaction", sa.String(20)),
    ("client", sa.Text),
    ("dataset", sa.String(200)),
    ("tables", sa.Text),
    ("fields_filter", sa.Text),
    ("fields_group", sa.Text),
    ("fields_measure", sa.Text),
    ("fields_requested", sa.Text),
    ("fields_returned", sa.Text),
    ("operation", sa.String(40)),
    ("outcome", sa.String(20)),
    ("reason", sa.Text),
    ("cells_released", sa.Integer),
    ("cells_suppressed", sa.Integer),
    ("disclosure", sa.Text),
    ("privacy", sa.Text),
    ("label", sa.String(40)),
    ("duration_ms", sa.Integer),
    ("query_hash", sa.String(64)),
    ("query", sa.Text),
    ("snapshot_id", sa.String(64)),
)
#: The fields of record format 1 (audit/log.py FORMATS); format 2 added the purpose the client
#: declared and the records used: the number of distinct pupils in a release's scope (the rows
#: its query's filters select), kept for the data owner's reports and never returned.
FIELDS_V1 = FIELDS
FIELDS = (*FIELDS_V1, ("purpose", sa.String(300)), ("records_used", sa.BigInteger))
JSON_FIELDS = {
    "groups",
    "client",
    "tables",
    "fields_filter",
    "fields_group",
    "fields_measure",
    "fields_requested",
    "fields_returned",
    "disclosure",
    "privacy",
    "query",
}

audit_table = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    *(sa.Column(name, type_, nullable=True) for name, type_ in FIELDS),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
    sa.Column("format", sa.Integer, nullable=True),  # the record format (FORMATS); empty: 1
    sa.Index("ix_audit_log_time_utc", "time_utc"),
)
checkpoint_table = sa.Table(
    "audit_checkpoint",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
    sa.Column("time_utc", sa.String(32), nullable=False),
)
head_table = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
    # the Merkle tree's right edge (audit/tree.py), extended in the same transaction as each append
    sa.Column("frontier", sa.Text, nullable=True),
)
#: Signed tree heads (audit/heads.py); the same heads are also appended to the witness file.
tree_head_table = sa.Table(
    "audit_tree_head",
    metadata,
    sa.Column("size", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("head", sa.Text, nullable=False),
)

# -- the budget ledger and the release cache (privacy/) ----------------------------------------------
allowance_table = sa.Table(
    "budget_allowance",
    metadata,
    sa.Column("user", sa.String(200), primary_key=True),
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("period", sa.String(20), primary_key=True),
    sa.Column("unit", sa.String(10), nullable=False),
    # exact fractions as text, unbounded: a running total's denominator is the least common
    # multiple of its spends' (hundreds of digits after a few dozen different ε), so no width fits
    sa.Column("total", sa.Text, nullable=False),
    sa.Column("set_by", sa.String(200), nullable=False),
    sa.Column("time_utc", sa.String(32), nullable=False),
    # the running total: ε (or ρ) and δ of the spends of this key and unit with id <= counted_to
    # that are not cancelled (empty: none counted yet); a balance adds only the spends after it
    sa.Column("spent", sa.Text, nullable=True),
    sa.Column("delta_spent", sa.Text, nullable=True),
    sa.Column("counted_to", sa.Integer, nullable=True),
)
spend_table = sa.Table(
    "budget_spend",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("period", sa.String(20), nullable=False),
    sa.Column("unit", sa.String(10), nullable=False),
    sa.Column("amount", sa.Text, nullable=False),  # ρ = ε²/2 of a 60-character ε has 120
    sa.Column("delta", sa.Text, nullable=True),  # δ spent with it (partition selection); empty: 0
    sa.Column("status", sa.String(12), nullable=False),  # reserved | committed | cancelled
    sa.Column("query_hash", sa.String(64)),
    sa.Column("audit_seq", sa.Integer),
    sa.Column("time_utc", sa.String(32), nullable=False),
    sa.Index("ix_budget_spend_key", "user", "dataset", "period"),
)
cache_table = sa.Table(
    "release_cache",
    metadata,
    sa.Column("user", sa.String(200), primary_key=True),
    sa.Column("cache_key", sa.String(64), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("audit_seq", sa.Integer, nullable=False),
    sa.Column("time_utc", sa.String(32), nullable=False),
)

# -- what sdc releases published (disclosure/linked.py) -------------------------------------------
#: The published structure of every sdc release (this version on: one row per release and family).
links_table = sa.Table(
    "sdc_published",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("domain", sa.String(200), nullable=False, index=True),
    sa.Column("family", sa.String(64), nullable=False, index=True),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("query_hash", sa.String(64), nullable=False, index=True),
    sa.Column("snapshot_id", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("audit_seq", sa.Integer, nullable=True),
    sa.Column("time_utc", sa.String(32), nullable=False),
)
#: The per-user table of the versions before domains (kept, no longer written).
legacy_links_table = sa.Table(
    "sdc_releases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(200), nullable=False, index=True),
    sa.Column("family", sa.String(64), nullable=False, index=True),
    sa.Column("query_hash", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("audit_seq", sa.Integer, nullable=True),
    sa.Column("time_utc", sa.String(32), nullable=False),
)

# -- kept results and named releases (releases.py) --------------------------------------------------
results_table = sa.Table(
    "released_results",
    metadata,
    sa.Column("audit_seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # zlib-compressed JSON
    sa.Column("time_utc", sa.String(32), nullable=False),
)
releases_table = sa.Table(
    "releases",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("user", sa.String(200), nullable=False, index=True),
    sa.Column("audit_seq", sa.Integer, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("time_utc", sa.String(32), nullable=False),
)

# -- users and their API tokens (store/users.py) ----------------------------------------------------
users_table = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("groups", sa.Text, nullable=False),
    sa.Column("organisation", sa.String(200), nullable=False),
    sa.Column("service", sa.Boolean, nullable=False, default=False),
    sa.Column("interaction", sa.String(20)),
    sa.Column("created_utc", sa.String(32), nullable=False),
)
tokens_table = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user", sa.String(200), nullable=False, index=True),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_utc", sa.String(32), nullable=False),
    sa.Column("expires_utc", sa.String(32), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

# -- the second factor: TOTP seeds (sealed) and the sessions it opens (store/factors.py) -------------
factors_table = sa.Table(
    "second_factors",
    metadata,
    sa.Column("user", sa.String(200), primary_key=True),
    sa.Column("sealed", sa.Text, nullable=False),  # the TOTP seed, AES-GCM under a key from the service's
    sa.Column("last_step", sa.BigInteger, nullable=False, default=0),  # the last time step accepted
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until", sa.String(32)),
    sa.Column("enrolled_utc", sa.String(32), nullable=False),
)
sessions_table = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user", sa.String(200), nullable=False, index=True),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_utc", sa.String(32), nullable=False),
    sa.Column("expires_utc", sa.String(32), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

# -- incidents found in the audit log (store/incidents.py) --------------------------------------------
incidents_table = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(60), nullable=False),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("time_utc", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("detected_utc", sa.String(32), nullable=False),
    sa.Column("audit_seq", sa.BigInteger),  # the audit record that reported it
    sa.Column("acknowledged_by", sa.String(200)),
    sa.Column("acknowledged_utc", sa.String(32)),
    sa.Column("note", sa.Text),
    sa.UniqueConstraint("rule", "user", "first_seq", name="uq_incident"),
)

# -- data access requests, their decisions, and the agreements they rest on (store/access.py) --------
agreements_table = sa.Table(
    "agreements",
    metadata,
    sa.Column("reference", sa.String(100), primary_key=True),
    sa.Column("title", sa.String(300), nullable=False),
    sa.Column("parties", sa.Text, nullable=False),  # JSON list
    sa.Column("legal_basis", sa.String(300), nullable=False),
    sa.Column("start_date", sa.String(10), nullable=False),
    sa.Column("end_date", sa.String(10), nullable=False),
    sa.Column("document", sa.String(300)),  # the signed document's file name
    sa.Column("document_sha256", sa.String(64)),
    sa.Column("added_by", sa.String(200), nullable=False),
    sa.Column("added_utc", sa.String(32), nullable=False),
    sa.Column("audit_seq", sa.BigInteger),
)
access_requests_table = sa.Table(
    "access_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("requester", sa.String(200), nullable=False),
    sa.Column("organisation", sa.String(200), nullable=False),
    sa.Column("group_name", sa.String(200), nullable=False),  # the group whose members get the grant
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("grants", sa.Text, nullable=False),  # JSON {table: "all" | [columns]}
    sa.Column("legal_basis", sa.String(300), nullable=False),
    sa.Column("agreement", sa.String(100), nullable=False),
    sa.Column("start_date", sa.String(10), nullable=False),
    sa.Column("end_date", sa.String(10), nullable=False),  # the period asked for
    sa.Column("restricted", sa.Boolean, nullable=False),
    sa.Column("approvals_needed", sa.Integer, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # pending | approved | rejected | revoked
    sa.Column("until", sa.String(10)),  # the last day the grant is in force (set at approval)
    sa.Column("created_utc", sa.String(32), nullable=False),
    sa.Column("decided_utc", sa.String(32)),
    sa.Column("audit_seq", sa.BigInteger),
)
access_decisions_table = sa.Table(
    "access_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.Integer, nullable=False, index=True),
    sa.Column("decision", sa.String(12), nullable=False),  # approve | reject | revoke
    sa.Column("by", sa.String(200), nullable=False),
    sa.Column("os_user", sa.String(200), nullable=False),
    sa.Column("until", sa.String(10)),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("time_utc", sa.String(32), nullable=False),
    sa.Column("audit_seq", sa.BigInteger),
    sa.UniqueConstraint("request_id", "by", "decision", name="uq_access_decision"),
)

#: What the service's own PostgreSQL role may do on each table (``harden_postgres``): the audit
#: log and its checkpoints and signed heads are append-only; nothing else is ever deleted but
#: allowances (reset by the data owner) and cache entries.
ACCESS: dict[str, str] = {
    "audit_log": "SELECT, INSERT",
    "audit_checkpoint": "SELECT, INSERT",
    "audit_tree_head": "SELECT, INSERT",
    "audit_head": "SELECT, INSERT, UPDATE",
    "budget_allowance": "SELECT, INSERT, UPDATE, DELETE",
    "budget_spend": "SELECT, INSERT, UPDATE",
    "release_cache": "SELECT, INSERT, UPDATE, DELETE",
    "sdc_published": "SELECT, INSERT, UPDATE",
    "sdc_releases": "SELECT, INSERT, UPDATE",
    "released_results": "SELECT, INSERT, UPDATE",
    "releases": "SELECT, INSERT, UPDATE",
    "users": "SELECT, INSERT, UPDATE",
    "api_tokens": "SELECT, INSERT, UPDATE",
    "second_factors": "SELECT, INSERT, UPDATE, DELETE",
    "sessions": "SELECT, INSERT, UPDATE",
    "incidents": "SELECT, INSERT, UPDATE",
    "agreements": "SELECT, INSERT",
    "access_requests": "SELECT, INSERT, UPDATE",
    "access_decisions": "SELECT, INSERT",
}

# -- the migrations applied (store/migrations.py), on a MetaData of its own: it exists first ----------
version_table = sa.Table(
    "schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_utc", sa.String(32), nullable=False),
)
