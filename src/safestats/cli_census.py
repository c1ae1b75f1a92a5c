"""``safestats census``: the census store's summary, integrity and encryption at rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["census"]


def _settings(ctx: click.Context, **overrides: Any) -> Any:
    from safestats.cli import _settings as settings

    return settings(ctx, **overrides)


def _kek(ctx: click.Context, kek_file: Path | None) -> Any:
    from safestats.census_keys import KEK_ENV, load_kek
    from safestats.errors import ConfigError

    kek = load_kek(kek_file or _settings(ctx).census_kek_file, ctx.obj["environ"])
    if kek is None:
        raise ConfigError(
            f"no key-encryption key: give --kek-file, the census_kek_file setting or {KEK_ENV} "
            "(make one with `safestats census new-kek FILE`)"
        )
    return kek


def _audit(ctx: click.Context, folder: Path, kek_file: Path | None, reason: str) -> None:
    """The data owner's act, in the audit log of the service that serves ``folder``."""
    import getpass

    from safestats.service.pipeline import Service

    overrides: dict[str, Any] = {"data_dir": folder}
    if kek_file:
        overrides["census_kek_file"] = str(kek_file)
    Service(_settings(ctx, **overrides)).audit_admin(f"data owner ({getpass.getuser()})", "admin", reason)


@click.group()
def census() -> None:
    """Look at the census store: its summary, the integrity of its files, their encryption."""


_data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, help="Census folder [default: the data_dir setting]."
)
_kek_option = click.option(
    "--kek-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Key-encryption key file [default: the census_kek_file setting, then SAFESTATS_CENSUS_KEK].",
)


@census.command("summary")
@_data_dir_option
@click.pass_context
def census_summary(ctx: click.Context, data_dir: Path | None) -> None:
    """Print what the census holds, from its manifest (no data is read)."""
    from safestats.dataset import open_dataset

    click.echo(open_dataset(data_dir or _settings(ctx).data_dir).summary())


@census.command("verify")
@_data_dir_option
@click.pass_context
def census_verify(ctx: click.Context, data_dir: Path | None) -> None:
    """Check every census file against the SHA-256 in its manifest."""
    from safestats.dataset import open_dataset
    from safestats.errors import DataError

    ds = open_dataset(data_dir or _settings(ctx).data_dir)
    problems = ds.verify()
    if problems:
        raise DataError(f"the census at {ds.path} does not match its manifest: " + "; ".join(problems))
    click.echo(f"ok: {len(ds.manifest['files'])} files match the manifest (snapshot {ds.snapshot_id[:16]})")


@census.command("new-kek")
@click.argument("file", type=click.Path(path_type=Path))
def new_kek(file: Path) -> None:
    """Write a fresh key-encryption key to FILE (mode 0600; never over an existing file)."""
    from safestats.census_keys import new_kek_file

    kek = new_kek_file(file)
    click.echo(
        f"wrote key-encryption key {kek.id} to {file}: keep it apart from the census, readable by the service only"
    )


@census.command("encrypt")
@_data_dir_option
@_kek_option
@click.pass_context
def encrypt(ctx: click.Context, data_dir: Path | None, kek_file: Path | None) -> None:
    """Encrypt a plain census in place (Parquet modular encryption, a data key per file)."""
    from safestats.census_keys import encrypt_census

    folder = data_dir or _settings(ctx).data_dir
    kek = _kek(ctx, kek_file)
    manifest = encrypt_census(folder, kek)
    files = sum(1 for f in manifest["files"] if f.endswith(".parquet"))
    _audit(ctx, folder, kek_file, f"census at {folder} encrypted at rest under key {kek.id} ({files} files)")
    click.echo(f"encrypted {files} files under key {kek.id}; the service reads them with census_kek_file")


@census.command("rotate-key")
@_data_dir_option
@_kek_option
@click.option(
    "--new-kek-file", type=click.Path(path_type=Path), required=True, help="The key-encryption key to move to."
)
@click.pass_context
def rotate_key(ctx: click.Context, data_dir: Path | None, kek_file: Path | None, new_kek_file: Path) -> None:
    """Re-wrap the census's data keys under a new key-encryption key (the files do not change)."""
    from safestats.census_keys import load_kek, rotate_census_key

    folder = data_dir or _settings(ctx).data_dir
    old = _kek(ctx, kek_file)
    new = load_kek(new_kek_file)
    assert new is not None  # a file was given
    rotate_census_key(folder, old, new)
    _audit(ctx, folder, new_kek_file, f"census at {folder}: key-encryption key rotated from {old.id} to {new.id}")
    click.echo(f"data keys re-wrapped from key {old.id} to {new.id}; point census_kek_file at {new_kek_file}")
