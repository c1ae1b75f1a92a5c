"""Encryption of the census at rest (Becta: protected data encrypted at rest).

The attacker has a copy of the census folder — the Parquet files and the manifest, with its
wrapped data keys — but not the key-encryption key (KEK), which lives in another file or an
environment variable of the service. Judged against the plain files:

- no plaintext value or column name of the census appears in the encrypted files' bytes;
- neither Arrow nor DuckDB reads a file without the key, nor with another KEK, nor with a data
  key moved from another file;
- the service refuses to start on an encrypted census without its KEK or with another one;
- with the KEK every engine answers exactly as on the plain census, and after the KEK is
  rotated the files, the snapshot id and the answers are unchanged while the old KEK is refused.
"""

from __future__ import annotations

import json
import os
import shutil

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

import safestats as ss
from safestats.census_keys import CensusKeys, encrypt_census, load_kek, new_kek_file, rotate_census_key
from safestats.cli import main
from safestats.config import Settings
from safestats.dataset import open_dataset
from safestats.engines.duckdb import DuckDBEngine
from safestats.engines.memory import MemoryEngine
from safestats.errors import DataError
from safestats.query.model import Aggregate, Filter, Query
from safestats.query.validate import plan_query
from safestats.service.pipeline import Service

TABLES = ("PupilOnRoll", "Nationality", "PupilOnRoll_Unrestricted")


