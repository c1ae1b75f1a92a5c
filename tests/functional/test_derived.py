"""Derived frames keep the marking: a pivot, a cross-tabulation, a new column or a sum of a
released result is a marked result whose withheld cells stay withheld (a withheld input makes a
withheld output), whose dp intervals follow their cells, and whose footer says how it was made.
Plain pandas aggregation warns that it drops the marking."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from safestats.result import ProtectedResult

SPRING = "2017-spring"


@pytest.fixture
def sdc(connect):
    return connect("demo.statistician").table("PupilOnRoll").where(term=SPRING).group_by("phase", "sex").count().run()


def _cells(r: ProtectedResult, keys: list[str], stat: str) -> dict[tuple, object]:
    """(keys) -> the released value, or its symbol where withheld."""
    sym = r.symbols
    return {
        tuple(row[k] for k in keys): (sym.loc[i, stat] or row[stat]) if stat in sym else row[stat]
        for i, row in pd.DataFrame(r).iterrows()
    }


def test_a_pivot_has_every_cell_of_the_release_in_its_place_with_its_symbol(sdc):
    assert sdc.suppressed > 0  # the sample census has withheld cells here (PRU)
    wide = sdc.pivot(index="phase", columns="sex")
    assert isinstance(wide, ProtectedResult) and wide.marking == sdc.marking and wide.audit_id == sdc.audit_id
    long = _cells(sdc, ["phase", "sex"], "count")
    for i, row in pd.DataFrame(wide).iterrows():
        for sex in ("F", "M"):
            shown = wide.symbols.loc[i, sex] or row[sex]
            assert shown == long[(row["phase"], sex)]
    assert list(wide["phase"]) == list(dict.fromkeys(sdc["phase"]))  # the release's order
    assert "derived: pivot of count by phase × sex" in wide.provenance.footer()
    assert "under 10 pupils" in wide.provenance.footer()
    text = repr(wide)
    assert text.startswith(f"[{sdc.marking}]") and " c " in text and "<NA>" not in text
    assert wide.to_csv().splitlines()[0] == f"# {sdc.marking}"
    assert sdc.crosstab("phase", "sex").equals(wide)


def test_a_dp_pivot_keeps_each_cells_interval(connect):
    r = connect("demo.analyst").table("PupilOnRoll").where(term=SPRING).group_by("phase", "sex").count().run()
    wide = r.pivot(index="phase", columns="sex", values="count")
    cells = list(zip(r["phase"], r["sex"], strict=True))
    acc = dict(zip(cells, r.accuracy["count"], strict=True))
    ends = r.interval("count")
    low, high = dict(zip(cells, ends["lower"], strict=True)), dict(zip(cells, ends["upper"], strict=True))
    for i, row in pd.DataFrame(wide).iterrows():
        for sex in ("F", "M"):
            cell = (row["phase"], sex)
            if pd.isna(acc[cell]):  # a withheld cell has no interval, in the pivot either
                assert pd.isna(wide.accuracy.loc[i, sex]) and pd.isna(wide.interval(sex).loc[i, "lower"])
                continue
            assert wide.accuracy.loc[i, sex] == acc[cell]
            assert wide.interval(sex).loc[i, "lower"] == low[cell] and wide.interval(sex).loc[i, "upper"] == high[cell]
    assert "±" in repr(wide) and wide.privacy == r.privacy


def test_a_new_column_from_a_withheld_cell_is_withheld_not_an_empty_category(sdc):
    rated = sdc.assign(per_thousand=lambda t: t["count"] / 1000)
    withheld = sdc.symbols["count"] != ""
    assert (rated.symbols.loc[withheld, "per_thousand"] == "c").all()
    assert (rated.symbols.loc[~withheld, "per_thousand"] == "").all()
    shown = rated.display_frame()
    assert "(empty)" not in set(shown["per_thousand"]) and set(shown.loc[withheld, "per_thousand"]) == {"c"}
    assert rated.marking == sdc.marking and "derived: assign per_thousand" in rated.provenance.footer()


def test_a_new_column_on_some_rows_keeps_each_rows_own_symbol_and_interval(sdc, connect):
    """assign on a selection of a release's rows (the rows renumbered): each row keeps its own
    symbol, reason and dp interval, not those of the release's first rows."""
    part = sdc[sdc["phase"].isin(["PRU", "Special"])]
    rated = part.assign(per_thousand=lambda t: t["count"] / 1000)
    assert _cells(rated, ["phase", "sex"], "count") == _cells(part, ["phase", "sex"], "count")
    assert list(rated.symbols["count"]) == list(part.symbols["count"])
    assert list(rated.reasons["count"]) == list(part.reasons["count"])
    dp = connect("demo.analyst").table("PupilOnRoll").where(term=SPRING).group_by("phase", "sex").count().run()
    few = dp[dp["phase"].isin(["PRU", "Special"])]
    moved = few.assign(share=lambda t: t["count"] / 2)
    assert moved.interval("count").reset_index(drop=True).equals(few.interval("count").reset_index(drop=True))
    assert moved.accuracy["count"].reset_index(drop=True).equals(few.accuracy["count"].reset_index(drop=True))


