"""Secondary suppression and the attacker audit over linked tables (and a table alone).

:func:`protect_linked` chooses the cells to withhold so that every confidential cell — a
primary, an earlier table's withheld cell, or a small atom of the refinement — keeps an interval
at least its protection wide given everything published; :func:`audit_intervals` is the audit
(HiGHS LPs with fast paths that only ever under-state an interval). Pure: numbers in, cell
indices and intervals out (the structures come from :mod:`safestats.disclosure.linked`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from safestats.errors import DisclosureRefused

__all__ = ["LATE", "audit_intervals", "protect_linked"]

LATE = (
    "the check that no withheld cell of this table can be recovered (from its margins and the "
    "domain's earlier tables) did not finish in time; nothing was released (ask for fewer or "
    "coarser cells)"
)
#: what a cover's LP asks beyond the width (its tolerances are 1e-7)
SLACK = 1e-6
#: LPs over many cells at once, at most this many pairs, before each cell still short gets its own
JOINT_ROUNDS = 200


def protect_linked(
    columns: Sequence[frozenset[int]],
    values: Sequence[float],
    *,
    primary: set[int],
    candidates: Sequence[int],
    forced: set[int],
    kept_hidden: set[int],
    widths: Mapping[int, float],
    atom_values: np.ndarray | None = None,
    recheck: set[int] = frozenset(),  # type: ignore[assignment]
    max_rounds: int = 60,
    deadline: float | None = None,
) -> tuple[set[int], dict[int, tuple[float, float]]]:
    """Choose the cells to hide among ``candidates`` (in order of preference to publish).

    ``columns[j]`` is the set of atoms cell ``j`` sums; ``primary`` must be hidden, ``forced``
    is already published (earlier releases), ``kept_hidden`` was hidden before and stays so.
    Every cell in ``widths`` (the primaries, now and before) must keep an interval at least its
    width wide given everything published. Cells in ``recheck`` (earlier primaries, which passed
    with the earlier tables) are audited again only if this release publishes something the
    earlier ones did not imply: otherwise their intervals cannot have changed. Raises
    DisclosureRefused if no pattern protects every cell, or if none is found before
    ``deadline`` (``time.monotonic()``): a search that long is refused, not waited for.
    """
    from safestats.disclosure.secondary import secondary_suppression

    must_hide = set(primary) | set(kept_hidden)
    order = [j for j in candidates if j not in must_hide]
    new: list[int] = []
    hidden = secondary_suppression(columns, must_hide, order, forced, new)
    audit = widths if new else {j: w for j, w in widths.items() if j not in recheck}
    free = set(candidates) - forced
    cost = {m: 1.0 + 2.0 * (len(candidates) - k) / len(candidates) for k, m in enumerate(candidates)}
    # Each round hides more (partners): that drops constraints, so an interval wide enough in an
    # earlier round stays so (the points that showed it stay feasible) and is not audited again,
    # and no hidden cell becomes derivable (what is published is a subset of what was), so the
    # elimination is not run again either.
    passed: dict[int, tuple[float, float]] = {}
    for _ in range(max_rounds):
        if deadline is not None and time.monotonic() > deadline:
            raise DisclosureRefused(LATE)
        todo = {j: w for j, w in audit.items() if j not in passed}
        intervals = audit_intervals(columns, values, hidden, todo, atom_values, deadline=deadline)
        failing = sorted(j for j, (lo, hi) in intervals.items() if hi - lo < widths[j] - 1e-9)
        passed |= {j: v for j, v in intervals.items() if j not in failing}
        if not failing:
            return hidden, {j: passed[j] for j in audit}
        taken = set(hidden)  # a partner chosen this round is not chosen again
        cover = _Cover.build(columns, taken, free, cost, atom_values, failing) if atom_values is not None else None
        uncovered = []
        for j in failing:
            lo, hi = intervals[j]
            found = cover.partners(j, float(values[j]), lo, hi, widths[j]) if cover is not None else None
            if cover is not None and found is not None:  # hiding what it moves widens it: shown, not audited
                moved, reach = found
                cover.hide(moved)
                taken |= moved
                passed[j] = (min(lo, reach), max(hi, reach))
                continue
            uncovered.append(j)
            partner = _partner(j, columns, values, taken, free, widths[j] - (hi - lo))
            if partner is not None:
                taken.add(partner)
        if uncovered and taken <= hidden:  # a cell no cover or partner can widen
            break
        hidden = taken
    raise DisclosureRefused(
        "no suppression pattern protects every confidential cell of this table together with "
        "your earlier tables of the same data; nothing was released (ask for fewer or coarser "
        "cells)"
    )


def _partner(
    j: int,
    columns: Sequence[frozenset[int]],
    values: Sequence[float],
    hidden: set[int],
    candidates: set[int],
    need: float = 0.0,
) -> int | None:
    """The cell to hide next to widen hidden cell ``j`` (by ``need``): in the smallest published
    cell that bounds ``j``, the smallest published candidate beside ``j`` holding at least
    ``need`` (so one partner gives the slack; the largest if none does); failing that, a
    published candidate overlapping ``j`` (a margin)."""
    cj = columns[j]
    bounding = sorted(
        (m for m in range(len(columns)) if m not in hidden and columns[m] & cj), key=lambda m: (len(columns[m]), m)
    )
    for m in bounding:
        beside = [
            c for c in candidates if c not in hidden and c != m and columns[c] <= columns[m] and not columns[c] & cj
        ]
        if beside:
            enough = [c for c in beside if values[c] >= need]
            if enough:
                return min(enough, key=lambda c: (values[c], c))
            return max(beside, key=lambda c: (values[c], -c))
    overlapping = [c for c in candidates if c not in hidden and columns[c] & cj]
    return min(overlapping, key=lambda c: (len(columns[c]), values[c], c)) if overlapping else None


def audit_intervals(
    columns: Sequence[frozenset[int]],
    values: Sequence[float],
    hidden: set[int],
    widths: Mapping[int, float],
    atom_values: np.ndarray | None = None,
    deadline: float | None = None,
) -> dict[int, tuple[float, float]]:
    """The attacker audit: for each hidden cell with a required width, the range of values it
    can take given every published cell and non-negative atoms (HiGHS). Feasible points found
    on the way (the true values first) show many cells wide enough without solving for them:
    an interval is then reported as at least the spread seen."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix

    audited = [j for j in sorted(hidden) if j in widths]
    if not audited:
        return {}
    published = [j for j in range(len(columns)) if j not in hidden]
    quick = _exchange_ranges(columns, published, audited, atom_values) if atom_values is not None else {}
    # cells that swaps between interchangeable atoms already move far enough need no LP
    pending = [j for j in audited if j not in quick or quick[j][1] - quick[j][0] < widths[j]]
    if not pending:
        return quick
    atoms = sorted(set().union(*(columns[j] for j in pending)))
    # every atom reachable through a constraint from the audited cells matters
    relevant = set(atoms)
    changed = True
    while changed:
        changed = False
        for j in published:
            if columns[j] & relevant and not columns[j] <= relevant:
                relevant |= columns[j]
                changed = True
    index = {a: i for i, a in enumerate(sorted(relevant))}
    rows, cols, rhs = [], [], []
    r = 0
    for j in published:
        members = [index[a] for a in columns[j] if a in index]
        if not members:
            continue
        rows += [r] * len(members)
        cols += members
        rhs.append(float(values[j]))
        r += 1
    n = len(index)
    a_eq = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(r, n)) if r else None
    b_eq = np.array(rhs) if r else None
    # each pending cell as a row over the LP's atoms: a feasible point's cell values in one product
    of_cell = [np.array(sorted(index[a] for a in columns[j]), dtype=np.int64) for j in pending]
    incidence = csr_matrix(
        (
            np.ones(sum(len(m) for m in of_cell)),
            (np.repeat(np.arange(len(pending)), [len(m) for m in of_cell]), np.concatenate(of_cell)),
        ),
        shape=(len(pending), n),
    )
    need = np.array([widths[j] for j in pending], dtype=float)
    low, high = np.full(len(pending), math.inf), np.full(len(pending), -math.inf)

    def seen(x: np.ndarray) -> None:  # every feasible point widens what each cell is seen to take
        v = incidence @ x
        np.minimum(low, v, out=low)
        np.maximum(high, v, out=high)

    if atom_values is not None:  # the truth is a feasible point
        seen(np.array([float(atom_values[a]) for a in sorted(index)]))
    # capping atoms at the sum of everything published keeps every LP bounded; it can only make
    # the computed intervals narrower than the attacker's, never wider
    cap = max(1.0, float(sum(float(values[j]) for j in published))) * 2
    bounds = (0, cap)

    warm = _WarmLP.build(a_eq, b_eq, n, cap)

    def solve(c: np.ndarray) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise DisclosureRefused(LATE)
        if warm is not None:
            found = warm.minimise(c)
            if found is not None:
                seen(found[1])
            return
        res = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        if res.status == 0:
            seen(res.x)

    # LPs over many audited cells at once: where the constraints decouple (the usual case) they
    # push every cell to its extremes together, so most cells need no LP of their own. First all
    # pending cells with equal weights, then — while that keeps helping — random weightings of
    # the cells still short of their width (fixed seed: reproducible)
    rng = np.random.default_rng(len(pending))
    short = np.arange(len(pending))
    for round_ in range(JOINT_ROUNDS):
        # random signs: cells that share a margin can move together only in opposite directions
        weights = np.ones(len(short))
        if round_:
            weights = rng.choice([-1.0, 1.0], len(short)) * (0.5 + rng.random(len(short)))
        together = incidence[short].T @ weights
        solve(together)
        solve(-together)
        still = np.nonzero(high - low < need)[0]
        helped = len(short) - len(still) >= 4  # more than two pairs of LPs of their own would
        short = still
        if len(short) <= 1 or not helped:
            break
    # then each cell still short on its own: its least value, and if need be its greatest
    for row in short:
        if high[row] - low[row] >= need[row]:
            continue  # an earlier LP's point already showed it wide enough
        c = np.asarray(incidence[row].todense()).ravel()
        solve(c)
        if high[row] - low[row] < need[row]:
            solve(-c)
    out = {j: quick[j] for j in audited if j not in pending}
    for i, j in enumerate(pending):
        out[j] = (float(low[i]), float(high[i]))
    return out


