"""A researcher (A6) holds a release bundle; someone edits its tables and regenerates
checksums.sha256 so the checksums vouch for the edit. Verification rebuilds both tables from
result.json (bound to the audit record by its digest) and compares them cell by cell."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safestats.config import Settings
from safestats.errors import ReleaseError
from safestats.releases import verify_bundle
from safestats.service.pipeline import Service


def _rechecksum(bundle):
    lines = [
        f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}"
        for f in sorted(bundle.iterdir())
        if f.name != "checksums.sha256"
    ]
    (bundle / "checksums.sha256").write_text("\n".join(lines) + "\n")


@pytest.fixture
def bundle(connect, tmp_path, sample_dir, store_url):
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("la_code").count().run()
    path = r.save_release("LA counts", path=tmp_path / "bundle")
    service = Service(
        Settings.load({}, data_dir=sample_dir, store_url=store_url, output_checking_dir=str(tmp_path / "outputs"))
    )
    verify_bundle(path, audit=service.audit, store=service.results)
    return path, service, r


def test_an_edited_csv_with_fresh_checksums_fails(bundle):
    path, service, r = bundle
    lines = (path / "table.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line and not line.startswith("#") and line[-1].isdigit())
    key, value = lines[row].rsplit(",", 1)
    lines[row] = f"{key},{int(value) + 1}"
    (path / "table.csv").write_text("\n".join(lines) + "\n")
    _rechecksum(path)
    with pytest.raises(ReleaseError, match="table.csv: row .* column count"):
        verify_bundle(path, audit=service.audit, store=service.results)


def test_an_unsuppressed_cell_in_the_parquet_with_fresh_checksums_fails(bundle):
    path, service, r = bundle
    table = pq.read_table(path / "table.parquet")
    frame = table.to_pandas()
    hidden = frame.index[frame["count_symbol"] == "c"][0]
    frame.loc[hidden, "count"] = 3  # "reveal" a withheld cell
    frame.loc[hidden, "count_symbol"] = ""
    edited = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(table.schema.metadata)
    pq.write_table(edited, path / "table.parquet")
    _rechecksum(path)
    with pytest.raises(ReleaseError, match="table.parquet: row .* column count"):
        verify_bundle(path, audit=service.audit, store=service.results)


def test_the_parquet_table_is_typed(bundle):
    path, _, r = bundle
    frame = pq.read_table(path / "table.parquet").to_pandas()
    assert list(frame.columns) == ["la_code", "count", "count_symbol"]
    assert pd.api.types.is_integer_dtype(frame["count"]) or pd.api.types.is_float_dtype(frame["count"])
    assert frame["count"].isna().sum() == (frame["count_symbol"] == "c").sum() > 0
    assert frame["count"].dropna().tolist() == pd.DataFrame(r)["count"].dropna().tolist()


def test_a_bundle_verifies_offline_with_only_the_public_key(bundle, tmp_path):
    """No store, no log: the service's signature over the manifest and the inclusion receipt."""
    import json

    from safestats.audit.heads import Signer, load_public_key
    from safestats.releases import verify_offline

    path, service, r = bundle
    public = load_public_key(service.settings.signing_key_file + ".pub")
    done = verify_offline(path, public)
    assert done["audit_seq"] == r.audit_id and done["tree_size"] >= r.audit_id
    # another key does not vouch for it
    with pytest.raises(ReleaseError, match="not signed by the service's key"):
        verify_offline(path, Signer(tmp_path / "other.key").public)
    # an edited manifest with fresh checksums loses the signature
    m = json.loads((path / "manifest.json").read_text())
    m["user"] = "someone.else"
    (path / "manifest.json").write_text(json.dumps(m, sort_keys=True, indent=2))
    _rechecksum(path)
    with pytest.raises(ReleaseError, match="not signed by the service's key"):
        verify_offline(path, public)


def test_a_receipt_for_another_record_fails(bundle):
    import json

    from safestats.audit.heads import load_public_key
    from safestats.releases import verify_offline

    path, service, r = bundle
    m = json.loads((path / "manifest.json").read_text())
    receipt = m["receipt"]
    receipt["leaf_index"] += 1  # claim the record is another leaf of the same signed head
    m["audit"]["seq"] += 1
    from safestats.service.releases import sign_manifest

    m["signature"] = sign_manifest(service.audit.signer, m)  # even re-signed, the path proves another leaf
    (path / "manifest.json").write_text(json.dumps(m, sort_keys=True, indent=2))
    _rechecksum(path)
    with pytest.raises(ReleaseError, match="receipt does not prove"):
        verify_offline(path, load_public_key(service.settings.signing_key_file + ".pub"))


def test_a_swapped_notebook_with_fresh_checksums_fails(connect, tmp_path, sample_dir, store_url):
    """The manifest (signed) names the notebook's SHA-256: other code in the bundle shows."""
    s = connect("demo.statistician")
    r = s.table("PupilOnRoll").where(term="2017-spring").group_by("phase").count().run()
    path = r.save_release("phase", path=tmp_path / "nb", notebook="getting_started.ipynb")
    service = Service(
        Settings.load({}, data_dir=sample_dir, store_url=store_url, output_checking_dir=str(tmp_path / "outputs"))
    )
    verify_bundle(path, audit=service.audit, store=service.results)
    (path / "notebook.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    _rechecksum(path)
    with pytest.raises(ReleaseError, match="notebook.ipynb is not the notebook the manifest names"):
        verify_bundle(path, audit=service.audit, store=service.results)
