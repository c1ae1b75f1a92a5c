"""Fixtures of the adversarial suite: the raw census for judging, an attacker's session."""

from __future__ import annotations

import pytest

from tests.adversarial.judge import SPRING, THRESHOLD, Census


@pytest.fixture(scope="session")
def census(sample_dir):
    return Census(sample_dir)


@pytest.fixture
def attacker(connect):
    """demo.statistician (exact statistics, the shipped policy) asking through the public API;
    a refused query counts as nothing released."""
    import safestats as ss

    session = connect("demo.statistician")

    def ask(build):
        try:
            return build(session)
        except ss.DisclosureRefused:
            return None

    ask.session = session
    return ask


@pytest.fixture(scope="session")
def target(census):
    """A small group inside a published-sized cell: school S, NC year Y (>= 2·threshold pupils
    in spring) and ethnicity E with 1..threshold−1 pupils there."""
    df = census.rows(term=SPRING)
    cells = df.groupby(["school_urn", "nc_year"])["pupil_id"].nunique()
    groups = df.groupby(["school_urn", "nc_year", "ethnicity"])["pupil_id"].nunique()
    for (school, year, ethnicity), n in groups.items():
        if (
            1 <= n < THRESHOLD
            and cells[(school, year)] >= 2 * THRESHOLD
            and not df[(df.school_urn == school) & (df.nc_year == year) & (df.ethnicity == ethnicity)]["pupil_id"]
            .duplicated()
            .any()
        ):
            return {"school_urn": int(school), "nc_year": str(year), "ethnicity": str(ethnicity), "pupils": int(n)}
    raise AssertionError("the sample census has no small group to attack")