def test_a_sum_with_a_withheld_cell_is_withheld_never_the_sum_of_what_is_shown(sdc, connect):
    sums = sdc.sum_over("phase")
    by_phase = connect("demo.statistician").table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    truth = dict(zip(by_phase["phase"], by_phase["count"], strict=True))
    hidden = set(sdc.loc[sdc.symbols["count"] != "", "phase"])
    for i, row in pd.DataFrame(sums).iterrows():
        if row["phase"] in hidden:
            assert pd.isna(row["count"]) and sums.symbols.loc[i, "count"] == "c"
        else:
            assert row["count"] == truth[row["phase"]]  # every cell of the group was released: exact
    assert "derived from a withheld cell" in sums.provenance.footer()


def test_plain_pandas_aggregation_warns_that_it_drops_the_marking(sdc):
    import safestats.derived as derived

    derived._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sdc.groupby("phase")["count"].sum()
        sdc.groupby("sex")["count"].sum()  # once per session, not at every call
    messages = [str(w.message) for w in caught if "protected result" in str(w.message)]
    assert len(messages) == 1 and "sum_over" in messages[0]
    assert not isinstance(out, ProtectedResult)
    with pytest.raises(ValueError, match="one of"):
        sdc.pivot(index="phase", columns="sex", values="nope")
    with pytest.raises(ValueError, match="one cell each"):
        sdc.pivot(index="sex", columns="sex")


def test_the_example_notebooks_derive_with_the_marked_helpers():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "notebooks" / "examples"
    code = "\n".join(
        "".join(c["source"]) for f in sorted(root.glob("*.ipynb")) for c in json.loads(f.read_text())["cells"]
    )
    assert "pd.DataFrame(r).pivot" not in code and "r.pivot(" in code


def test_a_query_shows_in_a_notebook_what_it_will_ask_for_and_runs_nothing(connect):
    s = connect("demo.analyst")
    q = s.table("PupilOnRoll").where(term=SPRING).group_by("phase").mean("sessions_attended").epsilon("1/4")
    page = q._repr_html_()
    for text in ("PupilOnRoll", "term == &#x27;2017-spring&#x27;", "phase", "mean_sessions_attended", "epsilon 1/4"):
        assert text in page, text
    assert ".preview()" in page
    assert s.budget().spent == 0  # showing it spent nothing


