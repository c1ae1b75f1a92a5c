"""Quantiles under disclosure control, and the one-table-at-a-time rule across processes."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

import safestats as ss
from tests.adversarial.judge import SPRING, THRESHOLD, assert_not_disclosed, recovered, released


@pytest.mark.parametrize("q", [1e-9, 1 - 1e-9, 0.01, 0.99])
def test_no_minimum_or_maximum_is_released(attacker, census, q):
    """quantile(q≈0) and quantile(q≈1) are a cell's extreme values: never released, in any cell."""
    r = (
        attacker.session.table("PupilOnRoll")
        .where(term=SPRING)
        .group_by("la_code")
        .quantile("sessions_attended", q)
        .run()
    )
    name = [c for c in r.columns if c.startswith("p")][0]
    df = census.rows(term=SPRING)
    extremes = df.groupby("la_code")["sessions_attended"].agg(["min", "max"])
    for _, row in r[r[name].notna()].iterrows():
        lo, hi = extremes.loc[row["la_code"]]
        assert lo < row[name] < hi or np.isclose(
            row[name], df[df.la_code == row["la_code"]]["sessions_attended"].quantile(q)
        )
        n = df[df.la_code == row["la_code"]]["pupil_id"].nunique()
        assert int(np.floor(q * (n - 1))) >= THRESHOLD and n - 1 - int(np.ceil(q * (n - 1))) >= THRESHOLD
    assert r[name].isna().any()


def test_a_small_cell_gives_no_quantile(attacker, census, target):
    """Every quantile of a cell with fewer than 2·threshold + 1 pupils is withheld: n quantiles
    of an n-pupil cell would list every value."""
    where = {"term": SPRING, "school_urn": target["school_urn"], "nc_year": target["nc_year"]}
    n = census.pupils(**where, ethnicity=target["ethnicity"])
    assert n < 2 * THRESHOLD + 1
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        r = (
            attacker.session.table("PupilOnRoll")
            .where(**where, ethnicity=target["ethnicity"])
            .quantile("sessions_attended", q)
            .run()
        )
        assert r.iloc[:, 0].isna().all()
        assert r.reasons.iloc[0, 0] in ("threshold", "quantile")


def test_a_median_is_released_where_enough_pupils_lie_either_side(attacker, census):
    r = attacker.session.table("PupilOnRoll").where(term=SPRING).group_by("phase").median("sessions_attended").run()
    shown = r[r["median_sessions_attended"].notna()]
    assert len(shown) >= 2
    df = census.rows(term=SPRING)
    for _, row in shown.iterrows():
        assert row["median_sessions_attended"] == pytest.approx(
            df[df.phase == row["phase"]]["sessions_attended"].quantile(0.5)
        )


def _release(args):
    import time

    from safestats.disclosure.linked import LinkStore

    store, outputs, data, where, other, barrier = args
    earlier = LinkStore.earlier

    def slow_earlier(self, *a, **k):  # widen the race: read what was published, then dawdle
        found = earlier(self, *a, **k)
        time.sleep(0.5)
        return found

    LinkStore.earlier = slow_earlier
    s = ss.connect(user="demo.statistician", data_dir=data, environ={}, store_url=store, output_checking_dir=outputs)
    barrier.wait(timeout=60)
    filters = dict(where)
    if other is not None:
        filters["ethnicity"] = ss.not_equal(other)
    try:
        r = s.table("PupilOnRoll").where(**filters).count().run()
    except ss.DisclosureRefused:
        return None
    return None if r["count"].isna().iloc[0] else float(r["count"].iloc[0])


def test_two_processes_on_one_store_release_one_table_at_a_time(tmp_path, sample_dir, census, target, any_store_url):
    """Both halves of a tracker asked at the same moment from two processes (two embedded
    sessions, or two service workers) on one store: the store's lock serialises them, so the
    second is protected with the first in view."""
    where = {"term": SPRING, "school_urn": target["school_urn"], "nc_year": target["nc_year"]}
    store, outputs = any_store_url, str(tmp_path / "o")
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            whole, rest = pool.map(
                _release,
                [
                    (store, outputs, str(sample_dir), where, None, barrier),
                    (store, outputs, str(sample_dir), where, target["ethnicity"], barrier),
                ],
            )
    found = recovered([(1, whole), (-1, rest)])
    assert_not_disclosed(
        found,
        census.count(**where, ethnicity=target["ethnicity"]),
        pupils=target["pupils"],
        what="a tracker split across two processes",
    )
    assert (whole is None) != (rest is None)  # one was published, the other protected with it in view


def test_the_attacks_work_when_linking_is_off(connect, tmp_path, census, target):
    """Control: the same tracker against a policy without the cross-table rule recovers the
    small group exactly, so the tests above can fail."""
    import yaml

    from safestats.access.policy import DEFAULT_POLICY

    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    raw["groups"]["SC_OFFICIAL_STATISTICS"]["disclosure"]["link_tables"] = False
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    s = connect("demo.statistician", policy=str(tmp_path / "p.yaml"))
    where = {"term": SPRING, "school_urn": target["school_urn"], "nc_year": target["nc_year"]}
    whole = s.table("PupilOnRoll").where(**where).count().run()
    rest = s.table("PupilOnRoll").where(**where, ethnicity=ss.not_equal(target["ethnicity"])).count().run()
    found = recovered([(1, released(whole, "count")), (-1, released(rest, "count"))])
    assert found == census.count(**where, ethnicity=target["ethnicity"])
    with pytest.raises(AssertionError, match="recovered exactly"):
        assert_not_disclosed(
            found, census.count(**where, ethnicity=target["ethnicity"]), pupils=target["pupils"], what="control"
        )


def test_dense_quantiles_of_two_cells_differing_by_a_small_group(attacker, census, target):
    """Many quantiles of a cell and of the same cell less a small group list their middle
    values; the two multisets differ by the small group's values. Quantile cells are linked like
    counts and sums, so the second cell's quantiles are withheld."""
    where = {"term": SPRING, "school_urn": target["school_urn"], "nc_year": target["nc_year"]}
    qs = [round(0.3 + 0.02 * k, 2) for k in range(21)]

    def ask(**extra):
        q = attacker.session.table("PupilOnRoll").where(**where, **extra)
        for i, x in enumerate(qs):
            q = q.quantile("sessions_attended", x, name=f"q{i}")
        return attacker(lambda s: q.run())

    whole, rest = ask(), ask(ethnicity=ss.not_equal(target["ethnicity"]))
    shown = [c for c in (rest.columns if rest is not None else []) if rest[c].notna().any()]
    assert whole is not None and any(whole[c].notna().any() for c in whole.columns)
    assert not shown, f"quantiles of the cell less a small group were released: {shown}"
