"""`make demo`'s main job, end to end: it must run on the shipped policy as the README says."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_runs_end_to_end(sample_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFESTATS_")}
    env |= {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "SAFESTATS_OUTPUT_CHECKING_DIR": str(tmp_path / "outputs"),
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "safestats.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for section in (
        "The synthetic school census",
        "statistical disclosure control",
        "The audit log",
        "The nationality quality report",
    ):
        assert section in out, section
    assert "hash chain intact" in out and "refused (and audited): distinct pupils across more than one term" in out
    # the demo's traffic is ordinary use (its refusals are of query shapes, not probing): the
    # incident rules at every request stay quiet, and so does a scan of the whole log
    from safestats.store.db import open_store
    from safestats.store.incidents import IncidentStore

    assert IncidentStore(open_store(env["SAFESTATS_STORE_URL"])).list() == []
    scan = subprocess.run(
        [sys.executable, "-m", "safestats.cli", "incidents", "scan"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert scan.returncode == 0 and "0 new incident(s)" in scan.stderr, scan.stderr[-2000:]
