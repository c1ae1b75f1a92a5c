"""Retention and disposal: `safestats retention apply` destroys what is past the policy's periods,
each kind after an audit record naming what goes, and nothing a saved release needs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

import safestats as ss
from safestats.cli import main
from safestats.config import Settings, project_root
from safestats.errors import ConfigError
from safestats.service.pipeline import Service

SPRING = "2017-spring"


def _policy(tmp_path: Path, retention: dict | None) -> Path:
    raw = yaml.safe_load((project_root() / "src/safestats/resources/policy.yaml").read_text())
    if retention is None:
        raw.pop("retention", None)
    else:
        raw["retention"] = retention
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def outputs(sample_dir, tmp_path):
    """A store with kept dp and sdc results, a cached dp release, a saved release, an
    output-checking folder and a published report run."""
    policy = _policy(tmp_path, {"kept_results": 90, "cache": 30, "output_checking": 365, "reports": 730})
    settings = {
        "data_dir": sample_dir,
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "output_checking_dir": str(tmp_path / "checking"),
        "output_dir": str(tmp_path / "saved"),
        "policy": str(policy),
        "environ": {},
    }
    analyst = ss.connect(user="demo.analyst", **settings)
    dp = [analyst.table("PupilOnRoll").where(term=SPRING).group_by(k).count().run() for k in ("phase", "sex")]
    analyst.save_release(dp[0].audit_id, "kept-for-ever", path=tmp_path / "bundle")
    statistician = ss.connect(user="demo.statistician", **settings)
    statistician.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    run = tmp_path / "reports" / "school_quality" / "2026-12-01-run"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"started_utc": dt.datetime.now(dt.UTC).isoformat()}))
    (run / "school_quality.html").write_text("<html>OFFICIAL</html>")
    env = {
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": settings["store_url"],
        "SAFESTATS_OUTPUT_CHECKING_DIR": settings["output_checking_dir"],
        "SAFESTATS_POLICY": str(policy),
    }
    return {"env": env, "dp": dp, "tmp": tmp_path, "settings": settings, "run": run}


def _later(days: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


def _service(env) -> Service:
    return Service(Settings.load(env))


def test_a_dry_run_lists_and_destroys_nothing(outputs, capsys):
    env, tmp = outputs["env"], outputs["tmp"]
    before = len(list(_service(env).audit.records()))
    args = ["retention", "apply", "--dry-run", "--now", _later(800), "--reports-dir", str(tmp / "reports")]
    assert main(args, environ=env) == 0
    out = capsys.readouterr().out
    assert "would destroy 2 kept results" in out  # three kept, one needed by the saved release
    assert "would destroy 1 output checking" in out and "would destroy 1 reports" in out
    assert outputs["run"].exists() and any((tmp / "checking").rglob("results.json"))
    service = _service(env)
    assert len(list(service.audit.records())) == before
    assert all(service.results.result(r.audit_id) is not None for r in outputs["dp"])


def test_apply_destroys_what_is_past_its_period_and_audits_it_first(outputs, capsys):
    env, tmp, dp = outputs["env"], outputs["tmp"], outputs["dp"]
    args = ["retention", "apply", "--now", _later(400), "--reports-dir", str(tmp / "reports")]
    assert main(args, environ=env) == 0
    out = capsys.readouterr().out
    assert "kept_results: destroyed 2" in out and "cache: destroyed 2" in out and "output_checking: destroyed 1" in out
    assert "reports: nothing older than 730 days" in out
    service = _service(env)
    assert service.results.result(dp[1].audit_id) is None  # gone
    assert service.results.result(dp[0].audit_id) is not None  # a saved release needs it
    assert not list((tmp / "checking").rglob("results.json"))
    assert outputs["run"].exists()  # 400 days < 730
    records = list(service.audit.records())
    destroyed = [r for r in records if str(r.get("reason", "")).startswith("retention: destroying")]
    assert len(destroyed) == 3
    assert all(r["user"].startswith("data owner") for r in destroyed)
    assert any(f"result of record {dp[1].audit_id}" in r["reason"] for r in destroyed)
    assert main(["audit", "verify"], environ=env) == 0
    # the saved release is still reproduced from its kept result, and a disposed cache entry
    # means a repeat is drawn and charged again, never answered for free
    analyst = ss.connect(user="demo.analyst", **outputs["settings"])
    release_id = analyst.releases().index[0]
    out, _ = analyst.reproduce(release_id)
    assert "identical" in json.dumps(out)
    again = analyst.table("PupilOnRoll").where(term=SPRING).group_by("sex").count().run()
    assert again.privacy is not None and str(again.privacy["spent"]) != "0"
    # and at 800 days the report run goes too
    capsys.readouterr()
    assert main(["retention", "apply", "--now", _later(800), "--reports-dir", str(tmp / "reports")], environ=env) == 0
    assert "reports: destroyed 1" in capsys.readouterr().out
    assert not outputs["run"].exists()


def test_nothing_is_destroyed_when_the_audit_record_cannot_be_written(outputs, monkeypatch):
    from safestats.service import retention

    env, tmp, dp = outputs["env"], outputs["tmp"], outputs["dp"]
    service = _service(env)

    def broken(*_a, **_k):
        raise OSError("audit store is read-only")

    monkeypatch.setattr(service, "audit_admin", broken)
    disposals = retention.plan(service, now=dt.datetime.fromisoformat(_later(800)), reports_dir=tmp / "reports")
    with pytest.raises(OSError, match="read-only"):
        retention.apply(service, disposals, actor="data owner (test)")
    assert service.results.result(dp[1].audit_id) is not None
    assert outputs["run"].exists() and list((tmp / "checking").rglob("results.json"))


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        ({"kept_result": 30}, "unknown kinds"),
        ({"reports": 0}, "at least 1"),
        ({"reports": True}, "whole number"),
        ({"reports": "30"}, "whole number"),
    ],
)
def test_a_bad_retention_policy_is_refused_naming_the_file(tmp_path, sample_dir, retention, message):
    policy = _policy(tmp_path, retention)
    with pytest.raises(ConfigError, match=message) as e:
        Service(Settings.load({}, data_dir=sample_dir, store_url=f"sqlite:///{tmp_path / 's.db'}", policy=str(policy)))
    assert str(policy) in str(e.value)


def test_without_retention_periods_nothing_is_disposed_of(tmp_path, sample_dir, capsys):
    policy = _policy(tmp_path, None)
    env = {"SAFESTATS_DATA_DIR": str(sample_dir), "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    assert main(["retention", "apply"], environ={**env, "SAFESTATS_POLICY": str(policy)}) == 0
    assert "sets no retention periods" in capsys.readouterr().out