def test_a_typo_is_caught_while_the_query_is_built_from_what_the_session_already_knows(connect, store_url):
    from safestats.audit.log import AuditLog
    from safestats.errors import AccessDenied, QueryError

    s = connect("demo.analyst")
    s.table("PupilOnRoll").where(sesions_attended=3)  # nothing known yet: checked at run(), as before
    s.tables()
    s.describe("PupilOnRoll")
    before = AuditLog.open(store_url).count()
    with pytest.raises(QueryError, match="did you mean 'sessions_attended'"):
        s.table("PupilOnRoll").where(term=SPRING).group_by("phase").mean("sesions_attended")
    with pytest.raises(QueryError, match="cannot be used"):
        s.table("PupilOnRoll").group_by("pupil_id")  # an identifier
    with pytest.raises(QueryError, match="did you mean 'PupilOnRoll'"):
        s.table("PupilsOnRoll")
    with pytest.raises(AccessDenied, match="may not read table Nationality"):
        s.table("Nationality")
    researcher = connect("demo.researcher")
    researcher.describe("PupilOnRoll")
    before = AuditLog.open(store_url).count()
    with pytest.raises(QueryError, match="cannot be used"):
        researcher.table("PupilOnRoll").group_by("ethnicity")  # a column the group is not granted
    assert AuditLog.open(store_url).count() == before  # caught in the notebook: nothing was sent
    assert len(s.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()) > 0


def test_a_merge_of_two_releases_keeps_each_sides_cells_and_the_higher_marking(connect):
    from dataclasses import replace

    s = connect("demo.statistician")
    by_la = s.table("PupilOnRoll").where(term=SPRING).group_by("la_code").count_pupils().run()
    nobt = s.table("PupilOnRoll").where(term=SPRING, ethnicity="NOBT").group_by("la_code").count_pupils().run()
    m = by_la.merge(nobt, on="la_code", rename={"pupils": "NOBT"})
    assert len(m) == len(by_la) and list(m.columns) == ["la_code", "pupils", "NOBT"]
    left, right = _cells(by_la, ["la_code"], "pupils"), _cells(nobt, ["la_code"], "pupils")
    assert _cells(m, ["la_code"], "pupils") == left and _cells(m, ["la_code"], "NOBT") == right
    assert (m.symbols["NOBT"] == "c").sum() == (nobt.symbols["pupils"] == "c").sum() > 0
    assert f"merged with audit record {nobt.provenance.audit_id} on la_code" in m.provenance.footer()
    rated = m.assign(rate=lambda t: t["NOBT"] / t["pupils"])
    assert set(rated.display_frame().loc[rated.symbols["NOBT"] == "c", "rate"]) == {"c"}
    # the merged frame carries the higher of the two markings
    low = by_la.copy()
    low._provenance = replace(by_la.provenance, label="OFFICIAL", impact_level="", handling="")
    high = nobt.copy()
    high._provenance = replace(nobt.provenance, label="OFFICIAL-SENSITIVE", impact_level="IL3")
    assert low.merge(high, on="la_code", rename={"pupils": "n"}).marking == "OFFICIAL-SENSITIVE (IL3)"
    assert high.merge(low, on="la_code", rename={"pupils": "n"}).marking == "OFFICIAL-SENSITIVE (IL3)"
    # a row with no match shows x (not available), never an empty value
    part = nobt[nobt["la_code"].isin(["201", "202"])]
    few = by_la.merge(part, on="la_code", rename={"pupils": "NOBT"})
    assert set(few.symbols.loc[~few["la_code"].isin(["201", "202"]), "NOBT"]) == {"x"}
    with pytest.raises(ValueError, match="rename"):
        by_la.merge(nobt, on="la_code")


def test_a_merge_with_a_plain_frame_is_pandas_and_warns_that_it_drops_the_marking(sdc):
    from safestats.derived import _WARNED, MarkingWarning

    _WARNED.discard("merge")
    other = pd.DataFrame({"phase": ["Primary"], "note": ["x"]})
    with pytest.warns(MarkingWarning, match="drops the marking"):
        plain = sdc.merge(other, on="phase")
    assert type(plain) is pd.DataFrame and "note" in plain.columns


def test_a_derived_value_empty_for_another_reason_is_not_applicable_z(connect):
    terms = connect("demo.statistician").table("PupilOnRoll").group_by("term").count_pupils().run()
    change = terms.assign(change=lambda t: t["pupils"].diff())
    assert change.symbols["change"].iloc[0] == "z" and (change.symbols["change"].iloc[1:] == "").all()
    shown = change.display_frame()
    assert shown["change"].iloc[0] == "z" and "<NA>" not in change._repr_html_()
