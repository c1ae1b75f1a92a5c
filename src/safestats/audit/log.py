"""The audit log: one append-only, hash-chained record per request, in a real database.

Each record holds its sequence number, the hash of the record before it, and its own hash
over both and over every field. ``verify`` walks the chain from the first record and reports
the first one that was changed, removed or moved. A head row, updated in the same transaction
as each append, pins the length and last hash of the chain, so removing the newest records is
detected too.

Appends are serialised (``BEGIN IMMEDIATE`` on SQLite, a row lock on the head elsewhere), so
concurrent writers from many threads or processes keep one unbroken chain. If an append fails
for any reason it raises :class:`~safestats.errors.AuditFailure`: the caller must not release
anything (fail closed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from safestats.audit.tree import Frontier, leaf_hash
from safestats.errors import AuditFailure, AuditIntegrityError
from safestats.store.db import open_store, reading, transaction
from safestats.store.schema import (
    FIELDS,
    FIELDS_V1,
    GENESIS,
    JSON_FIELDS,
    audit_table,
    checkpoint_table,
    head_table,
    tree_head_table,
)

__all__ = ["FIELDS", "AuditLog", "VerifyReport", "open_store", "transaction"]

FIELD_NAMES = tuple(name for name, _ in FIELDS)
#: The record format written now, and the fields each format hashes, in order. Adding an audit
#: field means a new format (FIELDS grows, a migration adds the column, FORMATS gains an entry):
#: every record keeps verifying under the format it was written in (``format`` column; empty
#: means 1, the records written before formats existed).
RECORD_FORMAT = 2
FORMATS: dict[int, tuple[str, ...]] = {1: tuple(name for name, _ in FIELDS_V1), 2: FIELD_NAMES}


def _encode(record: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a record: JSON fields as canonical JSON text, the rest as they are."""
    return {
        k: (
            json.dumps(record.get(k), sort_keys=True, default=str)
            if k in JSON_FIELDS and record.get(k) is not None
            else record.get(k)
        )
        for k in FIELD_NAMES
    }


def _row_hash(seq: int, prev_hash: str, values: Any, fmt: int = 1) -> str:
    """The link hash over the stored column values of the record's format, in order (so
    verifying needs no decoding). Format 1 is the original; later formats name themselves."""
    text = "\x1e".join("\x00" if v is None else str(v) for v in values)
    tag = "" if fmt == 1 else f"v{fmt}|"
    return hashlib.sha256(f"{tag}{seq}|{prev_hash}|{text}".encode()).hexdigest()


def _chain_hash(seq: int, prev_hash: str, record: Mapping[str, Any], fmt: int | None = None) -> str:
    """The link hash of a record given as a (decoded) mapping."""
    fmt = fmt or RECORD_FORMAT
    stored = _encode(record)
    return _row_hash(seq, prev_hash, [stored[k] for k in FORMATS[fmt]], fmt)


