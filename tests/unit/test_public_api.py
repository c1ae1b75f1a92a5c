"""The public API is what __all__ says, sorted; internal modules are reached explicitly."""

from __future__ import annotations

import safestats


def test_all_is_sorted_and_complete():
    assert safestats.__all__ == sorted(safestats.__all__)
    public = {n for n in dir(safestats) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in public if type(getattr(safestats, n)).__name__ == "module"}
    assert set(safestats.__all__) == public - modules


def test_importing_runs_nothing():
    """``import safestats`` in a fresh interpreter (a client's kernel) loads the client only:
    no service, store, audit tables, engines, OpenDP or SQLAlchemy."""
    import json
    import subprocess
    import sys

    code = "import json, sys, safestats; print(json.dumps(sorted(sys.modules)))"
    loaded = set(
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    )
    assert "safestats.client.session" in loaded  # the import happened
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
