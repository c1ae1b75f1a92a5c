"""Releases researchers can reproduce: save, verify and reproduce in both disclosure modes; a
tampered bundle fails verification naming the file; a changed snapshot is reported precisely."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

import safestats as ss
from safestats.errors import ReleaseError
from safestats.releases import verify_bundle
from safestats.service.pipeline import Service


def _service(connect_settings):
    from safestats.config import Settings

    return Service(Settings.load({}, **connect_settings))


@pytest.fixture
def settings(sample_dir, tmp_path, store_url):
    return {"data_dir": sample_dir, "store_url": store_url, "output_checking_dir": str(tmp_path / "outputs")}


def test_sdc_release_round_trip(connect, settings, tmp_path):
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "fsm_eligible").count().run()
    bundle = r.save_release("LA by FSM, spring 2017", path=tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "checksums.sha256",
        "manifest.json",
        "result.json",
        "table.csv",
        "table.parquet",
    ]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["audit"]["seq"] == r.audit_id and m["query_hash"] == r.provenance.query_hash
    assert m["snapshot_id"] == r.provenance.snapshot_id and set(m["input_files"]) >= {"PupilOnRoll.parquet"}
    assert m["disclosure"]["mode"] == "sdc" and m["software"]["safestats"] == ss.__version__
    assert len(m["catalog"]["sha256"]) == 64 and len(m["policy"]["sha256"]) == 64
    assert m["marking"] == "OFFICIAL (IL2)"
    csv = (bundle / "table.csv").read_text().splitlines()
    assert csv[0] == "# OFFICIAL (IL2)" and csv[-1] == "# OFFICIAL (IL2)" and ",c" in "\n".join(csv)
    assert pq.read_schema(bundle / "table.parquet").metadata[b"safestats.marking"] == b"OFFICIAL (IL2)"
    service = _service(settings)
    assert verify_bundle(bundle, audit=service.audit, store=service.results)["audit_seq"] == r.audit_id
    assert s.releases()["name"].tolist() == ["LA by FSM, spring 2017"]
    report, again = s.reproduce(m["release_id"])
    assert report["identical"] and report["mode"] == "sdc" and "re-run" in report["how"]
    pd.testing.assert_frame_equal(pd.DataFrame(again), pd.DataFrame(r))


def test_dp_release_is_reproduced_from_the_stored_release_without_spending(connect, settings, tmp_path):
    s = connect("demo.analyst")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    bundle = r.save_release("phase counts", path=tmp_path / "bundle")
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["privacy"]["spent"] == "1/2" and m["disclosure"]["mode"] == "dp"
    service = _service(settings)
    verify_bundle(bundle, audit=service.audit, store=service.results)
    left = s.budget()["left"]
    researcher = connect("demo.researcher")  # another user reproduces it: same stored draw
    report, again = researcher.reproduce(m["release_id"])
    assert report["identical"] and "no new draw" in report["how"]
    assert report["matches"]["snapshot_id"] == m["snapshot_id"]
    assert report["matches"]["disclosure"]["per_query"] == "1/2" and report["matches"]["query_hash"] == m["query_hash"]
    pd.testing.assert_frame_equal(pd.DataFrame(again), pd.DataFrame(r))
    assert s.budget()["left"] == left  # nothing spent


@pytest.mark.parametrize("victim", ["table.csv", "manifest.json", "result.json", "table.parquet"])
def test_a_tampered_bundle_fails_naming_the_file(connect, settings, tmp_path, victim):
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    bundle = r.save_release("phase", path=tmp_path / "bundle")
    service = _service(settings)
    path = bundle / victim
    path.write_bytes(path.read_bytes().replace(b"Primary", b"Primery").replace(b"sdc", b"sdC") + b" ")
    with pytest.raises(ReleaseError, match=f"{victim} does not match its checksum"):
        verify_bundle(bundle, audit=service.audit, store=service.results)


def test_a_manifest_edited_with_fresh_checksums_still_fails(connect, settings, tmp_path):
    import hashlib

    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    bundle = r.save_release("phase", path=tmp_path / "bundle")
    m = json.loads((bundle / "manifest.json").read_text())
    m["user"] = "someone.else"
    (bundle / "manifest.json").write_text(json.dumps(m, sort_keys=True, indent=2))
    lines = [
        f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}"
        for f in sorted(bundle.iterdir())
        if f.name != "checksums.sha256"
    ]
    (bundle / "checksums.sha256").write_text("\n".join(lines) + "\n")
    service = _service(settings)
    with pytest.raises(ReleaseError, match="manifest.json: user is 'someone.else' but audit record"):
        verify_bundle(bundle, audit=service.audit, store=service.results)
    (bundle / "extra.txt").write_text("smuggled")
    with pytest.raises(ReleaseError, match="extra.txt not listed in checksums.sha256"):
        verify_bundle(bundle, audit=service.audit, store=service.results)


def test_a_changed_snapshot_is_reported_precisely_not_rerun(sample_dir, tmp_path):
    from safestats.synthetic.census import generate

    data = tmp_path / "census"
    shutil.copytree(sample_dir, data)
    url = f"sqlite:///{tmp_path / 's.db'}"
    s = ss.connect(
        user="demo.statistician", data_dir=data, environ={}, store_url=url, output_checking_dir=str(tmp_path / "o")
    )
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    release_id = json.loads((r.save_release("phase", path=tmp_path / "b") / "manifest.json").read_text())["release_id"]
    shutil.rmtree(data)
    generate(data, pupils=3000, seed=99, progress=False)  # the census is replaced
    later = ss.connect(
        user="demo.statistician", data_dir=data, environ={}, store_url=url, output_checking_dir=str(tmp_path / "o")
    )
    with pytest.raises(ReleaseError, match=r"census snapshot changed .*PupilOnRoll.parquet changed \(sha256"):
        later.reproduce(release_id)


def test_only_your_own_released_results_can_be_saved(connect):
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").group_by("phase").count().run()
    with pytest.raises(ReleaseError, match="is not yours"):
        connect("quality.reports").save_release(r.audit_id, "not mine")
    with pytest.raises(ReleaseError, match="not a result the service kept"):
        s.save_release(r.audit_id + 100, "nothing")
    with pytest.raises(ReleaseError, match="a release needs a name"):
        s.save_release(r.audit_id, "a/b")


def test_the_releases_command_line(connect, settings, tmp_path, capsys):
    from safestats.cli import main

    env = {
        "SAFESTATS_DATA_DIR": str(settings["data_dir"]),
        "SAFESTATS_STORE_URL": settings["store_url"],
        "SAFESTATS_OUTPUT_CHECKING_DIR": settings["output_checking_dir"],
        "SAFESTATS_USER": "demo.statistician",
    }
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("sex").count().run()
    assert main(["releases", "save", str(r.audit_id), "by sex", "--out", str(tmp_path / "b")], environ=env) == 0
    release_id = json.loads((tmp_path / "b" / "manifest.json").read_text())["release_id"]
    assert main(["releases", "verify", str(tmp_path / "b")], environ=env) == 0
    assert main(["releases", "list"], environ=env) == 0
    assert main(["releases", "reproduce", release_id, "--out", str(tmp_path / "again.csv")], environ=env) == 0
    out = capsys.readouterr().out
    assert f"ok: release {release_id}" in out and "identical to the release" in out and "by sex" in out

    def rows(path):  # the table, without the provenance lines (their audit id and time differ)
        return [line for line in path.read_text().splitlines() if not line.startswith("#")]

    assert rows(tmp_path / "again.csv") == rows(tmp_path / "b" / "table.csv")
    assert main(["releases", "export", release_id, "--out", str(tmp_path / "copy")], environ=env) == 0
    assert main(["releases", "verify", str(tmp_path / "copy")], environ=env) == 0
    (tmp_path / "copy" / "table.csv").write_text("forged")
    assert main(["releases", "verify", str(tmp_path / "copy")], environ=env) == 7
    assert "table.csv does not match its checksum" in capsys.readouterr().err


def test_a_changed_catalog_is_reported_precisely(connect, tmp_path):
    from safestats.catalog import DEFAULT_CATALOG

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(DEFAULT_CATALOG.read_text())
    (tmp_path / "codelists").symlink_to(DEFAULT_CATALOG.parent / "codelists")
    s = connect("demo.statistician", catalog=str(catalog))
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    release_id = json.loads((r.save_release("phase", path=tmp_path / "b") / "manifest.json").read_text())["release_id"]
    catalog.write_text(
        catalog.read_text().replace(
            "Half-day sessions attended in the term.", "Half-day sessions attended in the term (revised)."
        )
    )
    with pytest.raises(ReleaseError, match=r"the catalog changed \(catalog.yaml: sha256 [0-9a-f]{12} → [0-9a-f]{12}\)"):
        connect("demo.statistician", catalog=str(catalog)).reproduce(release_id)


def test_an_impossible_record_number_is_refused_not_a_crash(connect):
    # found by schemathesis: 2**63 overflowed SQLite's INTEGER (a 500) before this check
    with pytest.raises(ReleaseError, match="is not a record number"):
        connect("demo.statistician")._transport._service.save_release(
            identity=connect("demo.statistician")._transport._identity, audit_id=2**63, name="x"
        )


def test_release_names_are_unique_per_user(connect, tmp_path):
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    r.save_release("phase", path=tmp_path / "one")
    with pytest.raises(ReleaseError, match="you already have a release named 'phase'"):
        r.save_release("phase", path=tmp_path / "two")
    assert not (tmp_path / "two").exists()


def test_a_release_saved_without_a_path_goes_under_the_output_folder_not_the_working_directory(
    connect, tmp_path, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    s = connect("demo.statistician", output_dir=str(tmp_path / "outputs"))
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    bundle = r.save_release("by phase")
    assert bundle == tmp_path / "outputs" / "releases" / "by phase" and (bundle / "manifest.json").exists()
    assert list(work.iterdir()) == []  # nothing in the working directory
