"""The public API is what __all__ says, sorted; internal modules are reached explicitly."""

from __future__ import annotations

import safestats


def test_all_is_sorted_and_complete():
    assert safestats.__all__ == sorted(safestats.__all__)
    public = {n for n in dir(safestats) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in public if type(getattr(safestats, n)).__name__ == "module"}
    assert set(safestats.__all__) == public - modules


def test_importing_runs_nothing():
    import importlib
    import sys

    before = set(sys.modules)
    importlib.reload(safestats)
    assert not any(m.startswith("safestats.service") for m in set(sys.modules) - before)
