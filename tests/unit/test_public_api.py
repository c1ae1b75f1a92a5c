"""The public API is what __all__ says, sorted; internal modules are reached explicitly."""

from __future__ import annotations

import safestats


def test_all_is_sorted_and_complete():
    assert safestats.__all__ == sorted(safestats.__all__)
    public = {n for n in dir(safestats) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in public if type(getattr(safestats, n)).__name__ == "module"}
    assert set(safestats.__all__) == public - modules


def test_importing_runs_nothing():
    """``import safestats`` in a fresh interpreter (a client's kernel) loads the query builder
    only: no service, store, audit tables, engines, OpenDP or SQLAlchemy — and no pandas, which
    comes with the session (``ss.connect``), loaded on first use."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, safestats; before = sorted(sys.modules); safestats.connect; "
        "print(json.dumps([before, sorted(sys.modules)]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, after = (set(m) for m in json.loads(run.stdout))
    assert "safestats.query.builder" in loaded and "pandas" not in loaded  # the import happened; no pandas
    assert {"safestats.client.session", "pandas"} <= after  # ss.connect brings the client in
    heavy = (
        "sqlalchemy",
        "duckdb",
        "opendp",
        "ibis",
        "pyspark",
        "ipykernel",
        "safestats.service",
        "safestats.store",
        "safestats.audit",
        "safestats.engines",
        "safestats.disclosure",
        "safestats.privacy",
    )
    assert not [m for m in loaded if m.split(".")[0] in heavy or m.startswith(heavy)]
    assert not [m for m in after if m.split(".")[0] in heavy or m.startswith(heavy)]
