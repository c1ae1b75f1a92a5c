"""Test oracles: slow, obviously-correct versions of what the protect step does fast.

They live with the tests, not in ``src/``: the service never calls them. ``attacker_intervals``
is the exact LP attack on one published table; ``protect_with_margins`` runs the service's
suppression loop on one table alone; ``greedy_suppression`` is the secondary suppression's
greedy rule by dense exact ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["attacker_intervals", "greedy_suppression", "protect_with_margins"]


def attacker_intervals(
    columns: Sequence[frozenset[int]],
    values: Sequence[float],
    hidden: set[int],
    n_inner: int,
    only: set[int] | None = None,
) -> dict[int, tuple[float, float]]:
    """For each hidden *inner* cell (of ``only``, if given): the smallest and largest value
    consistent with every published cell and non-negativity (two LPs each, HiGHS)."""
    from scipy.optimize import linprog

    inner_hidden = sorted(j for j in hidden if j < n_inner)
    if not inner_hidden:
        return {}
    position = {cell: k for k, cell in enumerate(inner_hidden)}
    known = {j: float(values[j]) for j in range(n_inner) if j not in hidden}
    rows, rhs = [], []
    for j, members in enumerate(columns):
        if j in hidden or j < n_inner:
            continue
        unknown = [position[i] for i in members if i in position]
        if not unknown:
            continue
        row = np.zeros(len(inner_hidden))
        row[unknown] = 1.0
        rows.append(row)
        rhs.append(float(values[j]) - sum(known.get(i, 0.0) for i in members if i not in position))
    a_eq = np.array(rows) if rows else None
    b_eq = np.array(rhs) if rows else None
    out = {}
    for cell, k in position.items():
        if only is not None and cell not in only:
            continue
        c = np.zeros(len(inner_hidden))
        c[k] = 1.0
        lo = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        hi = linprog(-c, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        low = float(lo.fun) if lo.status == 0 else 0.0
        high = float(-hi.fun) if hi.status == 0 else float("inf")
        out[cell] = (low, high)
    return out


def protect_with_margins(
    columns: Sequence[frozenset[int]],
    values: Sequence[int],
    primary: set[int],
    n_inner: int,
    *,
    width: float,
    max_rounds: int = 60,
) -> tuple[set[int], dict]:
    """One table with margins, alone: secondary suppression and the attacker audit until every
    primary keeps an interval at least ``width`` wide (the service's loop,
    :func:`safestats.disclosure.linked_audit.protect_linked`, with no earlier tables). Returns the
    hidden columns and the audited intervals; raises DisclosureRefused if no pattern works."""
    from safestats.disclosure.linked_audit import protect_linked

    order = sorted((j for j in range(len(columns)) if j not in primary), key=lambda j: (j < n_inner, -values[j], j))
    return protect_linked(
        columns,
        values,
        primary=set(primary),
        candidates=order,
        forced=set(),
        kept_hidden=set(),
        widths=dict.fromkeys(primary, float(width)),
        atom_values=np.asarray(values[:n_inner], dtype=float),
        max_rounds=max_rounds,
    )


def _rank(rows: list[list[int]]) -> int:
    """The exact rank of an integer matrix (Fractions, row by row)."""
    from fractions import Fraction

    basis: list[list[Fraction]] = []  # rows in echelon form, each with its pivot column
    pivots: list[int] = []
    for row in rows:
        v = [Fraction(x) for x in row]
        for b, p in zip(basis, pivots, strict=True):
            if v[p]:
                f = v[p] / b[p]
                v = [x - f * y for x, y in zip(v, b, strict=True)]
        nz = next((i for i, x in enumerate(v) if x), None)
        if nz is not None:
            basis.append(v)
            pivots.append(nz)
    return len(basis)


def greedy_suppression(
    columns: Sequence[frozenset[int]], primary: set[int], order: Sequence[int], forced: set[int] = frozenset()
) -> tuple[set[int], list[int]]:
    """:func:`safestats.disclosure.secondary.secondary_suppression`'s rule, spelled out with
    dense exact ranks: the forced columns are published, then each candidate in order is
    published unless it is not implied by what is published and publishing it would make a
    hidden primary derivable (in the span of the published columns) that was not derivable
    before (a primary the forced columns give away is the audit's to report; nothing hidden
    now would help it); returns the hidden columns and the published candidates that were not
    implied."""
    n = 1 + max((i for c in columns for i in c), default=0)

    def vector(j: int) -> list[int]:
        return [1 if i in columns[j] else 0 for i in range(n)]

    published = [vector(j) for j in forced]
    hidden, new = set(primary), []
    for j in [j for j in order if j not in primary and j not in forced]:
        rank = _rank(published)
        with_j = published + [vector(j)]
        if _rank(with_j) == rank:
            continue  # implied: published, tells nothing
        newly = [k for k in primary if _rank(published + [vector(k)]) == rank + 1]  # not derivable yet
        if any(_rank(with_j + [vector(k)]) == rank + 1 for k in newly):
            hidden.add(j)
            continue
        published, new = with_j, new + [j]
    return hidden, new
