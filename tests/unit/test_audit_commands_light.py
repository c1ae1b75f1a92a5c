"""What benchmarks/RESULTS.md says of start-up: the audit commands (verify, log, report) never
open the query engine — DuckDB, Ibis and OpenDP are not even imported."""

from __future__ import annotations

import json
import subprocess
import sys


def test_audit_commands_never_open_the_engine(sample_dir, tmp_path):
    code = (
        "import json, sys; from safestats.cli import main; "
        "codes = [main(a, environ=json.loads(sys.argv[1])) for a in "
        "(['audit', 'verify'], ['audit', 'log'], ['audit', 'report', '--from', '2026-01-01', '--to', '2026-12-31', '--format', 'json'])]; "
        "print(json.dumps([codes, sorted(sys.modules)]))"
    )
    env = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "k"),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "sk"),
    }
    run = subprocess.run([sys.executable, "-c", code, json.dumps(env)], capture_output=True, text=True, check=True)
    codes, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert codes == [0, 0, 0], run.stderr[-2000:]
    assert "safestats.audit.log" in loaded  # the commands ran against the log
    assert not [m for m in loaded if m.split(".")[0] in ("duckdb", "ibis", "opendp", "pyspark")]
    # the engines' interface may load; no engine, and nothing that compiles a query for one
    assert not [m for m in loaded if m.startswith("safestats.engines.") and m != "safestats.engines.base"]