def _mac(key: bytes, seq: int, record_hash: str) -> str:
    return hmac.new(key, f"{seq}|{record_hash}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    first_bad: int | None = None
    problem: str = ""
    checkpoints: int = 0
    heads: int = 0  # signed tree heads checked (signature and root)
    root: str = ""  # the Merkle root of the whole log (hex)

    def __str__(self) -> str:
        if self.ok:
            signed = f", {self.checkpoints} signed checkpoints valid" if self.checkpoints else ""
            heads = f", consistent with {self.heads} signed tree heads" if self.heads else ""
            return f"ok: {self.records} audit records, hash chain intact{signed}{heads}"
        return f"FAILED at record {self.first_bad}: {self.problem} ({self.records} records read)"


# Built once with bound parameters (per-call construction cost more than SQLite's work).
_HEAD = (
    sa.select(head_table.c.seq, head_table.c.record_hash, head_table.c.frontier)
    .where(head_table.c.id == 1)
    .with_for_update()
)
_INSERT = audit_table.insert()
_MOVE_HEAD = head_table.update().where(head_table.c.id == 1)


class AuditLog:
    """Append records, read them back and verify the chain."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        key: bytes | None = None,
        checkpoint_every: int = 1000,
        signer: Any = None,
        witness: str | Path | None = None,
        public_key: Any = None,
        origin: str = "safestats audit log",
    ) -> None:
        self.engine = engine
        self.key = key  # the service's secret: signs checkpoints, so a rewritten chain shows
        self.checkpoint_every = checkpoint_every
        self.signer = signer  # audit.heads.Signer: signs tree heads (Ed25519)
        self.witness = Path(witness) if witness else None  # heads are appended here, outside the store
        self.public_key = public_key if public_key is not None else getattr(signer, "public", None)
        self.origin = origin

    @classmethod
    def open(cls, url: str, *, key: bytes | None = None, checkpoint_every: int = 1000, **heads: Any) -> AuditLog:
        return cls(open_store(url), key=key, checkpoint_every=checkpoint_every, **heads)

    def append(
        self, record: Mapping[str, Any], *, conn: sa.Connection | None = None, heads: list[Any] | None = None
    ) -> int:
        """Write ``record`` as the next link of the chain and return its sequence number.

        Raises :class:`AuditFailure` if anything goes wrong; nothing may be released then. With
        ``conn`` the record joins the caller's transaction (which then commits the release as a
        whole) and a head signed for it is put in ``heads`` for the caller to publish after the
        commit (:meth:`publish`).
        """
        unknown = set(record) - {k for k, _ in FIELDS}
        if unknown:
            raise AuditFailure(f"audit record has unknown fields {sorted(unknown)}")
        stored = {k: record.get(k) for k, _ in FIELDS}
        stored["time_utc"] = stored["time_utc"] or _now()
        outer = conn
        try:
            with transaction(self.engine, outer) as conn:
                head = conn.execute(_HEAD).first()
                seq, prev = (head.seq + 1, head.record_hash) if head else (1, GENESIS)
                row = _encode(stored)
                digest = _row_hash(seq, prev, [row[k] for k in FORMATS[RECORD_FORMAT]], RECORD_FORMAT)
                conn.execute(
                    _INSERT, {"seq": seq, "prev_hash": prev, "record_hash": digest, "format": RECORD_FORMAT, **row}
                )
                frontier = Frontier.from_json(head.frontier if head else None)
                frontier.push(leaf_hash(digest))
                if self.key and seq % self.checkpoint_every == 0:
                    conn.execute(
                        checkpoint_table.insert().values(
                            seq=seq, record_hash=digest, mac=_mac(self.key, seq, digest), time_utc=_now()
                        )
                    )
                signed = None
                if self.signer is not None and (seq % self.checkpoint_every == 0 or stored["outcome"] == "released"):
                    # every release is covered by a signed head at once (and published outside the store)
                    signed = self._store_head(conn, seq, frontier.root())
                if head:
                    conn.execute(_MOVE_HEAD, {"seq": seq, "record_hash": digest, "frontier": frontier.to_json()})
                else:
                    conn.execute(
                        head_table.insert().values(id=1, seq=seq, record_hash=digest, frontier=frontier.to_json())
                    )
        except Exception as e:  # any failure to record means no release
            raise AuditFailure(
                f"the audit record could not be written ({e.__class__.__name__}); nothing was released"
            ) from e
        if signed is not None:
            if outer is None:
                self._witness(signed)
            elif heads is not None:
                heads.append(signed)
        return seq

    def publish(self, heads: list[Any]) -> None:
        """Write heads signed inside a caller's transaction to the witness file (after it committed)."""
        for head in heads:
            self._witness(head)

    # -- signed tree heads ---------------------------------------------------------------------
    def _store_head(self, conn: sa.Connection, size: int, root: bytes) -> Any:
        head = self.signer.sign(self.origin, size, root)
        exists = conn.execute(sa.select(tree_head_table.c.size).where(tree_head_table.c.size == size)).first()
        if exists is None:
            conn.execute(tree_head_table.insert().values(size=size, head=json.dumps(head.to_dict(), sort_keys=True)))
        return head

    def _witness(self, head: Any) -> None:
        """Write a head outside the store. A failure here is not a lost record (the record and
        the head are in the store); the next head written repairs the witness's view."""
        if self.witness is None:
            return
        from safestats.audit.heads import append_head

        try:
            append_head(self.witness, head)
        except OSError:  # pragma: no cover - e.g. a full disk; the store still holds the head
            pass

    def sign_head(self) -> Any:
        """Sign the log's current tree head now, keep it in the store and in the witness file;
        returns the head (None without a signing key or records)."""
        if self.signer is None:
            return None
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).mappings().first()
            if row is None or row["seq"] == 0:
                return None
            head = self._store_head(conn, int(row["seq"]), Frontier.from_json(row["frontier"]).root())
        self._witness(head)
        return head

    def latest_head(self) -> Any:
        """The newest signed tree head in the store (None if none)."""
        from safestats.audit.heads import Head

        with reading(self.engine) as conn:
            row = conn.execute(sa.select(tree_head_table.c.head).order_by(tree_head_table.c.size.desc())).first()
        return None if row is None else Head.from_dict(json.loads(row.head))

    def receipt(self, seq: int) -> dict[str, Any] | None:
        """An inclusion receipt for record ``seq``: a head signed now, the record's leaf index and
        its RFC 6962 audit path, which anyone with the public key checks offline."""
        import base64

        from safestats.audit.tree import inclusion_proof

        head = self.sign_head()
        if head is None:
            return None
        with reading(self.engine) as conn:
            hashes = [
                h
                for (h,) in conn.execute(
                    sa.select(audit_table.c.record_hash)
                    .where(audit_table.c.seq <= head.size)
                    .order_by(audit_table.c.seq)
                )
            ]
        leaves = [leaf_hash(h) for h in hashes]
        proof = inclusion_proof(leaves, seq - 1)
        return {
            "head": head.to_dict(),
            "leaf_index": seq - 1,
            "record_hash": hashes[seq - 1],
            "proof": [base64.b64encode(p).decode() for p in proof],
        }

    def consistency(self, old: Any) -> dict[str, Any]:
        """A proof that the log's tree now (a head signed now) extends the tree of ``old``."""
        import base64

        from safestats.audit.tree import consistency_proof

        new = self.sign_head()
        if new is None or new.size < old.size:
            raise AuditIntegrityError(
                f"the log holds {new.size if new else 0} records, fewer than the {old.size} of "
                "the head given: records were removed"
            )
        with reading(self.engine) as conn:
            leaves = [
                leaf_hash(h)
                for (h,) in conn.execute(
                    sa.select(audit_table.c.record_hash)
                    .where(audit_table.c.seq <= new.size)
                    .order_by(audit_table.c.seq)
                )
            ]
        proof = consistency_proof(leaves, old.size) if old.size else []
        return {"old": old.to_dict(), "new": new.to_dict(), "proof": [base64.b64encode(p).decode() for p in proof]}

    def stored_heads(self) -> list[Any]:
        from safestats.audit.heads import Head

        with reading(self.engine) as conn:
            rows = conn.execute(sa.select(tree_head_table.c.head).order_by(tree_head_table.c.size)).all()
        return [Head.from_dict(json.loads(r.head)) for r in rows]

    def records(
        self, *, start: str | None = None, end: str | None = None, after: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Records in sequence order, optionally within [start, end) of ``time_utc`` and after
        sequence number ``after``."""
        query = sa.select(audit_table).order_by(audit_table.c.seq)
        if after is not None:
            query = query.where(audit_table.c.seq > after)
        if start:
            query = query.where(audit_table.c.time_utc >= start)
        if end:
            query = query.where(audit_table.c.time_utc < end)
        with reading(self.engine) as conn:
            for row in conn.execute(query).mappings():
                yield _decode(row)

    def record(self, seq: int) -> dict[str, Any] | None:
        """One record by sequence number, with its ``record_hash``; None if there is none."""
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(audit_table).where(audit_table.c.seq == seq)).mappings().first()
        return None if row is None else _decode(row) | {"record_hash": row["record_hash"]}

    def count(self) -> int:
        with reading(self.engine) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_table)).scalar_one())

    def checkpoint(self) -> int | None:
        """Sign the current head now (e.g. after a report is produced): a signed tree head, and
        the older HMAC checkpoint; returns its sequence number."""
        self.sign_head()
        if not self.key:
            return None
        with self.engine.begin() as conn:
            head = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).mappings().first()
            if head is None or head["seq"] == 0:
                return None
            seq, digest = int(head["seq"]), str(head["record_hash"])
            exists = conn.execute(sa.select(checkpoint_table.c.seq).where(checkpoint_table.c.seq == seq)).first()
            if exists is None:
                mac = _mac(self.key, seq, digest)
                conn.execute(checkpoint_table.insert().values(seq=seq, record_hash=digest, mac=mac, time_utc=_now()))
        return seq

    def verify(self, heads: Iterable[Any] = ()) -> VerifyReport:
        """Walk the chain from the first record to the head; then check the Merkle tree against
        every signed tree head — those in the store, in the witness file and ``heads`` (e.g.
        published earlier) — and every HMAC checkpoint.

        Reports the first bad record. A head signed by another key, a head whose size is past the
        log's end (truncation) or whose root differs (a rewrite) fails. Without the public key
        heads are checked against the tree but their signatures cannot be."""
        report = self._verify_chain()
        if not report.ok:
            return report

        hashes: dict[int, str] = {}
        with reading(self.engine) as conn:
            checkpoints = conn.execute(sa.select(checkpoint_table).order_by(checkpoint_table.c.seq)).mappings().all()
            if checkpoints:
                wanted = [c["seq"] for c in checkpoints]
                rows = conn.execute(
                    sa.select(audit_table.c.seq, audit_table.c.record_hash).where(audit_table.c.seq.in_(wanted))
                ).all()
                hashes = {r.seq: r.record_hash for r in rows}
        for c in checkpoints:
            if hashes.get(c["seq"]) != c["record_hash"]:
                return VerifyReport(
                    False, report.records, c["seq"], "differs from its signed checkpoint: the chain was rewritten"
                )
            if self.key and not hmac.compare_digest(c["mac"], _mac(self.key, c["seq"], c["record_hash"])):
                return VerifyReport(False, report.records, c["seq"], "its checkpoint's signature is not valid")
        trusted = [*self.stored_heads(), *heads]
        if self.witness is not None:
            from safestats.audit.heads import read_heads

            trusted += read_heads([self.witness])
        tree = self._verify_tree(report.records, trusted)
        if not tree.ok:
            return tree
        return replace(report, checkpoints=len(checkpoints) if self.key else 0, heads=tree.heads, root=tree.root)

    def _verify_tree(self, records: int, heads: list[Any]) -> VerifyReport:
        """The Merkle tree of the log against signed heads, and against the stored right edge."""
        for h in heads:
            if self.public_key is not None and not h.verify(self.public_key):
                return VerifyReport(
                    False,
                    records,
                    h.size,
                    "a signed tree head's signature is not valid for the "
                    "service's public key (forged, or signed by another key)",
                )
            if h.size > records:
                return VerifyReport(
                    False,
                    records,
                    records + 1,
                    f"a signed tree head of {h.size} records was "
                    f"published, but the log holds {records}: records were removed",
                )
        with reading(self.engine) as conn:
            last_release = conn.execute(
                sa.select(sa.func.max(audit_table.c.seq)).where(audit_table.c.outcome == "released")
            ).scalar()
        wanted: dict[int, list[Any]] = {}
        for h in heads:
            wanted.setdefault(h.size, []).append(h)
        frontier = Frontier()
        with reading(self.engine) as conn:
            stored = conn.execute(sa.select(head_table.c.frontier).where(head_table.c.id == 1)).scalar()
            rows = conn.execution_options(stream_results=True, yield_per=50_000).execute(
                sa.select(audit_table.c.seq, audit_table.c.record_hash).order_by(audit_table.c.seq)
            )
            for seq, record_hash in rows:
                frontier.push(leaf_hash(record_hash))
                for h in wanted.get(seq, ()):
                    if h.root != frontier.root():
                        return VerifyReport(
                            False,
                            records,
                            seq,
                            f"the first {seq} records differ from the signed "
                            "tree head of that size: the log was rewritten",
                        )
        if stored is not None and Frontier.from_json(stored).root() != frontier.root():
            return VerifyReport(False, records, records, "the stored tree head differs from the records")
        covered = max((h.size for h in heads), default=0)
        if self.public_key is not None and last_release is not None and last_release > covered:
            return VerifyReport(
                False,
                records,
                int(last_release),
                "a release that no signed tree head covers: the "
                "service signs a head at every release, so this record was added by someone "
                "else (or its heads were deleted)",
            )
        return VerifyReport(True, records, heads=len(heads), root=frontier.root().hex())

    def _verify_chain(self, *, parallel_from: int = 200_000) -> VerifyReport:
        """The chain from the first record to the head. Long logs are checked in two processes,
        one half each, and the halves' boundary link checked after (both cores, half the time)."""
        with reading(self.engine) as conn:
            last = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(audit_table.c.seq), 0))).scalar_one())
            head = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).mappings().first()
        url = self.engine.url.render_as_string(hide_password=False)
        in_memory = self.engine.url.database in (None, "", ":memory:")
        if last >= parallel_from and not in_memory:
            from concurrent.futures import ProcessPoolExecutor

            mid = last // 2
            with ProcessPoolExecutor(max_workers=2) as pool:
                first_half = pool.submit(_verify_segment, url, 1, mid, GENESIS)
                second_half = pool.submit(_verify_segment, url, mid + 1, last, None)
                a, b = first_half.result(), second_half.result()
            if a.bad is not None:
                return VerifyReport(False, a.n, a.bad, a.problem)
            if b.start_prev != a.last_hash and b.n:
                unlinked = "does not link to the record before it (removed or reordered)"
                return VerifyReport(False, a.n + 1, mid + 1, unlinked)
            if b.bad is not None:
                return VerifyReport(False, a.n + b.n, b.bad, b.problem)
            n, prev = a.n + b.n, (b.last_hash if b.n else a.last_hash)
        else:
            with reading(self.engine) as conn:
                seg = _segment(conn, 1, None, GENESIS)
            if seg.bad is not None:
                return VerifyReport(False, seg.n, seg.bad, seg.problem)
            n, prev = seg.n, seg.last_hash
        if head is None:
            return VerifyReport(False, n, n or 1, "the chain head is missing")
        if head["seq"] != n or head["record_hash"] != prev:
            removed = f"the chain head says {head['seq']} records; records after {n} were removed"
            return VerifyReport(False, n, min(n + 1, head["seq"]), removed)
        return VerifyReport(True, n)

    def ensure_intact(self) -> None:
        report = self.verify()
        if not report.ok:
            raise AuditIntegrityError(f"the audit log does not verify: {report}")


