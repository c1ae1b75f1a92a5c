"""Encryption of the census at rest: Parquet modular encryption under keys the service holds.

Envelope encryption, as a KMS does it:

- each Parquet file is encrypted (footer and every column, AES-256-GCM: Parquet's
  ``AES_GCM_V1``) with a **data key** (DEK) of its own, drawn by Arrow when the file is written;
- each data key is stored in the manifest **wrapped** (AES-256-GCM) by the **key-encryption
  key** (KEK), which never sits in the census folder: a file (``census_kek_file``, mode 0600) or
  the ``SAFESTATS_CENSUS_KEK`` variable (base64), as a KMS would hand it over;
- the file's footer names its key by reference only (``safestats:<file>``), so rotating the KEK
  re-wraps the data keys in the manifest and leaves every file — and the snapshot id, which is
  the files' checksums — unchanged.

The wrapped keys are bound (AES-GCM associated data) to their file name and to the KEK's id, so
a data key moved to another file, or a manifest edited to point at another KEK, does not unwrap.
The census files alone, or with the manifest, are unreadable without the KEK: a test asserts no
plaintext value appears in their bytes.

Arrow writes and reads the files (a KMS client that unwraps from the manifest). The DuckDB
engine has each file decrypted once, at start, into anonymous memory (``memfd_create``) and
reads that at the plain file's speed; where there is no ``memfd_create`` (not Linux) it scans
the files through Arrow's decryption instead, several times slower. DuckDB 2.0's own reader
(``PRAGMA add_parquet_key``) was tried and is not used: it reads Arrow-encrypted files only
without a filter ("Computed AES tag differs" with any ``WHERE``), and writing needs the httpfs
extension's OpenSSL, which an offline service lacks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safestats.errors import ConfigError, DataError

__all__ = ["KEK_ENV", "SCHEME", "CensusKeys", "KeyEncryptionKey", "load_kek", "new_kek_file"]

KEK_ENV = "SAFESTATS_CENSUS_KEK"
SCHEME = "parquet-modular-encryption/AES_GCM_V1"
_REF = "safestats:"


@dataclass(frozen=True)
class KeyEncryptionKey:
    """256 random bits, known by an id (a hash of the key) the manifest records."""

    key: bytes = field(repr=False)
    source: str

    @property
    def id(self) -> str:
        return hashlib.sha256(b"safestats-census-kek:" + self.key).hexdigest()[:16]


def _decode_kek(text: bytes, source: str) -> KeyEncryptionKey:
    raw = text.strip()
    if len(raw) != 32:
        try:
            raw = base64.b64decode(raw, validate=True)
        except ValueError:
            raise ConfigError(f"{source}: not a key-encryption key (32 bytes, or their base64)") from None
    if len(raw) != 32:
        raise ConfigError(f"{source}: a key-encryption key is 32 bytes (256 bits); this one is {len(raw)}")
    return KeyEncryptionKey(raw, source)


def load_kek(kek_file: str | Path = "", environ: Mapping[str, str] | None = None) -> KeyEncryptionKey | None:
    """The KEK from ``kek_file`` (when given) or the ``SAFESTATS_CENSUS_KEK`` variable; None when
    neither is set."""
    if kek_file:
        path = Path(kek_file)
        try:
            return _decode_kek(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise ConfigError(f"{path}: key-encryption key file not found") from None
        except PermissionError:
            raise ConfigError(f"{path}: cannot read the key-encryption key (permission denied)") from None
    env = os.environ if environ is None else environ
    if env.get(KEK_ENV):
        return _decode_kek(env[KEK_ENV].encode(), KEK_ENV)
    return None


def new_kek_file(path: Path) -> KeyEncryptionKey:
    """Write a fresh KEK (base64, mode 0600) to ``path``; never over an existing file."""
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a key-encryption key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
    return KeyEncryptionKey(key, str(path))


def _codec(meta: Any) -> str:
    """The compression a Parquet file was written with, as Arrow's writer names it."""
    codec = str(meta.row_group(0).column(0).compression).lower() if meta.num_row_groups else "zstd"
    return "none" if codec == "uncompressed" else codec


def _aad(file: str, kek: KeyEncryptionKey) -> bytes:
    return f"safestats-census-dek:{file}:{kek.id}".encode()


