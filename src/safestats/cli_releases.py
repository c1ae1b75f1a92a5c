"""``safestats releases``: save, list, show, export, verify, reproduce and re-run releases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["releases"]


def _settings(ctx: click.Context) -> Any:
    from safestats.cli import _settings as settings

    return settings(ctx)


def _service(ctx: click.Context) -> Any:
    from safestats.cli import _service as service

    return service(ctx)


@click.group()
def releases() -> None:
    """Release bundles: save, list, show, export, verify and reproduce released aggregates."""


_as_user = click.option("--user", default=None, help="Act as this user [default: the user setting].")


def _identity(ctx: click.Context, service: Any, user: str | None) -> Any:
    return service.identity(user or _settings(ctx).user, interaction="ad hoc")


@releases.command("list")
@click.option("--all", "everyone", is_flag=True, help="Every user's releases (the data owner's view).")
@_as_user
@click.pass_context
def releases_list(ctx: click.Context, everyone: bool, user: str | None) -> None:
    """List releases: id, name, user, audit record, time."""
    service = _service(ctx)
    rows = service.releases(identity=_identity(ctx, service, user), everyone=everyone)["rows"]
    for r in rows:
        click.echo(f"{r['id']:<24} {r['user']:<20} record {r['audit_seq']:<7} {r['time_utc'][:19]}  {r['name']}")
    if not rows:
        click.echo("no releases", err=True)


@releases.command("show")
@click.argument("release_id")
@_as_user
@click.pass_context
def releases_show(ctx: click.Context, release_id: str, user: str | None) -> None:
    """Print a release's manifest (JSON)."""
    import json

    service = _service(ctx)
    manifest = service.release(identity=_identity(ctx, service, user), release_id=release_id)["manifest"]
    click.echo(json.dumps(manifest, indent=2, sort_keys=True))


@releases.command("save")
@click.argument("audit_id", type=int)
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Bundle folder [default: releases/NAME].")
@click.option("--notebook", default=None, help="The notebook that made the result.")
@_as_user
@click.pass_context
def releases_save(
    ctx: click.Context, audit_id: int, name: str, out: Path | None, notebook: str | None, user: str | None
) -> None:
    """Save the released result of AUDIT_ID (yours) as release NAME and write its bundle."""
    from safestats.client.session import _notebook_file
    from safestats.dataset import sha256_file
    from safestats.releases import write_bundle

    service = _service(ctx)
    source = _notebook_file(notebook)
    digest = sha256_file(source) if source else None
    saved = service.save_release(
        identity=_identity(ctx, service, user), audit_id=audit_id, name=name, notebook=notebook, notebook_sha256=digest
    )
    folder = write_bundle(out or Path("releases") / name, saved["manifest"], saved["payload"], notebook=source)
    click.echo(f"release {saved['manifest']['release_id']} written to {folder}")


@releases.command("export")
@click.argument("release_id")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@click.pass_context
def releases_export(ctx: click.Context, release_id: str, out: Path) -> None:
    """Write the bundle of a stored release (the data owner's copy)."""
    from safestats.client.session import _notebook_file
    from safestats.errors import ReleaseError
    from safestats.releases import write_bundle

    service = _service(ctx)
    found = service.results.get(release_id)
    if found is None:
        raise ReleaseError(f"no release {release_id!r}; see safestats releases list --all")
    kept = service.results.result(int(found["audit_seq"]))
    if kept is None:
        raise ReleaseError(f"the result of release {release_id} is not kept in this store")
    manifest = found["manifest"]
    nb = (manifest.get("notebook") or {}).get("path")
    folder = write_bundle(out, manifest, kept[1], notebook=_notebook_file(nb))
    click.echo(f"release {release_id} written to {folder}")