@pytest.fixture(scope="module")
def plain_uncompressed(sample_dir, tmp_path_factory):
    """The sample census with its Parquet files rewritten uncompressed: every value is in the
    bytes, so their absence from the encrypted files is a real test."""
    folder = tmp_path_factory.mktemp("plain") / "census"
    shutil.copytree(sample_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    from safestats.dataset import sha256_file

    for name in manifest["files"]:
        if name.endswith(".parquet"):
            pq.write_table(pq.read_table(folder / name), folder / name, compression="none")
            manifest["files"][name]["sha256"] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


@pytest.fixture(scope="module")
def encrypted(plain_uncompressed, tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    folder = root / "census"
    shutil.copytree(plain_uncompressed, folder)
    kek_file = root / "kek"
    kek = new_kek_file(kek_file)
    encrypt_census(folder, kek)
    return folder, kek_file


def _plaintexts(folder, table):
    """Strings of the plain file that appear in its bytes: column names and category values, of
    six characters or more (a shorter one turns up by chance in megabytes of ciphertext)."""
    data = (folder / f"{table}.parquet").read_bytes()
    frame = pq.read_table(folder / f"{table}.parquet").to_pandas()
    words = set(frame.columns)
    for col in frame.columns:
        if pd.api.types.is_string_dtype(frame[col]):
            words |= {str(v) for v in frame[col].dropna().unique()[:200]}
    found = {w for w in words if len(w) >= 6 and w.encode() in data}
    assert len(found) >= 4, "the plain file should show its strings (uncompressed)"
    return found


@pytest.mark.parametrize("table", TABLES)
def test_no_plaintext_of_the_census_is_in_the_encrypted_files(plain_uncompressed, encrypted, table):
    folder, _ = encrypted
    data = (folder / f"{table}.parquet").read_bytes()
    assert data[:4] == b"PARE" and data[-4:] == b"PARE"  # Parquet with an encrypted footer
    leaked = {w for w in _plaintexts(plain_uncompressed, table) if w.encode() in data}
    assert not leaked
    manifest = (folder / "manifest.json").read_bytes()
    kek = load_kek(encrypted[1])
    assert kek is not None and kek.key not in data and kek.key not in manifest


def test_no_reader_opens_a_file_without_its_data_key(encrypted, tmp_path):
    folder, _ = encrypted
    file = folder / "Nationality.parquet"
    with pytest.raises(OSError):
        pq.read_table(file)
    con = duckdb.connect()
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT COUNT(*) FROM read_parquet('{file}')").fetchall()
    con.execute("PRAGMA add_parquet_key('guess', '" + "A" * 43 + "=')")  # some other 256-bit key
    with pytest.raises(duckdb.Error):
        con.execute(
            f"SELECT COUNT(*) FROM read_parquet('{file}', encryption_config={{footer_key: 'guess'}})"
        ).fetchall()
    con.close()
    other = new_kek_file(tmp_path / "other")
    manifest = json.loads((folder / "manifest.json").read_text())
    with pytest.raises(DataError, match="was encrypted under key"):
        CensusKeys.from_manifest(manifest, other, str(folder))
    # the manifest's wrapped keys under a forged KEK id: AES-GCM still refuses them
    forged = {**manifest, "encryption": {**manifest["encryption"], "kek_id": other.id}}
    keys = CensusKeys.from_manifest(forged, other, str(folder))
    assert keys is not None
    with pytest.raises(DataError, match="does not unwrap"):
        keys.data_key("Nationality.parquet")


def test_a_data_key_moved_to_another_file_does_not_unwrap(encrypted, tmp_path):
    folder, kek_file = encrypted
    copy = tmp_path / "census"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    keys = manifest["encryption"]["data_keys"]
    keys["Nationality.parquet"], keys["PupilOnRoll.parquet"] = keys["PupilOnRoll.parquet"], keys["Nationality.parquet"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="does not unwrap"):
        DuckDBEngine(open_dataset(copy, kek=load_kek(kek_file)))


def test_the_service_will_not_start_without_the_census_key_or_with_another(encrypted, tmp_path):
    folder, _ = encrypted
    base = {"data_dir": folder, "store_url": f"sqlite:///{tmp_path / 's.db'}"}
    with pytest.raises(DataError, match="is encrypted: give the service its key-encryption key"):
        Service(Settings.load({}, **base))
    other = tmp_path / "other"
    new_kek_file(other)
    with pytest.raises(DataError, match="was encrypted under key"):
        Service(Settings.load({}, **base, census_kek_file=str(other)))


QUERIES = [
    Query("PupilOnRoll", (Aggregate("count"),), ("la_code", "phase"), (Filter("term", "==", "2017-spring"),)),
    Query(
        "Nationality",
        (Aggregate("count_pupils"),),
        ("nationality",),
        (Filter("term", "==", "2017-spring"),),
    ),
]


@pytest.mark.parametrize("engine", [DuckDBEngine, MemoryEngine.from_dataset])
def test_every_engine_reads_the_encrypted_census_exactly_as_the_plain_one(
    plain_uncompressed, encrypted, catalog, engine
):
    folder, kek_file = encrypted
    plain, secret = engine(open_dataset(plain_uncompressed)), engine(open_dataset(folder, kek=load_kek(kek_file)))
    for q in QUERIES:
        plan = plan_query(q, catalog=catalog, max_cells=100_000)
        a, b = plain.execute(plan), secret.execute(plan)
        keys = list(q.group_by)
        pd.testing.assert_frame_equal(
            a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
        )
        assert len(a) > 1


def _answers(data_dir, kek_file, tmp_path, name):
    s = ss.connect(  # exact statistics under sdc: the same census gives the same table
        user="demo.statistician",
        data_dir=data_dir,
        store_url=f"sqlite:///{tmp_path / f'{name}.db'}",
        environ={},
        census_kek_file=str(kek_file) if kek_file else "",
        output_checking_dir=str(tmp_path / f"{name}-out"),
    )
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code", "phase").count().run()
    frame = pd.DataFrame(r).reset_index(drop=True)
    assert len(frame) > 100 and frame["count"].notna().sum() > 100
    return frame


def test_rotating_the_kek_keeps_files_and_answers_and_refuses_the_old_key(plain_uncompressed, encrypted, tmp_path):
    folder, kek_file = encrypted
    copy = tmp_path / "census"
    shutil.copytree(folder, copy)
    before_files = {p.name: p.read_bytes() for p in copy.glob("*.parquet")}
    snapshot = open_dataset(copy).snapshot_id
    answer = _answers(copy, kek_file, tmp_path, "before")
    pd.testing.assert_frame_equal(answer, _answers(plain_uncompressed, None, tmp_path, "plain"))

    new = tmp_path / "new-kek"
    new_kek_file(new)
    old = load_kek(kek_file)
    assert old is not None
    rotate_census_key(copy, old, load_kek(new))  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in copy.glob("*.parquet")} == before_files
    assert open_dataset(copy).snapshot_id == snapshot
    pd.testing.assert_frame_equal(_answers(copy, new, tmp_path, "after"), answer)
    with pytest.raises(DataError, match="was encrypted under key"):
        _answers(copy, kek_file, tmp_path, "old")


def test_the_census_commands_encrypt_rotate_and_audit(sample_dir, tmp_path, capsys):
    folder = tmp_path / "census"
    shutil.copytree(sample_dir, folder)
    env = {
        "SAFESTATS_DATA_DIR": str(folder),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "sk"),
        "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "sig"),
    }
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    assert main(["census", "new-kek", str(k1)], environ=env) == 0
    assert main(["census", "new-kek", str(k1)], environ=env) != 0  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    assert main(["census", "encrypt"], environ=env) != 0  # no KEK: one line, nothing changed
    assert "no key-encryption key" in capsys.readouterr().err
    assert not open_dataset(folder).encrypted
    assert main(["census", "encrypt", "--kek-file", str(k1)], environ=env) == 0
    assert main(["census", "encrypt", "--kek-file", str(k1)], environ=env) != 0  # already encrypted
    assert main(["census", "verify"], environ=env) == 0
    assert main(["census", "new-kek", str(k2)], environ=env) == 0
    assert main(["census", "rotate-key", "--kek-file", str(k1), "--new-kek-file", str(k2)], environ=env) == 0
    capsys.readouterr()
    env2 = {**env, "SAFESTATS_CENSUS_KEK_FILE": str(k2)}
    assert (
        main(
            ["query", "SELECT phase, COUNT(*) FROM PupilOnRoll WHERE term = '2017-spring' GROUP BY phase"], environ=env2
        )
        == 0
    )
    assert "primary" in capsys.readouterr().out.lower()
    assert main(["audit", "verify"], environ=env2) == 0
    service = Service(Settings.load(env2))
    reasons = [r.get("reason") or "" for r in service.audit.records()]
    k1_id, k2_id = load_kek(k1).id, load_kek(k2).id  # type: ignore[union-attr]
    assert any(f"encrypted at rest under key {k1_id}" in r for r in reasons)
    assert any(f"rotated from {k1_id} to {k2_id}" in r for r in reasons)


