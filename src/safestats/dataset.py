"""The census store on disk: its manifest, its files and their integrity.

The store is read-only to safestats. Its identity (the *snapshot id*) is the SHA-256 of the
manifest's file list, so any change to any file changes the snapshot id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safestats.errors import DataError

if TYPE_CHECKING:
    from safestats.census_keys import CensusKeys, KeyEncryptionKey

__all__ = ["Dataset", "open_dataset", "read_manifest", "sha256_file"]


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(data_dir: Path | str) -> dict[str, Any]:
    """The manifest of a generated census, or a clear error if there is none."""
    path = Path(data_dir) / "manifest.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DataError(f"no census at {data_dir} (no manifest.json); generate one with `safestats synth`") from None
    except PermissionError:
        raise DataError(
            f"cannot read the census at {data_dir}: permission denied (only the safestats service can; "
            "connect to it with ss.connect(URL))"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None


@dataclass(frozen=True)
class Dataset:
    path: Path
    manifest: dict[str, Any]
    keys: CensusKeys | None = None  # the data keys of an encrypted census, when its KEK was given

    @property
    def encrypted(self) -> bool:
        return bool(self.manifest.get("encryption"))

    def decryption(self) -> CensusKeys | None:
        """The keys an engine reads the files with (None: the files are plain); a clear error for
        an encrypted census opened without its key-encryption key."""
        if not self.encrypted:
            return None
        if self.keys is None:
            from safestats.census_keys import CensusKeys

            CensusKeys.from_manifest(self.manifest, None, str(self.path))  # raises: no KEK
        return self.keys

    @property
    def snapshot_id(self) -> str:
        files = json.dumps(self.manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(files).hexdigest()

    def table_path(self, table: str) -> Path:
        name = f"{table}.parquet"
        if name not in self.manifest["files"]:
            raise DataError(f"the census at {self.path} has no file for table {table}")
        return self.path / name

    def verify(self) -> list[str]:
        """Problems found comparing the files with the manifest (empty when all is well)."""
        problems = []
        for name, info in sorted(self.manifest["files"].items()):
            file = self.path / name
            if not file.exists():
                problems.append(f"{name}: missing")
            elif sha256_file(file) != info["sha256"]:
                problems.append(f"{name}: SHA-256 differs from the manifest")
        return problems

    def summary(self) -> str:
        """A human summary of the census, from its manifest."""
        m = self.manifest
        lines = [
            f"School census ({m['dataset']}) at {self.path}",
            f"  scale {m['scale']}, seed {m['seed']}, generator version {m['generator_version']}",
            f"  {m['local_authorities']} local authorities, {m['schools']:,} schools, "
            f"{m['pupils']:,} pupils on roll in autumn",
            f"  snapshot {self.snapshot_id[:16]}"
            + (f", encrypted at rest (AES-256-GCM, key {m['encryption'].get('kek_id')})" if self.encrypted else ""),
            "",
            f"  {'table':<34}" + "".join(f"{t:>14}" for t in m["terms"]),
        ]
        for table, by_term in m["row_counts"].items():
            lines.append(f"  {table:<34}" + "".join(f"{by_term[t]:>14,}" for t in m["terms"]))
        lines += ["", "  injected quality problems (rates):"]
        lines += [f"    {k:<26} {v}" for k, v in m["quality_rates"].items()]
        return "\n".join(lines)


def open_dataset(path: Path | str, kek: KeyEncryptionKey | None = None) -> Dataset:
    """Open the census at ``path``; a clear error if it is missing or incomplete, or if ``kek`` is
    not the key its data keys were wrapped with."""
    path = Path(path)
    manifest = read_manifest(path)
    for key in ("files", "row_counts", "terms", "dataset"):
        if key not in manifest:
            raise DataError(f"{path / 'manifest.json'} lacks {key!r}; regenerate the census")
    keys = None
    if kek is not None and manifest.get("encryption"):
        from safestats.census_keys import CensusKeys

        keys = CensusKeys.from_manifest(manifest, kek, str(path))
    return Dataset(path=path, manifest=manifest, keys=keys)


def is_synthetic(dataset: Dataset) -> bool:
    """Whether the census is safestats' synthetic one (its manifest says ``synthetic: true``,
    as the generator writes it). Embedded mode opens nothing else."""
    return dataset.manifest.get("synthetic") is True
