"""The marking registry: every classification of the catalog has its look and its caveat."""

from __future__ import annotations

from safestats.marking import MARKINGS, caveat, colour, marking_text


def test_every_catalog_classification_is_in_the_registry(catalog):
    assert set(catalog.classifications) <= set(MARKINGS)
    assert colour("OFFICIAL") != colour("OFFICIAL-SENSITIVE")
    assert "destroy" in caveat("OFFICIAL-SENSITIVE")
    assert marking_text("OFFICIAL-SENSITIVE", catalog.impact_levels["OFFICIAL-SENSITIVE"]) == "OFFICIAL-SENSITIVE (IL3)"


def test_a_result_banner_carries_the_colour_and_caveat(connect):
    s = connect("demo.unrestricted")
    r = s.table("Nationality").where(term="2017-spring").group_by("proficiency_in_english").count().run()
    page = r._repr_html_()
    assert colour("OFFICIAL-SENSITIVE") in page and "securely destroy" in page and "OFFICIAL-SENSITIVE (IL3)" in page


def test_a_dp_quantile_with_withheld_cells_renders(connect):
    """A quantile has no ± (its accuracy is in ranks): its column must still take the symbol
    of a withheld cell when shown (once a float column refused 'c')."""
    s = connect()
    # LA 202 in spring 2017: Primary 82, Secondary 79, Special 2, PRU 0 pupils; at ε = 4 the two
    # small cells are withheld and the two large ones shown with overwhelming probability
    q = s.table("PupilOnRoll").where(term="2017-spring", la_code="202").group_by("phase")
    r = q.median("sessions_attended").epsilon(4).run()
    text = repr(r)
    assert r.symbols["median_sessions_attended"].eq("c").any() and " c" in text