class CensusKeys:
    """The data keys of one census, wrapped by one KEK (the manifest's ``encryption`` section)."""

    def __init__(self, kek: KeyEncryptionKey, wrapped: Mapping[str, str] | None = None) -> None:
        self.kek = kek
        self.wrapped: dict[str, str] = dict(wrapped or {})

    # --- the manifest section ------------------------------------------------------------------

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], kek: KeyEncryptionKey | None, where: str) -> CensusKeys | None:
        """The keys of an encrypted census (None when it is not encrypted); a clear error when the
        KEK is missing or is not the one that wrapped them."""
        section = manifest.get("encryption")
        if not section:
            return None
        if section.get("scheme") != SCHEME:
            raise DataError(f"the census at {where} uses encryption {section.get('scheme')!r}, not {SCHEME}")
        if kek is None:
            raise DataError(
                f"the census at {where} is encrypted: give the service its key-encryption key "
                f"(the census_kek_file setting, or {KEK_ENV})"
            )
        if section.get("kek_id") != kek.id:
            raise DataError(
                f"the census at {where} was encrypted under key {section.get('kek_id')}; "
                f"{kek.source} holds key {kek.id}"
            )
        return cls(kek, section.get("data_keys", {}))

    def section(self) -> dict[str, Any]:
        return {"scheme": SCHEME, "kek_id": self.kek.id, "data_keys": dict(sorted(self.wrapped.items()))}

    # --- wrapping -------------------------------------------------------------------------------

    def _wrap(self, file: str, dek: bytes, kek: KeyEncryptionKey | None = None) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kek = kek or self.kek
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + AESGCM(kek.key).encrypt(nonce, dek, _aad(file, kek))).decode()

    def data_key(self, file: str) -> bytes:
        """The unwrapped data key of ``file`` (held in memory by the engine only)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = base64.b64decode(self.wrapped[file])
        except KeyError:
            raise DataError(f"the census manifest has no data key for {file}") from None
        try:
            return AESGCM(self.kek.key).decrypt(raw[:12], raw[12:], _aad(file, self.kek))
        except InvalidTag:
            raise DataError(f"the data key of {file} does not unwrap under {self.kek.source}") from None

    def rewrapped(self, new: KeyEncryptionKey) -> CensusKeys:
        """The same data keys wrapped by ``new`` (key rotation: the files do not change)."""
        if new.id == self.kek.id:
            raise ConfigError("the new key-encryption key is the one in use")
        out = CensusKeys(new)
        out.wrapped = {f: out._wrap(f, self.data_key(f), new) for f in self.wrapped}
        return out

    # --- Arrow ----------------------------------------------------------------------------------

    def _crypto_factory(self) -> Any:
        import pyarrow.parquet.encryption as pe

        keys = self

        class _Kms(pe.KmsClient):  # the footer holds a reference; the manifest the key
            def __init__(self, _config: Any) -> None:
                super().__init__()

            def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
                keys.wrapped[master_key_identifier] = keys._wrap(master_key_identifier, bytes(key_bytes))
                return _REF + master_key_identifier

            def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
                if wrapped_key != _REF + master_key_identifier:
                    raise DataError(f"{master_key_identifier}: not a safestats data-key reference")
                return keys.data_key(master_key_identifier)

        return pe.CryptoFactory(lambda config: _Kms(config))

    def encryption_properties(self, file: str) -> Any:
        """Arrow's properties to write ``file`` encrypted under a fresh data key of its own."""
        import pyarrow.parquet.encryption as pe

        config = pe.EncryptionConfiguration(
            footer_key=file,
            uniform_encryption=True,
            double_wrapping=False,
            data_key_length_bits=256,
        )
        return self._crypto_factory().file_encryption_properties(pe.KmsConnectionConfig(), config)

    def decrypt_to_memory(self, path: Path) -> int:
        """Decrypt ``path`` once into anonymous memory (``memfd_create``: a file with no name in any
        filesystem, freed when its last descriptor closes) and return the descriptor; DuckDB
        reads it as ``/proc/self/fd/N`` at the speed of a plain file. The plaintext is in the
        service's memory, as its engine's buffers are, never on a disk."""
        import pyarrow.parquet as pq

        fd = os.memfd_create(f"safestats-{path.name}", os.MFD_CLOEXEC)
        try:
            source = pq.ParquetFile(path, decryption_properties=self.decryption_properties())
            meta = source.metadata
            with (
                os.fdopen(os.dup(fd), "wb") as f,
                pq.ParquetWriter(f, source.schema_arrow, compression=_codec(meta)) as w,
            ):
                for i in range(meta.num_row_groups):
                    w.write_table(source.read_row_group(i))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def arrow_dataset(self, path: Path) -> Any:
        """An Arrow dataset over the encrypted ``path`` that decrypts as it scans (DuckDB scans it
        with projection and filter pushdown)."""
        import pyarrow.dataset as ds
        import pyarrow.parquet.encryption as pe

        config = ds.ParquetDecryptionConfig(
            self._crypto_factory(), pe.KmsConnectionConfig(), pe.DecryptionConfiguration()
        )
        options = ds.ParquetFragmentScanOptions(decryption_config=config)
        return ds.dataset(str(path), format=ds.ParquetFileFormat(default_fragment_scan_options=options))

    def decryption_properties(self) -> Any:
        import pyarrow.parquet.encryption as pe

        return self._crypto_factory().file_decryption_properties(pe.KmsConnectionConfig(), pe.DecryptionConfiguration())


