"""Output checking with the real tools: the SACRO viewer (sacroviewer 0.2.1) and ACRO's own loader
(acro 1.0.2), each in a venv of its own that this test makes (they pin versions that conflict
with ours). The records they read are the ones a session writes: readable output names and
commands, per-cell reasons, the analyst's comments and exception requests, and the output
checker's approve / reject in the record and in the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import safestats as ss
from safestats.cli import main
from safestats.config import Settings
from safestats.errors import ReleaseError, UserError
from safestats.service.pipeline import Service

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPRING = "2017-spring"

VIEWER = """
import json, os, sys
from pathlib import Path
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sacro.settings")
import django
django.setup()
from django.test import Client
from django.test.utils import setup_test_environment
from sacro.models import load_from_path
outputs = load_from_path(Path(sys.argv[1]))  # the viewer's own loader, with its version check
setup_test_environment()
page = Client().get("/checker/", {"path": sys.argv[1]})
print(json.dumps({
    "page": page.status_code, "html": page.content.decode(),
    "outputs": {uid: {"valid": [f["checksum_valid"] for f in m["files"]],
                      "cells": {k: v for f in m["files"] for k, v in f["cell_index"].items()},
                      "comments": m["comments"], "exception": m["exception"], "command": m["command"]}
                for uid, m in outputs.items()},
}))
"""

ACRO = """
import json, sys
from acro.record import load_records
records = load_records(sys.argv[1])
print(json.dumps({k: {"status": v.status, "exception": v.exception, "comments": v.comments,
                      "rows": len(v.output[0])} for k, v in records.results.items()}))
