"""Protected files (Becta: files that carry IL3 data are encrypted).

The attacker gets an exported file — a result's CSV, a release bundle, an audit report — but
not its password or age identity. Judged against the result itself:

- an OFFICIAL-SENSITIVE export is written only as a protected archive (AES-256 zip, or age to
  the policy's recipients); none of its cell values or categories is in the file's bytes, and it
  opens only with the right key; its marking and handling caveat are readable outside;
- without a password nothing is written and nothing recorded; in clear only when asked for,
  and every export of a protected result is an audit record written before the file;
- OFFICIAL results are written in clear, as before;
- `releases verify` checks an encrypted bundle given the key, refuses a wrong key or a
  tampered archive; reports naming users are encrypted when written to a file.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml

import safestats as ss
from safestats.cli import main
from safestats.config import Settings, project_root
from safestats.errors import ExportError, ReleaseError
from safestats.exports import MARKING_FILE, open_protected
from safestats.service.pipeline import Service

SECRET = "correct horse battery staple"
SPRING = "2017-spring"


@pytest.fixture
def settings(sample_dir, tmp_path):
    return {
        "data_dir": sample_dir,
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "output_checking_dir": str(tmp_path / "checking"),
        "output_dir": str(tmp_path / "saved"),
        "environ": {},
    }


@pytest.fixture
def session(settings):
    return ss.connect(user="demo.unrestricted", **settings)


@pytest.fixture
def sensitive(session):
    r = session.table("PupilOnRoll_Unrestricted").where(term=SPRING).group_by("phase", "sex").count().run()
    assert r.label == "OFFICIAL-SENSITIVE"
    return r


def _exports(session) -> list[dict]:
    return [r for r in session._transport._service.audit.records() if r["operation"] == "export"]


def _plaintexts(result) -> set[str]:
    """Strings of the table an attacker would look for (categories, released counts)."""
    frame = result.display_frame()
    words = {str(v) for c in frame.columns for v in frame[c].tolist() if len(str(v)) >= 4}
    assert len(words) > 5
    return words


def test_without_a_password_nothing_is_written_and_nothing_recorded(session, sensitive, tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESTATS_EXPORT_PASSWORD", raising=False)
    with pytest.raises(ExportError, match="written encrypted: give password"):
        sensitive.to_csv(tmp_path / "table.csv")
    with pytest.raises(ExportError, match="at least 12"):
        sensitive.to_csv(tmp_path / "table.csv", password="short")
    assert not list(tmp_path.glob("table.csv*")) and _exports(session) == []
    with pytest.raises(ExportError, match="by name"):  # an open file would be written in clear
        sensitive.to_csv(io.StringIO())


@pytest.mark.parametrize("export", ["to_csv", "to_html"])
def test_an_il3_export_is_an_aes_archive_with_its_marking_outside(session, sensitive, tmp_path, export):
    getattr(sensitive, export)(tmp_path / "table.out", password=SECRET)
    archive = tmp_path / "table.out.zip"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("table")] == ["table.out.zip"]
    data = archive.read_bytes()
    assert not {w for w in _plaintexts(sensitive) if w.encode() in data}
    with zipfile.ZipFile(archive) as z:  # anyone can read the outside: the marking and the caveat
        outside = z.comment.decode()
        assert sensitive.marking in outside and sensitive.provenance.caveat in outside
        with pytest.raises(RuntimeError):
            z.read("table.out")  # encrypted: the stdlib cannot open it without the password
    with pytest.raises(ExportError, match="wrong password"):
        open_protected(archive, password="not the password at all")
    inside = open_protected(archive, password=SECRET)
    expected = sensitive.to_csv() if export == "to_csv" else sensitive.to_html()
    assert inside["table.out"].decode() == expected
    assert sensitive.marking in inside[MARKING_FILE].decode()
    (record,) = _exports(session)
    assert record["user"] == "demo.unrestricted" and "encrypted (zip)" in record["reason"]
    assert record["label"] == "OFFICIAL-SENSITIVE" and record["fields_returned"]


def test_in_clear_only_when_asked_and_audited_and_official_as_before(session, sensitive, tmp_path):
    sensitive.to_csv(tmp_path / "clear.csv", unencrypted=True)
    assert (tmp_path / "clear.csv").read_text() == sensitive.to_csv()
    (record,) = _exports(session)
    assert "in clear (unencrypted, asked for)" in record["reason"]
    official = session.table("PupilOnRoll").where(term=SPRING).group_by("phase").count().run()
    assert official.label == "OFFICIAL"
    official.to_csv(tmp_path / "official.csv")
    assert (tmp_path / "official.csv").read_text() == official.to_csv() and len(_exports(session)) == 1


def test_a_result_of_another_user_cannot_be_recorded_as_exported(session, sensitive, settings):
    other = ss.connect(user="demo.analyst", **settings)
    with pytest.raises(ReleaseError, match="not a result released to you"):
        other.record_export(sensitive.audit_id, "/tmp/x.csv", "none")
    refused = [r for r in other._transport._service.audit.records() if r["operation"] == "export"]
    assert refused[-1]["outcome"] == "refused"


def test_age_recipients_from_the_policy(sample_dir, tmp_path):
    from pyrage import x25519

    identity = x25519.Identity.generate()
    (tmp_path / "me.key").write_text(f"# owner\n{identity}\n")
    raw = yaml.safe_load((project_root() / "src/safestats/resources/policy.yaml").read_text())
    raw["exports"] = {"method": "age", "recipients": [str(identity.to_public())]}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(raw))
    s = ss.connect(
        user="demo.unrestricted",
        data_dir=sample_dir,
        store_url=f"sqlite:///{tmp_path / 's.db'}",
        output_checking_dir=str(tmp_path / "checking"),
        policy=str(tmp_path / "policy.yaml"),
        environ={},
    )
    r = s.table("Nationality").where(term=SPRING).group_by("nationality").count().run()
    r.to_csv(tmp_path / "nat.csv")  # no password: the recipients' public keys are enough
    archive = tmp_path / "nat.csv.zip.age"
    assert archive.exists() and r.marking in (tmp_path / "nat.csv.zip.age.marking.txt").read_text()
    assert not {w for w in _plaintexts(r) if w.encode() in archive.read_bytes()}
    assert open_protected(archive, identity_file=tmp_path / "me.key")["nat.csv"].decode() == r.to_csv()
    stranger = x25519.Identity.generate()
    (tmp_path / "other.key").write_text(f"{stranger}\n")
    with pytest.raises(ExportError, match="not decrypted"):
        open_protected(archive, identity_file=tmp_path / "other.key")
    bad = dict(raw, exports={"method": "age", "recipients": ["age1notakey"]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    from safestats.access.policy import load_policy
    from safestats.catalog import load_catalog
    from safestats.errors import ConfigError

    with pytest.raises(ConfigError, match="not an age X25519 recipient"):
        load_policy(tmp_path / "bad.yaml", catalog=load_catalog())


def test_an_il3_release_bundle_is_one_archive_that_verify_opens_with_the_key(session, sensitive, settings, tmp_path):
    archive = sensitive.save_release("phase by sex", path=tmp_path / "bundle", password=SECRET)
    assert archive == tmp_path / "bundle.zip" and not (tmp_path / "bundle").exists()
    assert not list(tmp_path.glob(".bundle-*"))  # the private build folder is gone
    assert not {w for w in _plaintexts(sensitive) if w.encode() in archive.read_bytes()}
    env = {
        "SAFESTATS_DATA_DIR": str(settings["data_dir"]),
        "SAFESTATS_STORE_URL": settings["store_url"],
        "SAFESTATS_OUTPUT_CHECKING_DIR": settings["output_checking_dir"],
    }
    assert main(["releases", "verify", str(archive)], environ={**env, "SAFESTATS_EXPORT_PASSWORD": SECRET}) == 0
    wrong = {**env, "SAFESTATS_EXPORT_PASSWORD": "a wrong password here"}
    assert main(["releases", "verify", str(archive)], environ=wrong) == ExportError.exit_code
    tampered = tmp_path / "tampered.zip"
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0xFF
    tampered.write_bytes(bytes(data))
    assert main(["releases", "verify", str(tampered)], environ={**env, "SAFESTATS_EXPORT_PASSWORD": SECRET}) != 0
    with pytest.raises(ReleaseError, match="already exists"):
        session.save_release(sensitive.audit_id, "again", path=tmp_path / "bundle", password=SECRET)


def test_reports_naming_users_are_encrypted_when_written_to_a_file(settings, session, sensitive, tmp_path, capsys):
    env = {
        "SAFESTATS_DATA_DIR": str(settings["data_dir"]),
        "SAFESTATS_STORE_URL": settings["store_url"],
        "SAFESTATS_OUTPUT_CHECKING_DIR": settings["output_checking_dir"],
    }
    today = __import__("datetime").date.today().isoformat()
    base = ["audit", "report", "--from", today, "--to", today, "--format", "csv"]
    assert main([*base, "--out", str(tmp_path / "named.csv")], environ=env) == ExportError.exit_code
    assert not list(tmp_path.glob("named.csv*"))
    assert (
        main([*base, "--out", str(tmp_path / "named.csv")], environ={**env, "SAFESTATS_EXPORT_PASSWORD": SECRET}) == 0
    )
    inside = open_protected(tmp_path / "named.csv.zip", password=SECRET)["named.csv"].decode()
    assert "demo.unrestricted" in inside and b"demo.unrestricted" not in (tmp_path / "named.csv.zip").read_bytes()
    assert main([*base, "--redact-users", "--out", str(tmp_path / "redacted.csv")], environ=env) == 0
    assert "demo.unrestricted" not in (tmp_path / "redacted.csv").read_text()  # OFFICIAL: in clear
    assert main([*base, "--unencrypted", "--out", str(tmp_path / "clear.csv")], environ=env) == 0
    assert "demo.unrestricted" in (tmp_path / "clear.csv").read_text()
    service = Service(Settings.load(env))
    reasons = [str(r.get("reason")) for r in service.audit.records() if r["operation"] == "admin"]
    assert any("written to" in r and "encrypted (zip)" in r for r in reasons)
    assert any("in clear (--unencrypted)" in r for r in reasons)
    assert main(["incidents", "report", "--format", "json", "--out", str(tmp_path / "inc.json")], environ=env) != 0
    assert (
        main(
            ["incidents", "report", "--format", "json", "--out", str(tmp_path / "inc.json")],
            environ={**env, "SAFESTATS_EXPORT_PASSWORD": SECRET},
        )
        == 0
    )
    assert json.loads(open_protected(tmp_path / "inc.json.zip", password=SECRET)["inc.json"])["handling"]


def test_the_protected_archive_holds_only_what_it_says(session, sensitive, tmp_path):
    archive = sensitive.save_release("members", path=tmp_path / "b", password=SECRET)
    names = set(open_protected(archive, password=SECRET))
    assert MARKING_FILE in names and all(n == MARKING_FILE or n.startswith("b/") for n in names)
    assert {"b/result.json", "b/manifest.json", "b/checksums.sha256", "b/table.csv"} <= names
    assert Path(archive).stat().st_mode & 0o077 == 0  # the owner's only


def test_every_pandas_writer_of_a_protected_result_is_protected_or_refused(session, sensitive, tmp_path):
    """A ProtectedResult is a DataFrame: pandas' own writers would put the table in a file in
    clear. Parquet is protected like CSV; the others are refused unless unencrypted=True."""
    import pyarrow.parquet as pq

    sensitive.to_parquet(tmp_path / "t.parquet", password=SECRET)
    assert not (tmp_path / "t.parquet").exists()
    data = open_protected(tmp_path / "t.parquet.zip", password=SECRET)["t.parquet"]
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.metadata[b"safestats.marking"] == sensitive.marking.encode()
    assert table.num_rows == len(sensitive)
    for writer in ("to_json", "to_pickle", "to_excel", "to_feather", "to_markdown", "to_latex", "to_xml", "to_stata"):
        with pytest.raises(ExportError, match="in clear: use to_csv"):
            getattr(sensitive, writer)(tmp_path / f"t.{writer}")
        assert not (tmp_path / f"t.{writer}").exists()
    with pytest.raises(ExportError, match="in clear"):
        sensitive.head(3).to_json(tmp_path / "derived.json")  # a derived frame keeps its protection
    sensitive.to_json(tmp_path / "clear.json", unencrypted=True)
    assert (tmp_path / "clear.json").exists() and "in clear" in _exports(session)[-1]["reason"]
    assert sensitive.to_json()  # text in memory, not a file
