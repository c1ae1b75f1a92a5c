"""The privacy claims of dp mode, pinned.

- Neighbouring datasets: removing one pupil (all their rows, in every table) changes each
  exact measurement vector by at most the sensitivity the planner claims, in L1 and L2.
- The noise has the claimed distribution and scale (goodness of fit at a fixed significance).
- Empirically, output frequencies on neighbouring counts stay within e^ε.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import stats

from safestats.access.policy import Disclosure
from safestats.catalog import load_catalog
from safestats.dataset import open_dataset
from safestats.disclosure.dp import exact_inputs, plan_dp
from safestats.disclosure.protect import densify, grid_counts
from safestats.engines.duckdb import DuckDBEngine
from safestats.engines.memory import MemoryEngine
from safestats.privacy.dp import add_noise, calibrate
from safestats.query.model import Aggregate, Filter, Query
from safestats.query.validate import plan_query
from safestats.synthetic.census import generate


class _Env(tuple):
    def __repr__(self) -> str:
        return "<small census>"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    path = tmp_path_factory.mktemp("census") / "small"
    generate(path, pupils=2000, seed=11, progress=False)
    ds = open_dataset(path)
    engine = MemoryEngine.from_dataset(ds)
    # Pupils with the most rows are the interesting neighbours (dual registrations, leavers).
    rows = pd.concat([t["pupil_id"] for t in engine.tables.values()]).value_counts()
    return _Env((load_catalog(data_dir=path), engine, rows.index[:40].tolist() + rows.index[-20:].tolist(), path))


@pytest.fixture(scope="module")
def duck(env):
    e = DuckDBEngine(open_dataset(env[3]))
    yield e
    e.close()


# Large enough for every generated query (a quantile's histogram over nationality x phase is
# ~120,000 cells): the claim is checked on all of them, none is refused for size.
MAX_CELLS = 1_000_000
LAPLACE = Disclosure(mode="dp", noise="laplace", per_query=Fraction(1))
GAUSSIAN = Disclosure(mode="dp", noise="gaussian", per_query=Fraction(1, 2))


@st.composite
def dp_queries(draw):
    table = draw(st.sampled_from(["PupilOnRoll", "PupilOnRoll_Unrestricted", "PupilNoLongerOnRoll", "Nationality"]))
    join = "Nationality" if table == "PupilOnRoll" and draw(st.booleans()) else None
    keys = {
        "PupilOnRoll": ["phase", "sex", "term", "fsm_eligible", "nc_year"],
        "PupilOnRoll_Unrestricted": ["phase", "term", "proficiency_in_english"],
        "PupilNoLongerOnRoll": ["leaving_reason", "term", "sex"],
        "Nationality": ["term", "proficiency_in_english"],
    }[table]
    if join:
        keys = keys + ["nationality"]
    group = draw(st.lists(st.sampled_from(keys), max_size=2, unique=True))
    aggs = [Aggregate("count"), Aggregate("count_pupils")]
    if table.startswith("PupilOnRoll"):
        aggs += [
            Aggregate("sum", "sessions_attended"),
            Aggregate("mean", "sessions_possible"),
            Aggregate("quantile", "sessions_attended", 0.5),
        ]
    chosen = draw(st.lists(st.sampled_from(aggs), min_size=1, max_size=3, unique_by=lambda a: a.name))
    filters = []
    if draw(st.booleans()):
        terms = draw(st.lists(st.sampled_from(["2016-autumn", "2017-spring", "2017-summer"]), min_size=1, unique=True))
        filters.append(Filter("term", "in", tuple(terms)))
    k = draw(st.sampled_from([None, 1, 2, 5]))
    return Query(table, tuple(chosen), tuple(group), tuple(filters), join=join, max_rows_per_pupil=k)


def _without(engine: MemoryEngine, pupil: int) -> MemoryEngine:
    return MemoryEngine({n: t[t["pupil_id"] != pupil] for n, t in engine.tables.items()})


def _vectors(engine, dp_plan):
    """The exact vectors the release's noise is added to (what protect_dp reads)."""
    names = [m.name for m in dp_plan.measurements]
    out = {k: v.astype(float) for k, v in exact_inputs(engine.execute(dp_plan.plan), dp_plan.plan, names).items()}
    if dp_plan.histogram_plan is not None:
        h = exact_inputs(engine.execute(dp_plan.histogram_plan), dp_plan.histogram_plan, ["__hist"])
        out["__hist"] = h["__hist"].astype(float)
    return out


