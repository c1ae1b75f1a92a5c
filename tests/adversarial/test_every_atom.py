"""Property: after any sequence of sdc tables, every small group the tables imply is safe.

Hypothesis generates sequences of count tables over one school and term (group-bys and
==, !=, in, not in filters on NC year, sex, ethnicity and FSM), released one after another
by one user. The judge then builds, from the raw census, the common refinement of every
table's cells (atoms: the groups of pupils no two cells tell apart), and solves the attacker's
LP over every atom of the school's public grid given every *released* value: each atom with
1..threshold−1 pupils, and each withheld cell with as few, must keep an interval at least the
threshold wide."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safestats as ss
from tests.adversarial.judge import SPRING, THRESHOLD, lp_intervals

DIMS = ("nc_year", "sex", "ethnicity", "fsm_eligible")


def _school(census) -> int:
    df = census.rows(term=SPRING)
    sizes = df.groupby("school_urn")["pupil_id"].nunique()
    return int(sizes[(sizes >= 60) & (sizes <= 120)].index[0])


@st.composite
def tables(draw, values):
    group = draw(st.lists(st.sampled_from(DIMS), max_size=2, unique=True))
    filters = []
    for column in draw(st.lists(st.sampled_from(DIMS), max_size=2, unique=True)):
        op = draw(st.sampled_from(["==", "!=", "in", "not in"]))
        pool = values[column]
        if op in ("==", "!="):
            filters.append((column, op, draw(st.sampled_from(pool))))
        else:
            filters.append(
                (column, op, tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))))
            )
    return group, filters


def _mask(frame: pd.DataFrame, filters, cell: dict) -> np.ndarray:
    m = np.ones(len(frame), dtype=bool)
    for column, op, v in filters:
        if op == "==":
            m &= (frame[column] == v).to_numpy()
        elif op == "!=":
            m &= (frame[column] != v).to_numpy()
        elif op == "in":
            m &= frame[column].isin(v).to_numpy()
        else:
            m &= ~frame[column].isin(v).to_numpy()
    for column, v in cell.items():
        m &= (frame[column].astype(object) == v).to_numpy()
    return m


def test_every_small_atom_keeps_its_interval(census, sample_dir, tmp_path_factory):
    from safestats.catalog import load_catalog

    catalog = load_catalog(data_dir=sample_dir)
    school = _school(census)
    rows = census.rows(term=SPRING, school_urn=school)
    columns = catalog.tables["PupilOnRoll"].columns
    domains = {d: list(columns[d].domain) for d in DIMS}
    values = {d: [v for v in domains[d] if (rows[d] == v).any()] or domains[d][:2] for d in DIMS}
    grid = pd.DataFrame(list(itertools.product(*(domains[d] for d in DIMS))), columns=list(DIMS))
    key = rows.groupby(list(DIMS)).size()

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(tables(values), min_size=2, max_size=4))
    def run(sequence):
        store = tmp_path_factory.mktemp("atoms")
        s = ss.connect(
            user="demo.statistician",
            data_dir=sample_dir,
            environ={},
            store_url=f"sqlite:///{store / 's.db'}",
            output_checking_dir=str(store / "o"),
        )
        published: list[tuple[np.ndarray, float]] = []
        cells: list[np.ndarray] = []
        hidden: list[np.ndarray] = []
        for group, filters in sequence:
            q = s.table("PupilOnRoll").where(
                ss.Filter("term", "==", SPRING),
                ss.Filter("school_urn", "==", school),
                *(ss.Filter(c, op, v) for c, op, v in filters),
            )
            if group:
                q = q.group_by(*group)
            try:
                r = q.count().run()
            except ss.DisclosureRefused:
                continue
            for _, row in pd.DataFrame(r).iterrows():
                cell = {g: row[g] for g in group}
                m = _mask(grid, filters, cell)
                cells.append(m)
                if pd.isna(row["count"]):
                    hidden.append(m)
                else:
                    published.append((m, float(row["count"])))
        if not cells:
            return
        # the atoms: grid points grouped by the cells they lie in
        signature = np.stack(cells, axis=1)
        _, atom_of = np.unique(signature, axis=0, return_inverse=True)
        counts = np.array([key.get(tuple(p), 0) for p in grid.itertuples(index=False)], dtype=float)
        targets, pupils = {}, {}
        for a in np.unique(atom_of):
            m = atom_of == a
            n = counts[m].sum()  # one row per pupil in one school and term (no dual registrations here)
            if 1 <= n < THRESHOLD and signature[m][0].any():
                targets[f"atom {a}"], pupils[f"atom {a}"] = m, n
        for i, m in enumerate(hidden):
            if 1 <= counts[m].sum() < THRESHOLD:
                targets[f"cell {i}"], pupils[f"cell {i}"] = m, counts[m].sum()
        for name, (lo, hi) in lp_intervals(published, targets, len(grid)).items():
            assert hi - lo >= THRESHOLD - 1e-6, f"{name} ({pupils[name]:.0f} pupils) narrowed to [{lo}, {hi}]"

    assert not rows.groupby(list(DIMS))["pupil_id"].apply(lambda p: p.duplicated().any()).any()
    run()
