"""Secondary (complementary) suppression and the attacker audit, for tables with margins.

A table is a set of *inner* cells and *publishable* cells: the inner cells themselves and every
margin (a sum of inner cells). Publishing a set of columns publishes ``X^T · inner``.

- :func:`secondary_suppression` walks the candidate cells in order of preference to publish,
  keeping the published columns in reduced (row-echelon) form with exact rational arithmetic
  (the Gaussian-elimination method used by Statistics Norway): a candidate already implied by
  what is published is published; a candidate that would make any hidden primary cell exactly
  derivable is suppressed as secondary; otherwise it is published.
- The attacker audit the service runs is in :mod:`safestats.disclosure.linked_audit`; the exact
  LP oracle the tests hold it to (``attacker_intervals``) lives in ``tests/oracles.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

__all__ = ["secondary_suppression"]

#: Exact coefficients: Python ints while they stay whole (0/1 columns mostly do), Fractions
#: once a pivot other than ±1 divides them; the two mix exactly.
Vector = dict[int, int | Fraction]


def _column(members: frozenset[int]) -> Vector:
    return dict.fromkeys(members, 1)


def _subtract(target: Vector, factor: int | Fraction, vector: Vector) -> None:
    """target -= factor * vector, in place, dropping zeros (the vectors stay sparse)."""
    for i, x in vector.items():
        y = target.get(i, 0) - factor * x
        if y:
            target[i] = y
        else:
            target.pop(i, None)


def _moved(index: dict[int, set[int]], row: int, had: set[int], has: set[int]) -> None:
    """Keep ``index`` (cell -> rows non-zero there) in step with a row whose cells ``had`` are
    now ``has`` (the set differences are taken in C; only changes are walked)."""
    for i in has - had:
        index.setdefault(i, set()).add(row)
    for i in had - has:
        index[i].discard(row)


class _Basis:
    """Published columns in reduced row-echelon form over the inner cells."""

    def __init__(self) -> None:
        self.rows: dict[int, Vector] = {}  # pivot -> vector with 1 at the pivot, 0 at other pivots
        # inner cell -> the pivots whose row is non-zero there: a new pivot is cleared from the
        # rows that hold it only, not looked up in every row (quadratic in the rank otherwise)
        self._holding: dict[int, set[int]] = {}

    def reduce(self, v: Vector) -> Vector:
        out = dict(v)
        for pivot in [p for p in out if p in self.rows]:
            factor = out.get(pivot)
            if factor:
                _subtract(out, factor, self.rows[pivot])
        return out

    def add(self, w: Vector) -> int:
        pivot = min(w)
        scale = w[pivot]
        if scale in (1, -1):
            w = {i: x * scale for i, x in w.items()}  # stays whole
        else:
            w = {i: Fraction(x) / scale for i, x in w.items()}
        holding = self._holding
        for p in list(holding.get(pivot, ())):
            other = self.rows[p]
            had = w.keys() & other.keys()  # only w's cells can change in the row
            _subtract(other, other[pivot], w)
            _moved(holding, p, had, w.keys() & other.keys())
        self.rows[pivot] = w
        for i in w:
            holding.setdefault(i, set()).add(pivot)
        return pivot


def _proportional(a: Vector, b: Vector) -> bool:
    if not a or a.keys() != b.keys():
        return False
    i = next(iter(a))
    ratio = Fraction(a[i]) / b[i]
    return all(a[k] == ratio * b[k] for k in a)


def secondary_suppression(
    columns: Sequence[frozenset[int]],
    primary: set[int],
    order: Sequence[int],
    forced: set[int] = frozenset(),  # type: ignore[assignment]
    new: list[int] | None = None,
) -> set[int]:
    """The publishable columns to hide: the primaries and the secondaries that protect them.

    ``columns[j]`` is the set of inner cells publishable column ``j`` sums; ``order`` lists the
    non-primary columns by preference to publish (most wanted first); ``forced`` must be published.
    ``new`` collects the published columns of ``order`` that are not implied by ``forced`` and
    the columns before them (what the release tells that was not known).
    """
    basis = _Basis()
    hidden = set(primary)
    reduced = {j: _column(columns[j]) for j in primary}
    touching: dict[int, set[int]] = {}  # inner cell -> the primaries whose reduced form is non-zero there
    for k, r in reduced.items():
        for i in r:
            touching.setdefault(i, set()).add(k)
    empty: set[int] = set()
    for j in list(forced) + [j for j in order if j not in primary and j not in forced]:
        w = basis.reduce(_column(columns[j]))
        if not w:
            continue  # already implied by what is published: publishing it reveals nothing new
        if j not in forced:
            n = len(w)
            # a primary proportional to w is non-zero exactly where w is: at w's first and last cells
            same = touching.get(min(w), empty) & touching.get(max(w), empty)
            if any(len(reduced[k]) == n and _proportional(reduced[k], w) for k in same):
                hidden.add(j)  # would pin down a hidden primary: suppress it as a secondary
                continue
        pivot = basis.add(w)
        if new is not None and j not in forced:
            new.append(j)
        wn = basis.rows[pivot]
        for k in list(touching.get(pivot, ())):
            r = reduced[k]
            had = wn.keys() & r.keys()  # only wn's cells can change in r
            _subtract(r, r[pivot], wn)
            _moved(touching, k, had, wn.keys() & r.keys())
    return hidden