"""


def _venv(name: str, requirement: str) -> Path:
    """A venv of its own under var/test-venvs (kept between local runs; made afresh in CI)."""
    where = ROOT / "var" / "test-venvs" / name
    python = where / "bin" / "python"
    stamp = where / "installed.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == requirement):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(where)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True, timeout=900)
        stamp.write_text(requirement)
    return python


@pytest.fixture(scope="module")
def viewer():
    return _venv("sacroviewer", "sacroviewer==0.2.1")


@pytest.fixture(scope="module")
def acro():
    return _venv("acro", "acro==1.0.2")


def _session(sample_dir, tmp_path, **extra):
    common = {
        "data_dir": sample_dir,
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "secret_key_file": str(tmp_path / "k"),
        "output_checking_dir": str(tmp_path / "checking"),
        "output_dir": str(tmp_path / "out"),
        **extra,
    }
    return ss.connect(user="demo.statistician", environ={}, **common), common


def test_the_sacro_viewer_opens_the_records_with_comments_exceptions_and_reasons(viewer, sample_dir, tmp_path):
    s, common = _session(sample_dir, tmp_path)
    r = s.table("PupilOnRoll").where(term=SPRING).group_by("phase", "sex").count().run()
    assert r.suppressed > 0
    r.comment("phase by sex, for the annual statistics")
    r.request_exception("the PRU cells are published in the national tables already")
    (results,) = (tmp_path / "checking").rglob("results.json")
    done = subprocess.run([str(viewer), "-c", VIEWER, str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["page"] == 200
    (uid,) = seen["outputs"]
    out = seen["outputs"][uid]
    assert uid == "000_PupilOnRoll_by_phase_sex" and uid in seen["html"]  # a readable name, not output_0
    assert out["command"] == "s.table('PupilOnRoll').where(term='2017-spring').group_by('phase', 'sex').count().run()"
    assert out["valid"] == [True]  # checksums rewritten with each note
    assert "phase by sex, for the annual statistics" in out["comments"]
    assert out["exception"] == "the PRU cells are published in the national tables already"
    assert out["exception"] in seen["html"]
    withheld = sorted(int(i) for i in r.index[r.symbols["count"] != ""])
    column = list(r.columns).index("count")
    assert sorted(out["cells"]) == sorted(f"{i},{column}" for i in withheld)  # per-cell reasons
    assert all(v == ["threshold"] for v in out["cells"].values())


def test_acros_own_loader_reads_them_when_they_name_its_version(acro, sample_dir, tmp_path):
    s, _ = _session(sample_dir, tmp_path, acro_version="1.0.2")
    r = s.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    r.request_exception("needed for the quality report")
    (results,) = (tmp_path / "checking").rglob("results.json")
    done = subprocess.run([str(acro), "-c", ACRO, str(results.parent)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = json.loads(done.stdout).values()
    assert record["status"] == "review" and record["exception"] == "needed for the quality report"
    assert record["rows"] == len(r)


def test_the_output_checkers_decision_is_in_the_record_and_the_audit_log(sample_dir, tmp_path, capsys):
    s, common = _session(sample_dir, tmp_path)
    r = s.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    env = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": common["store_url"],
        "SAFESTATS_SECRET_KEY_FILE": common["secret_key_file"],
        "SAFESTATS_OUTPUT_CHECKING_DIR": common["output_checking_dir"],
    }
    assert main(["outputs", "approve", str(r.audit_id), "--by", "demo.statistician"], environ=env) != 0
    assert "someone other than the analyst" in capsys.readouterr().err
    assert main(["outputs", "reject", str(r.audit_id), "--by", "Olu Checker"], environ=env) != 0  # --note needed
    capsys.readouterr()
    assert main(["outputs", "approve", str(r.audit_id), "--by", "Olu Checker", "--note", "fine"], environ=env) == 0
    assert "approved" in capsys.readouterr().out
    (results,) = (tmp_path / "checking").rglob("results.json")
    (out,) = json.loads(results.read_text())["results"].values()
    assert out["review"]["decision"] == "approve" and out["review"]["by"] == "Olu Checker"
    service = Service(Settings.load(env))
    ops = [(x["operation"], x["outcome"], x["user"]) for x in service.audit.records() if x["operation"] != "query"]
    assert ("output approve", "refused", "demo.statistician") in ops
    assert ("output approve", "answered", "Olu Checker") in ops
    assert service.audit.verify().ok
    # a dp result has no output-checking record; another user's output cannot be annotated
    analyst = ss.connect(user="demo.analyst", environ={}, **common)
    dp = analyst.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    with pytest.raises(ReleaseError, match="no output-checking record"):
        dp.comment("hello")
    with pytest.raises(ReleaseError, match="not a result released to you"):
        analyst.note_output(r.audit_id, comment="not mine")
    with pytest.raises(UserError, match="say what"):
        r.comment("   ")


def test_a_release_keeps_what_others_wrote_to_the_days_record_since(sample_dir, tmp_path):
    """The service keeps the last results.json it wrote in memory, and reads the file again
    only when it changed since: an annotation and an edit by another program, made between two
    releases, both survive the next release, and the checksums are those of the files."""
    import hashlib

    s, _ = _session(sample_dir, tmp_path)
    first = s.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    s.table("PupilOnRoll").where(term=SPRING).group_by("sex").count().run()  # from memory
    first.comment("checked against last year's table")  # the service rewrites the file
    s.table("PupilOnRoll").where(term=SPRING).group_by("fsm_eligible").count().run()
    (results,) = (tmp_path / "checking").rglob("results.json")
    doc = json.loads(results.read_text())
    doc["reviewer_notes"] = "seen by the output checker's own tool"
    results.write_text(json.dumps(doc))  # in place: same file, new contents
    s.table("PupilOnRoll").where(term=SPRING).group_by("nc_year").count().run()
    doc = json.loads(results.read_text())
    assert [uid[:3] for uid in doc["results"]] == ["000", "001", "002", "003"]
    assert "checked against last year's table" in doc["results"]["000_PupilOnRoll_by_phase"]["comments"]
    assert doc["reviewer_notes"] == "seen by the output checker's own tool"
    for name in ("results.json", "003_PupilOnRoll_by_nc_year_0.csv"):
        written = (results.parent / "checksums" / f"{name}.txt").read_text()
        assert written == hashlib.sha256((results.parent / name).read_bytes()).hexdigest()