def _exchange_ranges(
    columns: Sequence[frozenset[int]], published: Sequence[int], audited: Sequence[int], atom_values: np.ndarray
) -> dict[int, tuple[float, float]]:
    """A range each audited cell can certainly take, with no LP: atoms that lie in exactly the
    same published cells are interchangeable (moving a count from one to the other changes no
    published value), so a cell can gain what its exchange partners outside it hold and lose
    what its own exchangeable atoms hold; an atom in no published cell is unbounded. The true
    interval contains this range, so a range wide enough proves the cell safe."""
    signature: dict[int, list[int]] = {}
    for j in published:
        for a in columns[j]:
            signature.setdefault(a, []).append(j)
    key_of: dict[int, tuple[int, ...]] = {}
    size: dict[tuple[int, ...], int] = {}
    total: dict[tuple[int, ...], float] = {}
    for a in set().union(*(columns[j] for j in audited)) | set(signature):
        key = tuple(signature.get(a, ()))
        key_of[a] = key
        size[key] = size.get(key, 0) + 1
        total[key] = total.get(key, 0.0) + float(atom_values[a])
    out = {}
    for j in audited:
        inside_n: dict[tuple[int, ...], int] = {}
        inside_sum: dict[tuple[int, ...], float] = {}
        for a in columns[j]:
            key = key_of[a]
            inside_n[key] = inside_n.get(key, 0) + 1
            inside_sum[key] = inside_sum.get(key, 0.0) + float(atom_values[a])
        value = sum(inside_sum.values())
        up = down = 0.0
        for key, n_in in inside_n.items():
            if not key:
                up = math.inf
            elif size[key] > n_in:  # partners outside the cell
                up += total[key] - inside_sum[key]
                down += inside_sum[key]
        out[j] = (value - down, value + up)
    return out


