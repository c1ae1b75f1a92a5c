"""Charts that fit (issue 21): rendered, every piece of text lies inside the image, the footer
(provenance and handling caveat, ≥ 8 pt) clears the axes, withheld cells' symbols lie inside the
axes, and a long list of categories makes a tall chart of horizontal bars, not a wide one."""

from __future__ import annotations

import pytest

import safestats as ss
from safestats import plots


@pytest.fixture(scope="module")
def session(sample_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("charts")
    return ss.connect(store_url=f"sqlite:///{store / 's.db'}", output_checking_dir=str(store / "oc"), environ={})


def _check(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]  # drawn ones only
    ticks += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
    texts = [*fig.texts, ax.xaxis.label, ax.yaxis.label, *ticks, *ax.texts]
    for t in texts:
        if not t.get_text():
            continue
        box = t.get_window_extent(renderer)
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1, t.get_text()
    axes = ax.get_tightbbox(renderer)
    footer = [t for t in fig.texts if t.get_fontsize() == plots.FOOTER_PT]
    assert footer and all(t.get_fontsize() >= 8 for t in footer)
    for t in footer:  # the footer never runs into the axes, their ticks or labels
        assert t.get_window_extent(renderer).y1 <= axes.y0 + 1, t.get_text()
    inner = ax.get_window_extent(renderer)
    for t in ax.texts:  # the symbols of withheld cells
        b = t.get_window_extent(renderer)
        assert inner.x0 - 1 <= b.x0 and b.x1 <= inner.x1 + 1 and inner.y0 - 1 <= b.y0 and b.y1 <= inner.y1 + 1


def test_a_short_chart_fits_with_its_symbols_inside_the_axes(session):
    r = session.table("PupilOnRoll").where(term="2017-spring").group_by("phase", "sex").count().run()
    assert (r.symbols["count"] == "c").any()  # PRU cells are withheld
    fig = plots.bar(r, x="phase", y="count", hue="sex", title="Pupils by phase and sex")
    assert len(fig.axes[0].texts) >= 1
    _check(fig)
    w, h = fig.get_size_inches()
    assert 6 <= w <= 14 and h <= 10
    caveat = r.provenance.caveat
    assert caveat.split()[0] in " ".join(t.get_text() for t in fig.texts)


def test_152_local_authorities_make_a_tall_chart_of_horizontal_bars(session):
    r = session.table("PupilOnRoll").where(term="2017-spring").group_by("la_code").count().run()
    assert len(r) == 152
    fig = plots.bar(r, x="la_code", y="count")
    w, h = fig.get_size_inches()
    assert w <= 14 and h > w  # tall, not 56 inches wide
    assert len(fig.axes[0].get_yticklabels()) == 152
    _check(fig)