# --- whole-census operations (the `safestats census` commands) ---------------------------------


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    import json

    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / "manifest.json")


def encrypt_census(folder: Path, kek: KeyEncryptionKey) -> dict[str, Any]:
    """Encrypt a plain census in place: each Parquet file rewritten under a data key of its own
    (row group by row group, same compression), then the manifest's checksums and key section.

    The plaintext files are replaced, not overwritten block by block: their disk blocks are freed
    as by ``rm``. Encrypt where the census is made (``safestats synth --encrypt`` never writes
    plaintext), or on an encrypted volume.
    """
    import pyarrow.parquet as pq

    from safestats.dataset import read_manifest, sha256_file

    manifest = read_manifest(folder)
    pending = sorted(folder.glob(".*.parquet.encrypting"))
    if manifest.get("encryption") and pending:  # a run stopped after its manifest: finish it
        for tmp in pending:
            os.replace(tmp, folder / tmp.name.removeprefix(".").removesuffix(".encrypting"))
        return manifest
    if manifest.get("encryption"):
        raise ConfigError(f"the census at {folder} is already encrypted (rotate its key with `census rotate-key`)")
    keys = CensusKeys(kek)
    files = dict(manifest["files"])
    written: list[tuple[Path, Path]] = []
    try:
        for name in sorted(files):
            if not name.endswith(".parquet"):
                continue
            source = folder / name
            tmp = folder / f".{name}.encrypting"
            written.append((tmp, source))
            plain = pq.ParquetFile(source)
            with pq.ParquetWriter(
                tmp,
                plain.schema_arrow,
                compression=_codec(plain.metadata),
                encryption_properties=keys.encryption_properties(name),
            ) as writer:
                for i in range(plain.metadata.num_row_groups):
                    writer.write_table(plain.read_row_group(i))
            files[name] = {**files[name], "sha256": sha256_file(tmp)}
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    # the data keys are on disk (the manifest) before any plain file is replaced: a run stopped
    # in between loses nothing, and running `census encrypt` again finishes the replacements
    manifest = {**manifest, "files": files, "encryption": keys.section()}
    _write_manifest(folder, manifest)
    for tmp, source in written:
        os.replace(tmp, source)
    return manifest


def rotate_census_key(folder: Path, old: KeyEncryptionKey, new: KeyEncryptionKey) -> dict[str, Any]:
    """Re-wrap the census's data keys under ``new``; the files (and the snapshot id) are unchanged."""
    from safestats.dataset import read_manifest

    manifest = read_manifest(folder)
    keys = CensusKeys.from_manifest(manifest, old, str(folder))
    if keys is None:
        raise ConfigError(f"the census at {folder} is not encrypted (encrypt it with `census encrypt`)")
    manifest = {**manifest, "encryption": keys.rewrapped(new).section()}
    _write_manifest(folder, manifest)
    return manifest