class _Cover:
    """What to hide so that a failing cell's interval becomes wide enough: per cell, an LP over
    changes ``d`` to the atoms (atoms stay non-negative) that moves the cell by what it lacks
    while every published cell it cannot hide (the domain's earlier releases) stays as it is; a
    published candidate pays per unit it is moved, more the more it is wanted (margins first).
    Hiding the candidates the cheapest such change moves makes ``truth + d`` a point the
    attacker cannot rule out, while the point that showed the other end stays feasible (hiding
    drops constraints): the cell's interval is then wide enough, in one round. The LP's vertices
    move cycles of cells (as in a transportation problem), so one LP finds a whole cycle where
    one partner at a time could take many rounds. Cells already chosen this round cost nothing."""

    def __init__(
        self,
        highs: Any,
        core: Any,
        row_of: dict[int, int],
        slack: list[int],
        n_atoms: int,
        atoms_of: dict[int, list[int]],
    ) -> None:
        self.highs, self.core, self.row_of, self.slack = highs, core, row_of, slack
        self.n_atoms, self.atoms_of = n_atoms, atoms_of
        self.col_of = {m: k for k, m in enumerate(slack)}

    @classmethod
    def build(
        cls,
        columns: Sequence[frozenset[int]],
        hidden: set[int],
        free: set[int],
        cost: Mapping[int, float],
        atom_values: np.ndarray,
        failing: Sequence[int],
    ) -> _Cover | None:
        try:
            from scipy.optimize._highspy import _core as core
        except ImportError:  # pragma: no cover - scipy moved its binding: the one-partner fallback
            return None
        from scipy.sparse import csr_matrix

        n_atoms = len(atom_values)
        published = [m for m in range(len(columns)) if m not in hidden]
        slack = [m for m in published if m in free]
        col_of = {m: k for k, m in enumerate(slack)}
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        row_of: dict[int, int] = {}
        for r, m in enumerate([*published, *failing]):
            row_of[m] = r
            members = sorted(columns[m])
            rows += [r] * len(members)
            cols += members
            vals += [1.0] * len(members)
            if m in col_of:  # Δ_m − p_m + n_m = 0: the candidate may move, at a price
                rows += [r, r]
                cols += [n_atoms + col_of[m], n_atoms + len(slack) + col_of[m]]
                vals += [-1.0, 1.0]
        n_rows, n_cols = len(published) + len(failing), n_atoms + 2 * len(slack)
        csc = csr_matrix((vals, (rows, cols)), shape=(n_rows, n_cols)).tocsc()
        highs = core._Highs()
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("presolve", "off")  # each cell's LP starts from the last basis
        lp = core.HighsLp()
        lp.num_col_, lp.num_row_ = n_cols, n_rows
        price = np.array([float(cost[m]) for m in slack])
        lp.col_cost_ = np.concatenate([np.zeros(n_atoms), price, price])
        lp.col_lower_ = np.concatenate([-np.asarray(atom_values, dtype=float), np.zeros(2 * len(slack))])
        lp.col_upper_ = np.full(n_cols, math.inf)
        lp.row_lower_ = np.concatenate([np.zeros(len(published)), np.full(len(failing), -math.inf)])
        lp.row_upper_ = np.concatenate([np.zeros(len(published)), np.full(len(failing), math.inf)])
        lp.a_matrix_.format_ = core.MatrixFormat.kColwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_cols, n_rows
        lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
        lp.a_matrix_.index_ = csc.indices.astype(np.int32)
        lp.a_matrix_.value_ = csc.data.astype(float)
        highs.passModel(lp)
        return cls(highs, core, row_of, slack, n_atoms, {j: sorted(columns[j]) for j in failing})

    def partners(self, j: int, value: float, lo: float, hi: float, width: float) -> tuple[set[int], float] | None:
        """The candidates to hide so that cell ``j`` (true ``value``, seen to take ``lo..hi``)
        can take a value ``width`` from one end — up from ``lo``, or failing that down from
        ``hi`` — and the value it then takes; None if neither is possible however many
        candidates are hidden. (A hair more than ``width``: the LP's tolerances.)"""
        row = self.row_of[j]
        for bounds in ((lo + width - value + SLACK, math.inf), (-math.inf, hi - width - value - SLACK)):
            self.highs.changeRowBounds(row, *bounds)
            self.highs.run()
            ok = self.highs.getModelStatus() == self.core.HighsModelStatus.kOptimal
            x = np.array(self.highs.getSolution().col_value) if ok else None
            self.highs.changeRowBounds(row, -math.inf, math.inf)
            if x is not None:
                s = len(self.slack)
                moved = x[self.n_atoms : self.n_atoms + s] + x[self.n_atoms + s :]
                reach = value + float(sum(x[a] for a in self.atoms_of[j]))
                return {self.slack[k] for k in np.nonzero(moved > 1e-7)[0]}, reach
        return None

    def hide(self, cells: set[int]) -> None:
        """``cells`` will be hidden: moving them costs nothing from now on."""
        ks = [self.col_of[m] for m in cells if m in self.col_of]
        if ks:
            s = len(self.slack)
            idx = np.array([self.n_atoms + k for k in ks] + [self.n_atoms + s + k for k in ks], dtype=np.int32)
            self.highs.changeColsCost(len(idx), idx, np.zeros(len(idx)))


