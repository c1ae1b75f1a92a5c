"""The linked-tables machinery: the fast paths of the attacker audit never claim more than the
exact LP intervals, and the common refinement only keeps the distinctions some table makes."""

from __future__ import annotations

import numpy as np
import pytest

from safestats.disclosure.linked import Spec, merge_atoms, refinement
from safestats.disclosure.linked_audit import _exchange_ranges, audit_intervals
from tests.oracles import attacker_intervals


def _table(values_2d):
    rows, cols = values_2d.shape
    columns = [frozenset([k]) for k in range(rows * cols)]
    columns += [frozenset(r * cols + c for c in range(cols)) for r in range(rows)]
    columns += [frozenset(r * cols + c for r in range(rows)) for c in range(cols)]
    columns.append(frozenset(range(rows * cols)))
    flat = values_2d.ravel()
    values = [float(flat[sorted(c)].sum()) for c in columns]
    return columns, values, rows * cols


@pytest.mark.parametrize("seed", range(12))
def test_the_fast_audit_never_claims_more_than_the_exact_lp(seed):
    rng = np.random.default_rng(seed)
    t = rng.negative_binomial(1, 0.08, size=(rng.integers(3, 7), rng.integers(3, 6)))
    columns, values, n = _table(t)
    hidden = {k for k in range(n) if values[k] < 10}
    hidden |= set(rng.choice(n, size=3, replace=False).tolist())  # some secondaries
    if rng.random() < 0.5:
        hidden.add(n)  # a hidden margin
    widths = {j: 10.0 for j in hidden if j < n}
    exact = attacker_intervals(columns, values, hidden, n)
    fast = audit_intervals(columns, values, hidden, widths, np.asarray(t.ravel(), dtype=float))
    for j, (lo, hi) in fast.items():
        elo, ehi = exact[j]
        assert lo >= elo - 1e-6 and (hi <= ehi + 1e-6 or np.isinf(ehi) or hi >= 1e6), (j, (lo, hi), exact[j])
        if hi - lo < widths[j]:  # a failing cell is reported with its exact interval
            assert lo == pytest.approx(elo, abs=1e-6) and hi == pytest.approx(ehi, abs=1e-6)
        else:
            assert ehi - elo >= widths[j] - 1e-6


def test_exchangeable_atoms_give_ranges_without_lp():
    # three hidden atoms in the same single published total: each can take the others' counts
    columns = [frozenset([0]), frozenset([1]), frozenset([2]), frozenset([0, 1, 2])]
    ranges = _exchange_ranges(columns, [3], [0, 1, 2], np.array([3.0, 4.0, 20.0]))
    assert ranges[0] == (0.0, 27.0) and ranges[2] == (0.0, 27.0)
    # an atom in no published cell is unbounded above
    assert _exchange_ranges(columns, [], [0], np.array([3.0, 4.0, 20.0]))[0][1] == np.inf


def test_atoms_in_the_same_cells_merge():
    cells = [np.array([0, 1]), np.array([0, 1, 2, 3]), np.array([2, 3])]
    columns, of_atom = merge_atoms(cells, 5)
    assert of_atom.tolist()[:4] == [0, 0, 1, 1] and of_atom[4] == -1
    assert columns == [frozenset([0]), frozenset([0, 1]), frozenset([1])]


def test_the_refinement_keeps_only_the_distinctions_tables_make(catalog):
    columns = {**catalog.tables["PupilOnRoll"].columns, **catalog.tables["Nationality"].columns}
    nyo = Spec(
        family="f",
        terms=(),
        dims={"nationality": {"column": "nationality", "width": None}},
        cells=(({"nationality": ('"NYO"',)}, ""),),
    )
    everyone = Spec(family="f", terms=(), dims={}, cells=(({}, ""),))
    by_phase = Spec(
        family="f",
        terms=(),
        dims={"phase": {"column": "phase", "width": None}},
        cells=tuple(({"phase": (f'"{p}"',)}, "") for p in ("Primary", "Secondary")),
    )
    ref = refinement([nyo, everyone, by_phase], columns)
    assert ref.dims == ["nationality", "phase"]
    assert ref.sizes[0] == 2  # NYO, and every other nationality together
    assert ref.sizes[1] == 3  # Primary, Secondary, and the other phases together
    atoms = ref.atoms(nyo)[0]
    assert len(atoms) == 3  # NYO across the three phase classes
    binned = Spec(
        family="f",
        terms=(),
        dims={"sessions_attended_bin": {"column": "sessions_attended", "width": 20}},
        cells=(({"sessions_attended_bin": ("0",)}, ""),),
    )
    coarse = Spec(
        family="f",
        terms=(),
        dims={"sessions_attended_bin": {"column": "sessions_attended", "width": 50}},
        cells=(({"sessions_attended_bin": ("0",)}, ""),),
    )
    ref = refinement([binned, coarse], columns)
    assert ref.widths == [10]  # the common width of 20 and 50
    assert ref.sizes == [2]  # [0, 20) and [20, 50); values past 50 are in no cell and left out
