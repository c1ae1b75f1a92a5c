"""The ± of dp results is a 95% interval: measured over many draws against the exact values.

Cells are judged among the cells that are shown (a noisy count under the threshold is ``c``),
on a dense grid (phase × sex: every cell large) and sparse ones (LA × year, LA × year × sex:
many cells near or under the threshold, and structural zeros); totals are the margins and the
grand total of the same tables. Fixed harness seeds; noise from OpenDP's samplers.

The reported interval is ``result.interval()`` (``lower``, ``upper``): for counts near the
threshold, the interval conditional on being shown, which is not centred on the value. Its
symmetric envelope (``accuracy``, the ±) over-covered the sparse grids' cells (0.972–0.980,
over the band), so it is held only to at least 95%.

Measured: cells 0.954–0.966 with the interval on the sparse grids; on the dense grid the cells
are far from the threshold and cover as often as the integer noise's own ``±a`` (0.956 Laplace,
0.967 Gaussian: integer noise cannot hit 95% exactly), which is what the test holds them to;
totals 0.945–0.961 with the exact interval of a sum of noises (the normal approximation gave
0.930 on the dense Laplace grid and failed CI once).
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import pandas as pd
import pytest

from safestats.access.policy import Disclosure
from safestats.disclosure.dp import plan_dp, protect_dp
from safestats.disclosure.protect import densify
from safestats.engines.memory import MemoryEngine
from safestats.query.model import Aggregate, Filter, Query
from safestats.query.validate import plan_query

pytestmark = pytest.mark.slow  # many draws: run by `make test` (CI), not `make test-fast`


@pytest.fixture(scope="module")
def engine(sample_dir):
    from safestats.dataset import open_dataset

    return MemoryEngine.from_dataset(open_dataset(sample_dir))


def _truth(grid: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    truth = grid[[*keys, "__count"]].copy()
    rows = [truth]
    for r in range(len(keys) - 1, -1, -1):
        for kept in itertools.combinations(keys, r):
            g = (
                truth.groupby(list(kept), dropna=False)["__count"].sum().reset_index()
                if kept
                else truth[["__count"]].sum().to_frame().T
            )
            for k in keys:
                if k not in kept:
                    g[k] = "Total"
            rows.append(g)
    return pd.concat(rows, ignore_index=True).astype({k: object for k in keys})


def _noise_coverage(noise) -> float:
    """P(|N| ≤ a) for the release's noise, from 200,000 of OpenDP's own draws."""
    import numpy as np

    from safestats.privacy import accountant

    release = accountant.compose([accountant.Piece("c", "vector", (noise.mechanism, noise.scale, 1))])
    draws = np.asarray(accountant.run(release, {"c": np.zeros(200_000, dtype=np.int64)})[0])
    return float((np.abs(draws) <= noise.accuracy).mean())


GRIDS = {
    "dense": (("phase", "sex"), 600),  # 8 cells: ~4,800 draws, a standard error of 0.003
    "sparse": (("la_code", "nc_year"), 30),
    "sparse3": (("la_code", "nc_year", "sex"), 20),
}
POLICIES = {
    "laplace": Disclosure(mode="dp", noise="laplace", per_query=Fraction(1, 4)),
    "gaussian": Disclosure(mode="dp", noise="gaussian", per_query=Fraction(1, 32)),
}


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_intervals_cover_95_percent_of_cells_and_totals(engine, catalog, grid_name, policy):
    keys, draws = GRIDS[grid_name]
    q = Query("PupilOnRoll", (Aggregate("count"),), keys, (Filter("term", "==", "2017-spring"),), totals=True)
    dp_plan = plan_dp(plan_query(q, catalog=catalog, max_cells=100_000), POLICIES[policy], max_cells=100_000)
    exact = engine.execute(dp_plan.plan)
    truth = _truth(densify(exact, dp_plan.plan, structural_cells=True), keys)
    hits = {True: 0, False: 0}
    envelope = {True: 0, False: 0}
    seen = {True: 0, False: 0}
    for _ in range(draws):
        p = protect_dp(exact, None, dp_plan)
        assert p.lower is not None and p.upper is not None and p.accuracy is not None
        table = p.table.astype({k: object for k in keys})
        table["__half"] = p.accuracy["count"].astype(float)
        table["__low"], table["__high"] = p.lower["count"].astype(float), p.upper["count"].astype(float)
        m = table.merge(truth, on=list(keys), how="left", validate="one_to_one")
        assert m["__count"].notna().all()
        is_cell = ~(m[list(keys)] == "Total").any(axis=1)
        shown = m["count"].notna()
        assert m.loc[~shown, ["__half", "__low", "__high"]].isna().all().all()  # a withheld cell has no interval
        v = m["__count"].astype(float)
        covered = (m["__low"] <= v) & (v <= m["__high"])
        in_envelope = (m["count"].astype(float) - v).abs() <= m["__half"]
        for cell in (True, False):
            seen[cell] += int((shown & (is_cell == cell)).sum())
            hits[cell] += int((covered & shown & (is_cell == cell)).sum())
            envelope[cell] += int((in_envelope & shown & (is_cell == cell)).sum())
    cells, totals = hits[True] / seen[True], hits[False] / seen[False]
    assert seen[True] > 1000 and seen[False] > 1000
    # the band is 93-97%; the lower bound sits 5 standard errors under 95% so a correct
    # sampler (OpenDP's cannot be seeded) fails this about once in a million runs
    if grid_name == "dense":
        # Every shown cell but a rare PRU one is far from the threshold, so its coverage is the
        # integer noise's own P(|N| ≤ a) (0.956 Laplace, 0.967 Gaussian here): measured with
        # 200,000 of OpenDP's draws, held to the band, and the cells held to it within 4 SE.
        own = _noise_coverage(dp_plan.measurements[0].noise)
        assert 0.93 <= own <= 0.97, own
        var = own * (1 - own)
        assert abs(cells - own) <= 4 * ((var / seen[True]) ** 0.5 + (var / 200_000) ** 0.5) + 0.002, (cells, own)
    else:
        assert 0.935 <= cells <= 0.97, cells
    assert 0.93 <= totals <= 0.97, totals
    # the ± (the interval's symmetric envelope) is conservative: it covers at least as often
    assert envelope[True] >= hits[True] and envelope[False] >= hits[False]
