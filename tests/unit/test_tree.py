"""The audit Merkle tree: RFC 6962 hashes, proofs of inclusion and consistency (property tests)."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from safestats.audit.tree import (
    EMPTY,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)


def _leaves(n):
    return [leaf_hash(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)]


def _reference(leaves):
    """RFC 6962's recursive definition, written plainly."""
    if not leaves:
        return EMPTY
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_reference(leaves[:k]), _reference(leaves[k:]))


@given(st.integers(0, 70))
def test_the_frontier_gives_rfc6962s_tree_hash(n):
    leaves = _leaves(n)
    assert root_of(leaves) == (n, _reference(leaves))
    f = Frontier()
    for leaf in leaves:
        f.push(leaf)
    assert Frontier.from_json(f.to_json()).root() == _reference(leaves)


@given(st.integers(1, 70), st.data())
def test_inclusion_proofs_verify_and_catch_a_wrong_leaf(n, data):
    leaves = _leaves(n)
    i = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(leaves, i)
    root = _reference(leaves)
    assert verify_inclusion(leaves[i], i, n, proof, root)
    assert not verify_inclusion(leaf_hash("00" * 32), i, n, proof, root)
    if n > 1:
        assert not verify_inclusion(leaves[i], (i + 1) % n, n, proof, root)


@given(st.integers(1, 70), st.data())
def test_consistency_proofs_verify_and_catch_a_rewritten_prefix(n, data):
    leaves = _leaves(n)
    m = data.draw(st.integers(1, n))
    proof = consistency_proof(leaves, m)
    assert verify_consistency(m, n, _reference(leaves[:m]), _reference(leaves), proof)
    forged = list(leaves)
    forged[0] = leaf_hash("11" * 32)
    assert not verify_consistency(m, n, _reference(forged[:m]), _reference(leaves), proof)
