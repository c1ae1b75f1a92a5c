"""Signed tree heads of the audit log: an Ed25519 key the service signs with, a public key anyone
verifies with, and an append-only file of heads outside the store.

A head says "the first ``size`` records of the log have Merkle root ``root``" (audit/tree.py).
Its signed text follows the C2SP ``tlog-checkpoint`` body — origin line, tree size, base64
root, each ending in a newline — so a head is also a checkpoint other tools can read; the
signature (Ed25519 over that text) travels beside it as base64. The public key is written next
to the private key (``<key>.pub``, base64 of the raw 32 bytes); verifying a head needs only it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from safestats.config import Settings

__all__ = [
    "Head",
    "Signer",
    "append_head",
    "check_consistency",
    "key_id",
    "load_public_key",
    "read_heads",
    "witness_file",
]


@dataclass(frozen=True)
class Head:
    origin: str
    size: int
    root: bytes
    time_utc: str
    key_id: str
    signature: bytes

    @property
    def body(self) -> str:
        return body(self.origin, self.size, self.root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "time_utc": self.time_utc,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Head:
        try:
            return cls(
                origin=str(raw["origin"]),
                size=int(raw["size"]),
                root=base64.b64decode(raw["root"]),
                time_utc=str(raw["time_utc"]),
                key_id=str(raw["key_id"]),
                signature=base64.b64decode(raw["signature"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a signed tree head: {e}") from None

    def verify(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(self.signature, self.body.encode())
        except InvalidSignature:
            return False
        return True


def body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """The service's signing key (created 0600 on first use) and its public key file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(raw).decode())
        self._key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(self.path.read_text().strip()))
        self.public = self._key.public_key()
        pub = self.public_path
        text = base64.b64encode(
            self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode()
        if not pub.exists() or pub.read_text().strip() != text:
            pub.write_text(text + "\n")

    @property
    def public_path(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")

    def sign_bytes(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def sign(self, origin: str, size: int, root: bytes) -> Head:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        signature = self._key.sign(body(origin, size, root).encode())
        return Head(origin=origin, size=size, root=root, time_utc=now, key_id=key_id(self.public), signature=signature)


def check_consistency(doc: dict[str, Any], public: Ed25519PublicKey) -> str:
    """Check a consistency proof (``safestats audit prove``) with the public key only; returns a
    one-line verdict or raises ValueError saying what is wrong."""
    from safestats.audit.tree import verify_consistency

    old, new = Head.from_dict(doc["old"]), Head.from_dict(doc["new"])
    for which, head in (("old", old), ("new", new)):
        if not head.verify(public):
            raise ValueError(f"the {which} head is not signed by this public key")
    proof = [base64.b64decode(p) for p in doc.get("proof", [])]
    if old.size and not verify_consistency(old.size, new.size, old.root, new.root, proof):
        raise ValueError(f"the log of {new.size} records does not extend the one of {old.size}: it was rewritten")
    return f"ok: the log of {new.size} records extends the signed log of {old.size} records (only grew)"


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(Path(path).read_text().strip()))


def append_head(path: Path | str, head: Head) -> None:
    """Add a head to an append-only file (one JSON object a line), flushed to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(head.to_dict(), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_heads(paths: Iterable[Path | str]) -> list[Head]:
    """Every head in the given files (a JSON object per line, or one JSON object)."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        text = path.read_text().strip()
        if not text:
            continue
        lines = [text] if text.startswith("{") and "\n" not in text else text.splitlines()
        for line in lines:
            if line.strip():
                out.append(Head.from_dict(json.loads(line)))
    return out


def witness_file(settings: Settings) -> Path:
    """Where signed tree heads are written outside the store (the setting, or a default per store)."""
    import sqlalchemy as sa  # here, not at the top: a researcher's offline receipt check needs none

    if settings.witness_file:
        return Path(settings.witness_file)
    url = settings.store_url
    if url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        # a SQLite URI (file:PATH?mode=ro&uri=true) names the same file
        db = Path(url.removeprefix("sqlite:///").removeprefix("file:").split("?")[0])
        return db.with_name(db.name + ".heads.jsonl")
    digest = hashlib.sha256(sa.engine.make_url(url).render_as_string(hide_password=True).encode()).hexdigest()[:12]
    return Path(settings.secret_key_file).with_name(f"audit-heads-{digest}.jsonl")