@releases.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify offline with only the service's public key: no store, no audit log.",
)
@click.option(
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The age identity file that opens a .zip.age bundle (a .zip one asks for its password, "
    "or reads SAFESTATS_EXPORT_PASSWORD).",
)
@click.pass_context
def releases_verify(ctx: click.Context, path: Path, public_key: Path | None, identity: Path | None) -> None:
    """Check a bundle (a folder, or the protected archive of an OFFICIAL-SENSITIVE one):
    checksums, both tables against result.json, the audit log and its record, the store's
    listing — or, with --public-key, the service's signature and inclusion receipt."""
    from safestats.releases import opened_bundle, verify_bundle, verify_offline

    environ = ctx.obj["environ"]
    with opened_bundle(path, password=environ.get("SAFESTATS_EXPORT_PASSWORD"), identity_file=identity) as folder:
        if public_key is not None:
            from safestats.audit.heads import load_public_key

            done = verify_offline(folder, load_public_key(public_key))
            click.echo(
                f"ok: release {done['release_id']}: {done['files']} files and both tables match result.json; "
                f"manifest signed by key {done['key_id']}; audit record {done['audit_seq']} is in the signed "
                f"log of {done['tree_size']} records"
            )
            return
        service = _service(ctx)
        done = verify_bundle(folder, audit=service.audit, store=service.results)
    click.echo(
        f"ok: release {done['release_id']}: {done['files']} files match their checksums; "
        f"audit record {done['audit_seq']} matches the manifest in a log of {done['log_records']} "
        "verified records"
    )


@releases.command("reproduce")
@click.argument("release_id")
@_as_user
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the reproduced table (CSV).")
@click.option("--unencrypted", is_flag=True, help="Write an OFFICIAL-SENSITIVE table to --out in clear (audited).")
@click.pass_context
def releases_reproduce(
    ctx: click.Context, release_id: str, user: str | None, out: Path | None, unencrypted: bool
) -> None:
    """Reproduce a release: sdc re-runs it (identical or not), dp returns the stored release."""
    from safestats.errors import ReleaseError
    from safestats.result import result_from_payload

    service = _service(ctx)
    identity = _identity(ctx, service, user)
    report = service.reproduce(identity=identity, release_id=release_id)
    m = report["matches"]
    click.echo(f"release {release_id} ({report['mode']}): {report['how']}")
    click.echo(f"  query {m['query_hash'][:16]}  snapshot {m['snapshot_id'][:16]}  catalog {m['catalog_sha256'][:16]}")
    if out is not None:
        from safestats.exports import ExportPolicy, prepare_output

        result = result_from_payload(report["payload"])
        meta = report["payload"]["meta"]
        prepared = prepare_output(
            out,
            str(result.to_csv()),
            marking=result.marking,
            caveat=result.provenance.caveat,
            policy=ExportPolicy.from_meta(meta.get("export")) if meta.get("export") else service.policy.exports,
            protect=result.label != service.catalog.classifications[0],
            unencrypted=unencrypted,
            environ=ctx.obj["environ"],
        )
        if prepared.protection != "clear":  # audited before the file exists
            service.audit_admin(
                identity.user,
                "export",
                f"reproduced release {release_id} written to {prepared.target!s} ({prepared.protection})",
            )
        prepared.write()
    if not report["identical"]:
        raise ReleaseError(f"release {release_id} reproduced DIFFERENT output")
    click.echo("  identical to the release")


@releases.command("rerun")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="The executed notebook [default: PATH/rerun.ipynb]."
)
@click.pass_context
def releases_rerun(ctx: click.Context, path: Path, out: Path | None) -> None:
    """Run the notebook that made a release, with its parameters, against the synthetic census
    (same code, different data): embedded service, configured data_dir."""
    import json

    import papermill as pm

    from safestats.errors import ReleaseError
    from safestats.reports.runner import kernel_environment

    manifest = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else None
    if manifest is None or not (path / "notebook.ipynb").is_file():
        raise ReleaseError(f"{path} holds no notebook.ipynb: the release was not made by a notebook safestats knew")
    settings = _settings(ctx)
    params = (manifest.get("notebook") or {}).get("parameters") or {}
    # never inside the bundle: what the notebook writes would make the bundle fail to verify
    out = (out or path.parent / f"{path.name}-rerun" / "rerun.ipynb").resolve()
    if path.resolve() in out.parents:
        raise ReleaseError(f"--out {out} is inside the bundle; write the re-run elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "SAFESTATS_DATA_DIR": str(settings.data_dir),
        "SAFESTATS_STORE_URL": settings.store_url,
        "SAFESTATS_OUTPUT_CHECKING_DIR": settings.output_checking_dir,
        "MPLBACKEND": "Agg",
    }
    with kernel_environment(env):
        pm.execute_notebook(
            str(path / "notebook.ipynb"),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(out.parent),
        )
    click.echo(f"ran {manifest['notebook']['path']} with {params} on {settings.data_dir}: {out}")