class _WarmLP:
    """One HiGHS model solved for many objectives, each starting from the last basis (the
    audit's LPs share their constraints). HiGHS as scipy ships it; the pinned scipy's private
    binding, with ``linprog`` as the fallback if it is ever missing."""

    def __init__(self, highs: Any, core: Any, n: int) -> None:
        self.highs, self.core, self.n = highs, core, n
        self.all = np.arange(n, dtype=np.int32)

    @classmethod
    def build(cls, a_eq: Any, b_eq: np.ndarray | None, n: int, cap: float) -> _WarmLP | None:
        try:
            from scipy.optimize._highspy import _core as core
        except ImportError:  # pragma: no cover - scipy moved its binding: fall back to linprog
            return None
        highs = core._Highs()
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("presolve", "off")  # each objective starts from the last basis
        highs.setOptionValue("simplex_strategy", 4)  # primal: a new objective keeps the basis feasible
        lp = core.HighsLp()
        lp.num_col_ = n
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.zeros(n)
        lp.col_upper_ = np.full(n, cap)
        if a_eq is not None:
            csc = a_eq.tocsc()
            lp.num_row_ = csc.shape[0]
            lp.row_lower_ = b_eq
            lp.row_upper_ = b_eq
            lp.a_matrix_.format_ = core.MatrixFormat.kColwise
            lp.a_matrix_.num_col_ = n
            lp.a_matrix_.num_row_ = csc.shape[0]
            lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
            lp.a_matrix_.index_ = csc.indices.astype(np.int32)
            lp.a_matrix_.value_ = csc.data.astype(float)
        highs.passModel(lp)
        return cls(highs, core, n)

    def minimise(self, c: np.ndarray) -> tuple[float, np.ndarray] | None:
        self.highs.changeColsCost(self.n, self.all, np.asarray(c, dtype=float))
        self.highs.run()
        if self.highs.getModelStatus() != self.core.HighsModelStatus.kOptimal:
            return None
        x = np.array(self.highs.getSolution().col_value)
        return float(np.dot(c, x)), x