def test_synth_encrypt_writes_no_plaintext_file(tmp_path):
    kek_file = tmp_path / "kek"
    new_kek_file(kek_file)
    out = tmp_path / "census"
    env = {"SAFESTATS_CENSUS_KEK": kek_file.read_text().strip()}
    assert (
        main(["synth", "--scale", "sample", "--pupils", "2000", "--out", str(out), "--quiet", "--encrypt"], environ=env)
        == 0
    )
    for file in out.glob("*.parquet"):
        assert file.read_bytes()[:4] == b"PARE"
    ds = open_dataset(out, kek=load_kek("", env))
    assert ds.encrypted and len(MemoryEngine.from_dataset(ds).tables["PupilOnRoll"]) == sum(
        ds.manifest["row_counts"]["PupilOnRoll"].values()
    )


def test_a_spark_cluster_refuses_the_encrypted_folder_rather_than_reading_around_it(encrypted):
    from safestats.engines.spark import SparkEngine
    from safestats.errors import ConfigError

    folder, kek_file = encrypted
    with pytest.raises(ConfigError, match="cluster cannot read an encrypted census folder"):
        SparkEngine(open_dataset(folder, kek=load_kek(kek_file)), master="spark://elsewhere:7077")


@pytest.mark.slow
def test_local_spark_reads_the_encrypted_census_exactly_as_the_plain_one(plain_uncompressed, encrypted, catalog):
    from safestats.engines import spark_available

    if not spark_available():
        pytest.skip("needs the spark extra and Java")
    from safestats.engines.spark import SparkEngine

    folder, kek_file = encrypted
    engine = SparkEngine(open_dataset(folder, kek=load_kek(kek_file)), master="local[1]")
    plain = DuckDBEngine(open_dataset(plain_uncompressed))
    try:
        for q in QUERIES:
            plan = plan_query(q, catalog=catalog, max_cells=100_000)
            keys = list(q.group_by)
            a = plain.execute(plan).sort_values(keys).reset_index(drop=True)
            b = engine.execute(plan).sort_values(keys).reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, check_dtype=False)
    finally:
        engine.close()
        plain.close()


