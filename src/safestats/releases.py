"""Release bundles: a released aggregate that researchers can check and reproduce without the data.

Every released result is kept by the service (``released_results``, by audit record) with its
SHA-256, which the audit record carries too (``disclosure.result_sha256``), so the hash chain
vouches for it. ``save_release`` lists a release in the store (``releases``) and writes a
bundle:

- ``result.json``: the payload exactly as released (what the digest is computed over);
- ``table.csv`` and ``table.parquet``: the protected table, with its marking (CSV: first and
  last lines; Parquet: file metadata); the CSV shows GSS symbols for withheld cells, the Parquet
  file is typed (numbers as numbers, ``<stat>_symbol``, ``<stat>_ci95``, ``<stat>_lower95`` and
  ``<stat>_upper95`` columns beside);
- ``manifest.json``: the canonical query, the dataset snapshot and the SHA-256 of every input
  file, the catalog and policy files' SHA-256, disclosure mode, mechanism, parameters and spend,
  software versions, the audit record (sequence number and hash), time, user, marking, and the
  notebook and parameters that made it;
- ``notebook.ipynb`` (when known): the code that made it, to run against synthetic data;
- ``checksums.sha256``: the SHA-256 of every other file (``sha256sum`` format).

:func:`verify_bundle` checks a bundle against the checksums, rebuilds both tables from
``result.json`` and compares them cell by cell, and checks the audit log (which must verify)
and the store. Reproducing is the service's job (:meth:`Service.reproduce`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from safestats.dataset import sha256_file
from safestats.errors import ReleaseError

if TYPE_CHECKING:
    from safestats.store.releases import ReleaseStore

__all__ = [
    "ReleaseError",
    "opened_bundle",
    "result_digest",
    "result_json",
    "sha256_file",
    "verify_bundle",
    "verify_offline",
    "write_bundle",
    "write_protected_bundle",
]


BUNDLE_FILES = ("result.json", "table.csv", "table.parquet", "manifest.json")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def result_digest(payload: Mapping[str, Any]) -> str:
    """The SHA-256 of what a release published: the table, its types and symbols, its marking
    and the query it answers (not when or to whom: a reproduction has the same digest)."""
    meta = payload["meta"]
    core = {
        "table": payload["table"],
        "dtypes": payload["dtypes"],
        # as on the wire: JSON turns row numbers into string keys (then sorted as text)
        "symbols": {c: {str(i): v for i, v in m.items()} for c, m in (meta.get("symbols") or {}).items()},
        "label": meta.get("label"),
        "query_hash": meta.get("query_hash"),
    }
    return hashlib.sha256(_canonical(core)).hexdigest()


def new_release_id() -> str:
    return f"rel-{dt.datetime.now(dt.UTC):%Y%m%d}-{secrets.token_hex(4)}"


# -- bundles -------------------------------------------------------------------------------------


def result_json(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes of a bundle's result.json (the manifest lists their SHA-256)."""
    return json.dumps(payload, sort_keys=True, indent=1, default=str).encode()


