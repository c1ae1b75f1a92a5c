"""The audit log as a Merkle tree, in the manner of Certificate Transparency (RFC 6962 / 9162).

Each audit record is a leaf: ``leaf = SHA-256(0x00 || record_hash)`` (the record's chain hash
covers every field); inner nodes are ``SHA-256(0x01 || left || right)``; the tree head of the
first ``n`` records is RFC 6962's Merkle tree hash of their leaves. A :class:`Frontier` — the
roots of the perfect subtrees along the right edge, at most log₂ n of them — lets the service
extend the tree at every append in O(log n) and compute any head without re-reading the log.

:func:`inclusion_proof` / :func:`verify_inclusion` show that a record is the ``i``-th leaf of a
tree with a given head; :func:`consistency_proof` / :func:`verify_consistency` that a later head
extends an earlier one (the log only grew). Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Frontier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]


def leaf_hash(record_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(record_hash)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY = hashlib.sha256(b"").digest()


@dataclass
class Frontier:
    """The right edge of the tree: (leaves, root) of each perfect subtree, largest first."""

    subtrees: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(n for n, _ in self.subtrees)

    def push(self, leaf: bytes) -> None:
        self.subtrees.append((1, leaf))
        while len(self.subtrees) >= 2 and self.subtrees[-1][0] == self.subtrees[-2][0]:
            (n, right), (_, left) = self.subtrees.pop(), self.subtrees.pop()
            self.subtrees.append((2 * n, node_hash(left, right)))

    def root(self) -> bytes:
        if not self.subtrees:
            return EMPTY
        h = self.subtrees[-1][1]
        for _, left in reversed(self.subtrees[:-1]):
            h = node_hash(left, h)
        return h

    def to_json(self) -> str:
        return json.dumps([[n, h.hex()] for n, h in self.subtrees])

    @classmethod
    def from_json(cls, text: str | None) -> Frontier:
        return cls([(int(n), bytes.fromhex(h)) for n, h in json.loads(text)] if text else [])


def root_of(leaves: Iterable[bytes]) -> tuple[int, bytes]:
    f = Frontier()
    for leaf in leaves:
        f.push(leaf)
    return f.size, f.root()


def _mth(leaves: Sequence[bytes]) -> bytes:
    return root_of(leaves)[1]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 2.1.1: the audit path of leaf ``index`` in the tree of ``leaves``."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaves[:k], index), _mth(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), _mth(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_proof(leaves: Sequence[bytes], m: int) -> list[bytes]:
    """RFC 6962 2.1.2: proof that the tree of the first ``m`` leaves is a prefix of ``leaves``."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from {m} to {n} leaves")

    def sub(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
        n = len(leaves)
        if m == n:
            return [] if complete else [_mth(leaves)]
        k = _split(n)
        if m <= k:
            return [*sub(m, leaves[:k], complete), _mth(leaves[k:])]
        return [*sub(m - k, leaves[k:], False), _mth(leaves[:k])]

    return sub(m, leaves, True)


def verify_consistency(m: int, n: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: the tree of size ``n`` with ``new_root`` extends the one of size ``m``."""
    if m == n:
        return old_root == new_root and not proof
    if not 0 < m < n:
        return False
    path = list(proof)
    if m & (m - 1) == 0:  # m is a power of two: the old root is the first node
        path = [old_root, *path]
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