def test_duckdb_decrypts_into_anonymous_memory_only(encrypted, catalog):
    folder, kek_file = encrypted
    engine = DuckDBEngine(open_dataset(folder, kek=load_kek(kek_file)))
    fds = list(engine._memory)
    try:
        targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
        assert len(targets) == len(TABLES) + 2  # every Parquet file of the census
        assert all(t.startswith("/memfd:safestats-") for t in targets), targets  # no path in any filesystem
        inodes = {fd: os.fstat(fd).st_ino for fd in fds}
    finally:
        engine.close()
    for fd in fds:  # closed with the engine (the number may since belong to something else)
        try:
            assert os.fstat(fd).st_ino != inodes[fd]
        except OSError:
            pass


def test_without_memfd_duckdb_scans_through_arrow_with_the_same_answers(
    encrypted, plain_uncompressed, catalog, monkeypatch
):
    folder, kek_file = encrypted
    monkeypatch.delattr(os, "memfd_create")
    engine = DuckDBEngine(open_dataset(folder, kek=load_kek(kek_file)))
    plain = DuckDBEngine(open_dataset(plain_uncompressed))
    assert engine._shared and not engine._memory
    for q in QUERIES:
        plan = plan_query(q, catalog=catalog, max_cells=100_000)
        keys = list(q.group_by)
        pd.testing.assert_frame_equal(
            plain.execute(plan).sort_values(keys).reset_index(drop=True),
            engine.execute(plan).sort_values(keys).reset_index(drop=True),
        )
    engine.close()
    plain.close()


def test_the_engine_never_spills_census_rows_to_disk(encrypted):
    folder, kek_file = encrypted
    engine = DuckDBEngine(open_dataset(folder, kek=load_kek(kek_file)))
    try:  # DuckDB's default would spill into ./.tmp, in the working directory
        assert engine._con.raw_sql("SELECT current_setting('temp_directory')").fetchone() == ("",)
    finally:
        engine.close()


def test_an_encryption_stopped_half_way_loses_no_key_and_finishes_when_run_again(sample_dir, tmp_path, monkeypatch):
    """The data keys reach the manifest before any plain file is replaced: stopped between the
    two, the plain files are intact, and `census encrypt` again completes the census."""
    import safestats.census_keys as ck

    folder = tmp_path / "census"
    shutil.copytree(sample_dir, folder)
    kek = new_kek_file(tmp_path / "kek")
    real = os.replace

    def stop_after_the_manifest(src, dst):
        if str(dst).endswith(".parquet"):
            raise KeyboardInterrupt("power cut")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", stop_after_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        encrypt_census(folder, kek)
    monkeypatch.setattr(ck.os, "replace", real)
    assert open_dataset(folder).encrypted  # the keys are in the manifest
    assert pq.read_table(folder / "PupilOnRoll.parquet").num_rows > 0  # still the plain file
    encrypt_census(folder, kek)  # finishes the replacements
    assert not list(folder.glob(".*.encrypting")) and open_dataset(folder).verify() == []
    engine = MemoryEngine.from_dataset(open_dataset(folder, kek=kek))
    plain = MemoryEngine.from_dataset(open_dataset(sample_dir))
    assert engine.tables["PupilOnRoll"].equals(plain.tables["PupilOnRoll"])