def write_bundle(
    folder: Path | str, manifest: Mapping[str, Any], payload: Mapping[str, Any], notebook: Path | None = None
) -> Path:
    """Write a release bundle to ``folder`` (created; must not exist or be empty)."""
    from safestats.result import result_from_payload

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ReleaseError(f"{folder} already exists and is not empty; choose another folder for the bundle")
    folder.mkdir(parents=True, exist_ok=True)
    result = result_from_payload(payload)
    (folder / "result.json").write_bytes(result_json(payload))
    (folder / "table.csv").write_text(str(result.to_csv()))  # the bundle as a whole is what is protected
    _parquet(result, manifest, folder / "table.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2, default=str))
    if notebook is not None and Path(notebook).is_file():
        (folder / "notebook.ipynb").write_bytes(Path(notebook).read_bytes())
    lines = [f"{sha256_file(f)}  {f.name}" for f in sorted(folder.iterdir()) if f.name != "checksums.sha256"]
    (folder / "checksums.sha256").write_text("\n".join(lines) + "\n")
    return folder


def write_protected_bundle(
    target: Path | str,
    manifest: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    notebook: Path | None,
    export: Any,
    password: str | None,
) -> Path:
    """The bundle of an OFFICIAL-SENSITIVE result as one protected archive beside ``target``
    (``<target>.zip`` or ``.zip.age``): built in a private temporary folder, packed, removed."""
    import shutil
    import tempfile

    from safestats.exports import write_protected
    from safestats.marking import marking_text

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bundle-", dir=target.parent))  # mode 0700
    try:
        folder = write_bundle(work / target.name, manifest, payload, notebook=notebook)
        files = {f"{target.name}/{f.name}": f.read_bytes() for f in sorted(folder.iterdir())}
        meta = payload.get("meta", {})
        from safestats.marking import caveat

        return write_protected(
            target,
            files,
            marking=marking_text(str(meta.get("label", "")), str(meta.get("impact_level") or "")),
            caveat=str(meta.get("handling") or caveat(str(meta.get("label", "")))),
            policy=export,
            password=password,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def opened_bundle(
    path: Path | str, *, password: str | None = None, identity_file: Path | str | None = None
) -> Iterator[Path]:
    """A bundle's folder: ``path`` itself, or a protected archive of it opened into a private
    temporary folder for as long as the block runs."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    import shutil
    import tempfile

    from safestats.exports import MARKING_FILE, open_protected

    files = open_protected(path, password=password, identity_file=identity_file)
    work = Path(tempfile.mkdtemp(prefix=".verify-"))
    try:
        folders = set()
        for name, data in files.items():
            if name == MARKING_FILE:
                continue
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 2:
                raise ReleaseError(f"{path}: unexpected member {name!r}; not a safestats bundle")
            (work / rel.parent).mkdir(exist_ok=True)
            (work / rel).write_bytes(data)
            folders.add(rel.parts[0])
        if len(folders) != 1:
            raise ReleaseError(f"{path} holds {len(folders)} bundles; a protected bundle holds one")
        yield work / folders.pop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def typed_frame(result: Any) -> pd.DataFrame:
    """The table as typed columns: keys as their values, each statistic as numbers (empty
    where withheld), its GSS symbol in ``<stat>_symbol`` and, in dp, its 95% half-width in
    ``<stat>_ci95`` and its interval's ends in ``<stat>_lower95`` / ``<stat>_upper95``. What
    ``table.parquet`` holds, and what verification rebuilds."""
    frame = pd.DataFrame(result)
    stats = list(result.provenance.symbols)
    out = pd.DataFrame(index=frame.index)
    for c in frame.columns:
        if c in stats:
            kind = "Int64" if pd.api.types.is_integer_dtype(frame[c]) else "Float64"
            out[c] = pd.to_numeric(frame[c], errors="coerce").astype(kind)
        else:
            values = frame[c].astype(object)
            kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and pd.isna(v))}
            out[c] = (
                values
                if len(kinds) <= 1 and kinds <= {str, int, bool}
                else values.map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
            )
    symbols = result.symbols
    accuracy = result.accuracy
    for c in stats:
        out[f"{c}_symbol"] = symbols[c].astype(str) if c in symbols else ""
        if accuracy is not None and c in accuracy:
            out[f"{c}_ci95"] = pd.to_numeric(accuracy[c], errors="coerce").astype("Float64")
        if result.provenance.interval and c in result.provenance.interval:
            ends = result.interval(c)
            out[f"{c}_lower95"], out[f"{c}_upper95"] = ends["lower"], ends["upper"]
    return out.reset_index(drop=True)


def _parquet(result: Any, manifest: Mapping[str, Any], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(typed_frame(result), preserve_index=False)
    meta = {
        b"safestats.marking": str(manifest.get("marking", "")).encode(),
        b"safestats.release_id": str(manifest.get("release_id", "")).encode(),
        b"safestats.result_sha256": str(manifest.get("result_sha256", "")).encode(),
    }
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}), path)


def _check_tables(folder: Path, payload: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Both tables must say exactly what result.json says: rebuilt from it and compared cell by
    cell (an edited table with fresh checksums fails here)."""
    import io

    import pyarrow.parquet as pq

    from safestats.result import result_from_payload

    result = result_from_payload(dict(payload))

    def rows(text: str) -> pd.DataFrame:
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        return pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)

    text = (folder / "table.csv").read_text()
    expected = str(result.to_csv())
    lines, wanted = text.splitlines(), expected.splitlines()
    if not lines or lines[0] != wanted[0] or lines[-1] != wanted[-1]:
        raise ReleaseError("table.csv: its marking lines differ from the release's")
    got, want = rows(text), rows(expected)
    if list(got.columns) != list(want.columns) or got.shape != want.shape:
        raise ReleaseError("table.csv: its columns or rows differ from result.json")
    for c in want.columns:
        bad = [i for i, (a, b) in enumerate(zip(got[c], want[c], strict=True)) if a != b]
        if bad:
            raise ReleaseError(
                f"table.csv: row {bad[0] + 1}, column {c} says {got[c][bad[0]]!r} but the release "
                f"says {want[c][bad[0]]!r}"
            )
    parquet = pq.read_table(folder / "table.parquet")
    meta = parquet.schema.metadata or {}
    if meta.get(b"safestats.result_sha256", b"").decode() != manifest.get("result_sha256"):
        raise ReleaseError("table.parquet: its result_sha256 differs from the manifest's")
    got_p, want_p = parquet.to_pandas(), typed_frame(result)
    if list(got_p.columns) != list(want_p.columns) or len(got_p) != len(want_p):
        raise ReleaseError("table.parquet: its columns or rows differ from result.json")
    for c in want_p.columns:
        for i, (a, b) in enumerate(zip(got_p[c].tolist(), want_p[c].tolist(), strict=True)):
            if not (_same(a, b)):
                raise ReleaseError(f"table.parquet: row {i + 1}, column {c} says {a!r} but the release says {b!r}")


def _same(a: Any, b: Any) -> bool:
    missing_a = a is None or a is pd.NA or (isinstance(a, float) and pd.isna(a))
    missing_b = b is None or b is pd.NA or (isinstance(b, float) and pd.isna(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)


def verify_offline(folder: Path | str, public_key: Any) -> dict[str, Any]:
    """Check a bundle with only the service's public key — no store, no audit log: the files
    and tables (as :func:`verify_bundle`), the service's signature over the manifest, and the
    inclusion receipt: the audit record is leaf ``i`` of a tree head the service signed."""
    import base64

    from cryptography.exceptions import InvalidSignature

    from safestats.audit.heads import Head
    from safestats.audit.tree import leaf_hash, verify_inclusion

    folder = Path(folder)
    listed, manifest = _check_contents(folder)
    signature = manifest.get("signature") or {}
    text = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True, default=str)
    try:
        public_key.verify(base64.b64decode(signature.get("ed25519", "")), text.encode())
    except (InvalidSignature, ValueError):
        raise ReleaseError(
            "manifest.json is not signed by the service's key (edited, or signed by another key)"
        ) from None
    receipt = manifest.get("receipt") or {}
    try:
        head = Head.from_dict(receipt["head"])
        proof = [base64.b64decode(p) for p in receipt["proof"]]
        index = int(receipt["leaf_index"])
    except (KeyError, TypeError, ValueError):
        raise ReleaseError("manifest.json carries no inclusion receipt") from None
    if not head.verify(public_key):
        raise ReleaseError("the receipt's tree head is not signed by the service's key")
    record_hash = manifest["audit"]["record_hash"]
    if (
        receipt.get("record_hash") != record_hash
        or index != int(manifest["audit"]["seq"]) - 1
        or not verify_inclusion(leaf_hash(record_hash), index, head.size, proof, head.root)
    ):
        raise ReleaseError("the receipt does not prove the audit record is in the signed log")
    return {
        "release_id": manifest["release_id"],
        "audit_seq": index + 1,
        "files": len(listed),
        "tree_size": head.size,
        "key_id": head.key_id,
    }


def _check_contents(folder: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """What needs no key and no store: the files against their checksums, result.json against
    the manifest's digest, both tables against result.json. Returns the listing and manifest."""
    listed = _check_files(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    payload = json.loads((folder / "result.json").read_text())
    if result_digest(payload) != manifest.get("result_sha256"):
        raise ReleaseError("result.json does not match the manifest's result_sha256")
    _check_tables(folder, payload, manifest)
    for name, digest in (manifest.get("files") or {}).items():
        if listed.get(name) != digest:
            raise ReleaseError(f"{name} differs from the SHA-256 the manifest lists for it")
    notebook = manifest.get("notebook") or {}
    if notebook.get("sha256") and listed.get("notebook.ipynb") != notebook["sha256"]:
        raise ReleaseError("notebook.ipynb is not the notebook the manifest names (its SHA-256 differs)")
    return listed, manifest


def _check_files(folder: Path) -> dict[str, str]:
    """Every file against ``checksums.sha256``, and no file unlisted; returns the listing."""
    sums = folder / "checksums.sha256"
    if not folder.is_dir() or not sums.is_file():
        raise ReleaseError(f"{folder} is not a release bundle (no checksums.sha256)")
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            listed[name.strip()] = digest.strip()
    for name in BUNDLE_FILES:
        if name not in listed:
            raise ReleaseError(f"{name} is missing from the bundle's checksums")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise ReleaseError(f"{name} is listed in checksums.sha256 but missing from the bundle")
        if sha256_file(path) != digest:
            raise ReleaseError(f"{name} does not match its checksum: the file was changed after the release")
    extra = sorted(f.name for f in folder.iterdir() if f.name not in listed and f.name != "checksums.sha256")
    if extra:
        raise ReleaseError(f"{', '.join(extra)} not listed in checksums.sha256: not part of the release")
    return listed


#: Manifest fields that must equal the audit record's (manifest key -> record key).
AUDITED = {
    "user": "user",
    "query_hash": "query_hash",
    "snapshot_id": "snapshot_id",
    "label": "label",
    "released_utc": "time_utc",
    "dataset": "dataset",
}


def verify_bundle(folder: Path | str, *, audit: Any, store: ReleaseStore) -> dict[str, Any]:
    """Check a bundle: every file against ``checksums.sha256`` (and no file unlisted), the
    result against the manifest's digest, the audit log (it must verify), the manifest against
    its audit record, and the release against the store. Raises ReleaseError naming what fails."""
    folder = Path(folder)
    listed, manifest = _check_contents(folder)
    report = audit.verify()
    if not report.ok:
        raise ReleaseError(f"the audit log does not verify ({report}); no release can be vouched for")
    seq = int(manifest["audit"]["seq"])
    record = audit.record(seq)
    if record is None:
        raise ReleaseError(f"manifest.json names audit record {seq}, which is not in the audit log")
    if record.get("record_hash") != manifest["audit"].get("record_hash"):
        raise ReleaseError(f"manifest.json: audit record {seq}'s hash differs from the log's")
    if record.get("outcome") != "released":
        raise ReleaseError(f"audit record {seq} is not a release (outcome {record.get('outcome')})")
    for key, field in AUDITED.items():
        if manifest.get(key) != record.get(field):
            raise ReleaseError(
                f"manifest.json: {key} is {manifest.get(key)!r} but audit record {seq} says {record.get(field)!r}"
            )
    if (record.get("disclosure") or {}).get("result_sha256") != manifest.get("result_sha256"):
        raise ReleaseError(f"manifest.json: result_sha256 differs from audit record {seq}'s")
    if record.get("query", {}).get("aggregates") != manifest["query"].get("aggregates"):
        raise ReleaseError(f"manifest.json: the query differs from audit record {seq}'s")
    stored = store.get(manifest["release_id"])
    if stored is None:
        raise ReleaseError(f"release {manifest['release_id']} is not listed in the service's store")
    if stored["manifest"] != manifest:
        raise ReleaseError(f"manifest.json differs from the manifest the store holds for {manifest['release_id']}")
    return {"release_id": manifest["release_id"], "audit_seq": seq, "files": len(listed), "log_records": report.records}
