"""Cell-key perturbation: the perturbation table's guarantees, and consistency end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from safestats.disclosure.cellkey import perturb, ptable, variance_of
from safestats.engines.base import RECORD_KEY_MODULUS, record_key


@pytest.mark.parametrize(("d", "v", "s"), [(4, 2.0, 2), (3, 1.0, 0), (6, 5.0, 4)])
def test_every_row_is_unbiased_bounded_and_never_publishes_small_counts(d, v, s):
    table = ptable(d, v, s)
    for exact in range(0, table.last + 30):
        targets, cdf = table.row(exact)
        p = np.diff(np.concatenate([[0.0], cdf]))
        assert (p >= 0).all() and cdf[-1] == 1.0
        assert float((p * targets).sum()) == pytest.approx(exact, abs=1e-9)  # unbiased
        assert (np.abs(targets - exact) <= d).all()  # never moved more than max_noise
        assert not ((targets >= 1) & (targets <= s)).any()  # 1..small never published
        assert (targets >= 0).all()
    assert table.row(0)[0].tolist() == [0]  # an empty cell stays empty
    assert variance_of(table, 100) == pytest.approx(variance_of(table, table.last))


def test_perturbation_follows_the_table_and_depends_only_on_the_cell_key():
    table = ptable(4, 2.0, 2)
    rng = np.random.default_rng(1)
    keys = rng.integers(0, RECORD_KEY_MODULUS, size=40_000)
    out = perturb(np.full(keys.size, 30), keys, table)
    assert (perturb(np.full(keys.size, 30), keys, table) == out).all()  # same keys, same values
    targets, cdf = table.row(30)
    expected = np.diff(np.concatenate([[0.0], cdf]))
    observed = np.array([(out == t).mean() for t in targets])
    assert np.abs(observed - expected).max() < 0.01
    assert abs(out.mean() - 30) < 0.05


def test_record_keys_are_a_keyed_hash_in_range():
    params = (12345, 678, 91011, 1213)
    keys = [record_key(pid, params) for pid in range(10_000_000, 10_010_000)]
    assert all(0 <= k < RECORD_KEY_MODULUS for k in keys)
    assert len(set(keys)) > 9_990  # nearly all distinct
    assert record_key(10_000_000, params) != record_key(10_000_000, (12346, 678, 91011, 1213))
    # spread over [0, 1): a chi-square-free check of the deciles
    deciles = np.histogram(np.array(keys) / RECORD_KEY_MODULUS, bins=10, range=(0, 1))[0]
    assert deciles.min() > 850


def test_cell_key_tables_are_consistent_across_queries(connect):
    s = connect("demo.tablebuilder")
    two_way = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "sex").count().run()
    again = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "sex").count().run()
    pd.testing.assert_frame_equal(two_way, again)  # repeating gives nothing new to average
    girls = s.table("PupilOnRoll").where(term="2017-spring", sex="F").group_by("la_code").count().run()
    merged = girls.merge(two_way[two_way["sex"] == "F"], on="la_code", suffixes=("", "_2way"))
    assert len(merged) == 152 and (merged["count"] == merged["count_2way"]).all()  # same cell, same value
    counts = two_way["count"].astype(int)
    assert not counts.between(1, 2).any() and r_symbols_empty(two_way)
    with_totals = (
        s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "sex").count().with_totals().run()
    )
    inner = with_totals[(with_totals["la_code"] != "Total") & (with_totals["sex"] != "Total")]
    assert inner["count"].astype(int).tolist() == counts.tolist()


def r_symbols_empty(r) -> bool:
    return bool((r.symbols == "").all().all())


def test_cell_key_counts_stay_close_to_the_exact_counts(connect, sample_dir):
    import duckdb

    r = connect("demo.tablebuilder").table("PupilOnRoll").where(term="2017-spring").group_by("la_code").count().run()
    exact = duckdb.execute(f"""SELECT la_code, count(*) n FROM '{sample_dir}/PupilOnRoll.parquet'
        WHERE term = '2017-spring' GROUP BY ALL""").df()
    merged = r.merge(exact, on="la_code")
    diff = merged["count"].astype(int) - merged["n"]
    assert diff.abs().max() <= 4 and (diff != 0).any()  # perturbed, within max_noise
    assert r.provenance.disclosure["protection"] == "cell_key"


def test_cell_key_refuses_magnitudes(connect):
    import safestats as ss

    with pytest.raises(ss.QueryError, match="cell-key perturbation, which protects counts"):
        connect("demo.tablebuilder").table("PupilOnRoll").group_by("phase").mean("sessions_attended").run()


def test_cell_key_histograms_are_counts_too(connect):
    r = (
        connect("demo.tablebuilder")
        .table("PupilOnRoll")
        .where(term="2017-spring")
        .histogram("sessions_attended", width=20)
        .count()
        .run()
    )
    assert len(r) >= 10 and not r["count"].astype(int).between(1, 2).any()