def _densified(exact, plan, names):
    grid = densify(exact, plan, structural_cells=True)
    return {name: grid[name].fillna(0).to_numpy(dtype=np.int64) for name in names}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=dp_queries())
def test_the_scattered_grid_is_the_densified_grid(env, duck, query):
    """The release scatters the engine's rows onto the grid in numpy (protect.py: grid_counts);
    on every engine, for every generated query and its histogram, that is exactly the grid
    ``densify`` lays out (the reference), and the fast path is the one taken."""
    catalog, engine, _, _ = env
    dp_plan = plan_dp(plan_query(query, catalog=catalog, max_cells=MAX_CELLS), LAPLACE, max_cells=MAX_CELLS)
    plans = [(dp_plan.plan, [m.name for m in dp_plan.measurements])]
    if dp_plan.histogram_plan is not None:
        plans.append((dp_plan.histogram_plan, ["__hist"]))
    for plan, names in plans:
        for e in (engine, duck):
            exact = e.execute(plan)
            fast = grid_counts(exact, plan, names)
            assert fast is not None
            want = _densified(exact, plan, names)
            for name in names:
                np.testing.assert_array_equal(fast[name], want[name], err_msg=f"{name} on {type(e).__name__}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=dp_queries(), which=st.integers(0, 59))
@example(  # a quantile histogram past 100,000 cells (once refused for size, so never checked)
    query=Query(
        "PupilOnRoll",
        (Aggregate("quantile", "sessions_attended", 0.5),),
        ("nationality", "nc_year"),
        join="Nationality",
    ),
    which=0,
)
def test_removing_one_pupil_moves_each_measurement_by_at_most_its_sensitivity(env, query, which):
    catalog, engine, pupils, _ = env
    plan = plan_query(query, catalog=catalog, max_cells=MAX_CELLS)
    neighbour = _without(engine, pupils[which % len(pupils)])
    for disclosure in (LAPLACE, GAUSSIAN):
        dp_plan = plan_dp(plan, disclosure, max_cells=MAX_CELLS)
        full, less = _vectors(engine, dp_plan), _vectors(neighbour, dp_plan)
        for m in dp_plan.measurements:
            diff = full[m.name] - less[m.name]
            if disclosure.noise == "laplace":
                assert np.abs(diff).sum() <= m.sensitivity + 1e-9, (m.name, np.abs(diff).sum(), m.sensitivity)
            else:
                assert math.sqrt((diff**2).sum()) <= m.sensitivity + 1e-9, (m.name, m.sensitivity)
        if dp_plan.quantiles:  # the exponential mechanism is calibrated for k rows changed in all cells together
            rows_changed = np.abs(full["__hist"] - less["__hist"]).sum()
            assert rows_changed <= dp_plan.k, (rows_changed, dp_plan.k)
            assert all(qt.noise.k == dp_plan.k for qt in dp_plan.quantiles)


def test_the_bound_is_enforced_not_assumed(env):
    """A pupil with many rows contributes at most k of them to the engine's counts."""
    catalog, engine, pupils, _ = env
    heavy = pupils[0]
    assert sum((t["pupil_id"] == heavy).sum() for t in engine.tables.values()) > 3
    q = Query("PupilOnRoll", (Aggregate("count"),), max_rows_per_pupil=1)
    dp_plan = plan_dp(plan_query(q, catalog=catalog, max_cells=10), LAPLACE, max_cells=10)
    diff = _vectors(engine, dp_plan)["__count"] - _vectors(_without(engine, heavy), dp_plan)["__count"]
    assert diff.sum() == 1


# -- the noise -------------------------------------------------------------------------------------

N = 40_000
ALPHA = 1e-4  # the test harness's fixed significance: a correct sampler fails 1 run in 10,000


def _chi_square(samples: np.ndarray, pmf) -> float:
    values = np.arange(-12, 13)
    probs = np.array([pmf(v) for v in values])
    observed = np.array([(samples == v).sum() for v in values] + [(np.abs(samples) > 12).sum()])
    expected = np.append(probs, max(0.0, 1 - probs.sum())) * len(samples)
    keep = expected > 5
    obs, exp = observed[keep], expected[keep]
    if expected[~keep].sum() > 5:  # pool the rare values into one bin when it is big enough
        obs, exp = np.append(obs, observed[~keep].sum()), np.append(exp, expected[~keep].sum())
    exp = exp * obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


def test_discrete_laplace_has_the_claimed_scale():
    noise = calibrate("laplace", 2, Fraction(1))  # sensitivity 2, ε = 1: scale 2
    assert noise.scale == pytest.approx(2.0)
    samples = add_noise(np.zeros(N, dtype=np.int64), noise)
    t = math.exp(-1 / noise.scale)
    pvalue = _chi_square(samples, lambda x: (1 - t) / (1 + t) * t ** abs(x))
    assert pvalue > ALPHA
    assert abs(samples.mean()) < 5 * math.sqrt(2 * t / (1 - t) ** 2 / N)


def test_discrete_gaussian_has_the_claimed_scale():
    noise = calibrate("gaussian", 1.0, Fraction(1, 8))  # ρ = Δ²/(2σ²): σ = 2
    assert noise.scale == pytest.approx(2.0, rel=1e-6)
    samples = add_noise(np.zeros(N, dtype=np.int64), noise)
    weights = {x: math.exp(-(x**2) / (2 * noise.scale**2)) for x in range(-60, 61)}
    z = sum(weights.values())
    assert _chi_square(samples, lambda x: weights[x] / z) > ALPHA


@pytest.mark.parametrize(
    ("kind", "loss"),
    [
        ("laplace", Fraction(1, 2)),
        ("laplace", Fraction(1, 8)),
        ("gaussian", Fraction(1, 8)),
        ("gaussian", Fraction(1, 50)),
    ],
)
def test_accuracy_is_a_95_percent_interval(kind, loss):
    """The ± is the exact 95% interval of the integer noise, not a loose bound (OpenDP's
    accuracy function for the discrete Gaussian covered 99.5% at σ = 2)."""
    noise = calibrate(kind, 1, loss)
    samples = add_noise(np.zeros(N, dtype=np.int64), noise)
    inside = (np.abs(samples) <= noise.accuracy).mean()
    assert 0.945 <= inside <= 0.98, inside  # integer widths: as close to 95% as whole numbers allow
    assert (np.abs(samples) <= noise.accuracy - 1).mean() < 0.95  # and it is the smallest such width


def test_quantile_map_composes_over_cells():
    """A pupil's k rows may fall in k cells: OpenDP's per-cell map of the exponential mechanism
    is linear in rows for ε and quadratic for ρ, so k cells with one row each never lose more
    than one cell with k rows — the parallel composition the quantile's map relies on."""
    from safestats.privacy.accountant import _cell_quantile

    candidates = tuple(float(x) - 0.5 for x in range(0, 101, 5))
    for alpha in (0.5, 0.1, 0.9):
        eps = _cell_quantile(candidates, alpha, 3.0, "max_divergence")
        rho = _cell_quantile(candidates, alpha, 3.0, "zero_concentrated_divergence")
        for k in (1, 2, 3, 7):
            assert k * eps.map(1) <= eps.map(k) * (1 + 1e-12)
            assert k * rho.map(1) <= rho.map(k) * (1 + 1e-12)


def test_the_release_is_certified_by_openDP_composition(env):
    """The loss OpenDP's map certifies for the composed release never exceeds the charge,
    whatever the mix of measurements, and a release that would is refused before noise."""
    from safestats.privacy import accountant

    catalog, engine, _, _ = env
    q = Query(
        "PupilOnRoll",
        (
            Aggregate("count"),
            Aggregate("count_pupils"),
            Aggregate("mean", "sessions_attended"),
            Aggregate("quantile", "sessions_attended", 0.5),
        ),
        ("phase",),
        max_rows_per_pupil=3,
    )
    for disclosure in (LAPLACE, GAUSSIAN):
        dp_plan = plan_dp(plan_query(q, catalog=catalog, max_cells=MAX_CELLS), disclosure, max_cells=MAX_CELLS)
        pieces = [m.piece for m in dp_plan.measurements]
        edges = np.array(dp_plan.histogram_plan.keys[-1].cells, dtype=float)
        pieces += [accountant.Piece("__hist", "quantile", (qt.noise, 5, edges)) for qt in dp_plan.quantiles]
        release = accountant.compose(pieces)
        certified = float(release.map(1))
        assert certified <= float(dp_plan.loss) * (1 + 1e-9)
        assert certified >= 0.99 * float(dp_plan.loss)  # the split is used, not wasted
        with pytest.raises(RuntimeError, match="more than"):
            accountant.certify(release, dp_plan.loss / 2)
        assert float(release.map(2)) > certified  # two pupils lose more than one: the map is live


@pytest.mark.slow
def test_empirical_privacy_of_the_gaussian_path(env):
    """The Gaussian path at k = 2 rows per pupil, through the release's own composed
    measurement: the neighbours' output distributions differ by at most the ρ charged (the KL
    divergence of two Gaussians is ρ at the sensitivity). A fractional bound that charged for
    one row while the engine kept two would show a KL about 4× the charge."""
    from safestats.privacy import accountant

    catalog, engine, pupils, _ = env
    rho = Fraction(1, 8)
    q = Query("PupilOnRoll", (Aggregate("count"),), max_rows_per_pupil=2)
    dp_plan = plan_dp(plan_query(replace(q, rho=str(rho)), catalog=catalog, max_cells=10), GAUSSIAN, max_cells=10)
    heavy = pupils[0]
    full = _vectors(engine, dp_plan)["__count"].astype(np.int64)
    less = _vectors(_without(engine, heavy), dp_plan)["__count"].astype(np.int64)
    assert int(full[0] - less[0]) == 2  # the neighbour moves the count by the whole bound
    release = accountant.compose([m.piece for m in dp_plan.measurements])
    a = np.array([accountant.run(release, {"__count": full})[0][0] for _ in range(20_000)]) - full[0]
    b = np.array([accountant.run(release, {"__count": less})[0][0] for _ in range(20_000)]) - full[0]
    ca, cb = Counter(a.tolist()), Counter(b.tolist())
    support = [v for v in ca if ca[v] >= 50 and cb[v] >= 50]
    pa = np.array([ca[v] for v in support], dtype=float)
    pb = np.array([cb[v] for v in support], dtype=float)
    pa, pb = pa / pa.sum(), pb / pb.sum()
    kl = float((pa * np.log(pa / pb)).sum())
    assert 0.5 * float(rho) <= kl <= 1.3 * float(rho), kl


def test_output_frequencies_on_neighbouring_counts_stay_within_e_to_the_epsilon():
    eps = 1.0
    noise = calibrate("laplace", 1, Fraction(1))
    a = Counter(add_noise(np.full(N, 100, dtype=np.int64), noise).tolist())
    b = Counter(add_noise(np.full(N, 101, dtype=np.int64), noise).tolist())
    checked = 0
    for value in set(a) | set(b):
        pa, pb = a[value] / N, b[value] / N
        if a[value] < 400 or b[value] < 400:
            continue  # too rare to estimate a ratio
        # 5 standard errors of the log-ratio as statistical tolerance
        tol = 5 * math.sqrt(1 / a[value] + 1 / b[value])
        assert abs(math.log(pa / pb)) <= eps + tol, (value, pa, pb)
        checked += 1
    assert checked >= 5


def test_totals_are_post_processing_of_the_noisy_cells(env, monkeypatch):
    """Margins add no measurement and no loss, and are computed from the noisy outputs only:
    recomputed from what the composed measurement returned, the grand total is the same."""
    from safestats.disclosure import dp as dp_mode
    from safestats.disclosure.dp import protect_dp
    from safestats.privacy import accountant

    catalog, engine, _, _ = env
    q = Query(
        "PupilOnRoll",
        (Aggregate("count"), Aggregate("sum", "sessions_attended")),
        ("phase", "sex"),
        (Filter("term", "==", "2017-spring"),),
    )
    plain = plan_dp(plan_query(q, catalog=catalog, max_cells=MAX_CELLS), LAPLACE, max_cells=MAX_CELLS)
    totals = plan_dp(
        plan_query(replace(q, totals=True), catalog=catalog, max_cells=MAX_CELLS), LAPLACE, max_cells=MAX_CELLS
    )
    assert [m.piece for m in totals.measurements] == [m.piece for m in plain.measurements]
    assert totals.loss == plain.loss
    seen = []
    real_run = accountant.run
    monkeypatch.setattr(dp_mode.accountant, "run", lambda m, grid: seen.append(real_run(m, grid)) or seen[-1])
    p = protect_dp(engine.execute(totals.plan), None, totals)
    noisy = dict(zip([m.name for m in totals.measurements], seen[0], strict=True))
    grand = p.table[(p.table["phase"] == "Total") & (p.table["sex"] == "Total")]
    assert int(grand["count"].iloc[0]) == max(int(np.sum(noisy["__count"])), 0)
    assert int(grand["sum_sessions_attended"].iloc[0]) == int(np.sum(noisy["__sum_sessions_attended"]))


@pytest.mark.parametrize("which", [0, 1, 2, 45])
def test_partition_selection_counts_move_within_the_bound(env, which):
    """Partition selection's input (exact counts of the non-empty cells) moves by at most k
    cells, k in all and k in any one cell (the l0, l1, l∞ distance its map is computed at)."""
    catalog, engine, pupils, _ = env
    for k in (1, 3):
        q = Query(
            "PupilOnRoll", (Aggregate("count"),), ("postcode_district",), delta="1/1000000000", max_rows_per_pupil=k
        )
        dp_plan = plan_dp(plan_query(q, catalog=catalog, max_cells=MAX_CELLS), LAPLACE, max_cells=MAX_CELLS)
        assert dp_plan.selection is not None and dp_plan.selection.sensitivity == k

        def counts(e, dp_plan=dp_plan):
            out = e.execute(dp_plan.plan)
            return dict(zip(out["postcode_district"], out["__count"], strict=True))

        full, less = counts(engine), counts(_without(engine, pupils[which % len(pupils)]))
        diffs = [abs(int(full.get(c, 0)) - int(less.get(c, 0))) for c in set(full) | set(less)]
        assert sum(d > 0 for d in diffs) <= k and sum(diffs) <= k and max(diffs) <= k


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_a_quantiles_rank_accuracy_holds(alpha):
    """The released candidate's rank is within ``rank_accuracy95`` rows of the best candidate's
    in at least 95% of draws (OpenDP's exponential mechanism, as the release runs it)."""
    from safestats.privacy.accountant import _cell_quantile, calibrate_quantile

    candidates = tuple(float(x) + 0.5 for x in range(-1, 100))
    noise = calibrate_quantile(alpha, candidates, 1, Fraction(1, 10), "max_divergence")
    cell = _cell_quantile(candidates, alpha, noise.scale, "max_divergence")
    values = np.repeat(np.arange(0, 100, dtype=float), 30)
    ranks = np.array([(values < cell(values)).sum() for _ in range(400)])
    best = alpha * len(values)
    inside = (np.abs(ranks - best) <= noise.rank_accuracy + 30).mean()  # + one step of 30 tied rows
    assert inside >= 0.95, (inside, noise.rank_accuracy)
    assert noise.rank_accuracy < 0.05 * len(values)  # a conservative bound, but one that says something


@pytest.mark.parametrize(
    ("kind", "sensitivity", "loss"),
    [
        ("laplace", 1, Fraction(1, 2)),
        ("laplace", 3, Fraction(1, 7)),
        ("laplace", 2, Fraction(1, 1013)),
        ("gaussian", 1.0, Fraction(1, 8)),
        ("gaussian", 2.0, Fraction(1, 37)),
    ],
)
def test_calibration_is_opendps_least_scale(kind, sensitivity, loss):
    """The closed-form scale OpenDP's map certifies is the one OpenDP's own binary search finds
    (to its tolerance), and never spends more than asked."""
    import opendp.prelude as dp

    if kind == "laplace":
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"))
        d_in: float = int(sensitivity)

        def make(scale):
            return space >> dp.m.then_laplace(scale=scale)
    else:
        space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64"))
        d_in = float(sensitivity)

        def make(scale):
            return space >> dp.m.then_gaussian(scale=scale)

    noise = calibrate(kind, sensitivity, loss)
    searched = dp.binary_search_param(make, d_in=d_in, d_out=float(loss))
    assert noise.scale == pytest.approx(searched, rel=1e-6)
    assert float(make(noise.scale).map(d_in)) <= float(loss)
    assert noise.certified <= float(loss)