@dataclass(frozen=True)
class _Segment:
    n: int
    last_hash: str
    start_prev: str | None
    bad: int | None = None
    problem: str = ""


def _segment(conn: sa.Connection, lo: int, hi: int | None, prev: str | None) -> _Segment:
    """Check records lo..hi: numbering, links and hashes. ``prev=None`` trusts the first link
    (the caller checks it against the segment before)."""
    names = FIELD_NAMES
    position = {k: i + 4 for i, k in enumerate(names)}
    columns = [
        audit_table.c.seq,
        audit_table.c.prev_hash,
        audit_table.c.record_hash,
        audit_table.c.format,
        *(audit_table.c[k] for k in names),
    ]
    query = sa.select(*columns).where(audit_table.c.seq >= lo).order_by(audit_table.c.seq)
    if hi is not None:
        query = query.where(audit_table.c.seq <= hi)
    expected, n, start_prev = lo, 0, None
    result = conn.execution_options(stream_results=True, yield_per=20_000).execute(query)
    for row in result:
        n += 1
        seq, prev_hash, record_hash = row[0], row[1], row[2]
        if start_prev is None:
            start_prev = prev_hash
            if prev is None:
                prev = prev_hash
        if seq != expected:
            return _Segment(n, prev or "", start_prev, expected, f"record {expected} is missing")
        if prev_hash != prev:
            unlinked = "does not link to the record before it (removed or reordered)"
            return _Segment(n, prev or "", start_prev, seq, unlinked)
        fmt = int(row[3] or 1)
        if fmt not in FORMATS:
            return _Segment(
                n,
                prev or "",
                start_prev,
                seq,
                f"written in record format {fmt}, which this version does not know (upgrade safestats)",
            )
        unknown = [k for k in names if k not in FORMATS[fmt] and row[position[k]] is not None]
        if unknown or _row_hash(seq, prev or "", [row[position[k]] for k in FORMATS[fmt]], fmt) != record_hash:
            return _Segment(n, prev or "", start_prev, seq, "contents changed since it was written")
        prev, expected = record_hash, expected + 1
    if hi is not None and n != hi - lo + 1:
        return _Segment(n, prev or "", start_prev, expected, f"record {expected} is missing")
    return _Segment(n, prev or GENESIS, start_prev)


def _verify_segment(url: str, lo: int, hi: int, prev: str | None) -> _Segment:
    """A worker process's share of verification, on its own connection."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return _segment(conn, lo, hi, prev)
    finally:
        engine.dispose()


def _decode(row: Mapping[str, Any] | sa.RowMapping) -> dict[str, Any]:
    out = {}
    for k, _ in FIELDS:
        v = row[k]
        out[k] = json.loads(v) if k in JSON_FIELDS and v is not None else v
    out["seq"] = row["seq"]
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
