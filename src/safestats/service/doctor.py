"""``safestats doctor``: what is wrong with a deployment, before an analyst finds out.

Each check gives ``ok``, ``warn`` or ``FAIL`` and a line saying what it saw. The doctor reads;
it creates nothing — no key, no store, no audit record (a missing key or store is reported, not
made) — so it can be run beside a live service, as the service's user.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from safestats.config import Settings

__all__ = ["Finding", "diagnose"]


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warn" or "FAIL"
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.level:<4}  {self.check:<11} {self.detail}"


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _others_can_read(path: Path) -> bool:
    mode = path.stat().st_mode
    return bool(mode & (stat.S_IROTH | stat.S_IXOTH)) if path.is_dir() else bool(mode & stat.S_IROTH)


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    db = url.removeprefix("sqlite:///").removeprefix("file:").split("?")[0]
    return None if db in ("", ":memory:") else Path(db)


def diagnose(settings: Settings, *, engine: bool = True) -> list[Finding]:
    """Every check, in order; the caller prints them and fails on any ``FAIL``."""
    return list(_checks(settings, engine=engine))


def _checks(settings: Settings, *, engine: bool) -> Iterator[Finding]:
    from safestats.dataset import is_synthetic, open_dataset
    from safestats.errors import SafestatsError
    from safestats.service.boundary import exposed

    if os.geteuid() == 0:
        yield Finding("warn", "user", "running as root: run the service as its own user (docs/deployment.md)")
    else:
        yield Finding("ok", "user", f"uid {os.geteuid()}")

    # the census: present, matching its manifest, private unless synthetic
    dataset = None
    try:
        dataset = open_dataset(settings.data_dir)
    except SafestatsError as e:
        yield Finding("FAIL", "census", e.message)
    if dataset is not None:
        problems = dataset.verify()
        synthetic = is_synthetic(dataset)
        kind = "synthetic" if synthetic else "real (not synthetic)"
        if problems:
            yield Finding(
                "FAIL", "census", f"{kind}; {problems[0]}" + (f" (+{len(problems) - 1})" if problems[1:] else "")
            )
        else:
            yield Finding("ok", "census", f"{kind}, {len(dataset.manifest['files'])} files match the manifest")
        folder = Path(dataset.path)
        open_files = exposed([folder, *sorted(folder.iterdir())])
        if open_files and not synthetic:
            yield Finding("FAIL", "census", "readable by other users: " + "; ".join(open_files[:3]))
        elif open_files:
            yield Finding("warn", "census", "readable by other users (allowed only because it is synthetic)")

    # the keys: present and private (the doctor never creates one)
    for name, file in (("secret key", settings.secret_key_file), ("signing key", settings.signing_key_file)):
        path = Path(file)
        if not path.exists():
            yield Finding("warn", "keys", f"{name} {path} does not exist yet (the service creates it at first start)")
        elif _others_can_read(path):
            yield Finding("FAIL", "keys", f"{name} {path} is readable by other users (chmod 600)")
        else:
            yield Finding("ok", "keys", f"{name} {path} is private")

    # the store: reachable, at the latest schema; the audit log verifies
    yield from _store(settings)

    # TLS: required off loopback; the pair loads; not expired
    yield from _tls(settings)

    if engine and dataset is not None:
        try:
            from safestats.engines import create_engine

            create_engine(settings.engine, dataset, settings).ping()
            yield Finding("ok", "engine", f"{settings.engine} opens the census and answers")
        except Exception as e:  # noqa: BLE001 - report any failure
            yield Finding("FAIL", "engine", f"{settings.engine}: {type(e).__name__}: {str(e)[:200]}")


def _store(settings: Settings) -> Iterator[Finding]:
    import sqlalchemy as sa

    from safestats.store.migrations import MIGRATIONS, schema_version

    file = _sqlite_file(settings.store_url)
    if file is not None and not file.exists():
        yield Finding("warn", "store", f"no store at {file} yet (the service creates it at first start)")
        return
    if file is not None and _others_can_read(file):
        yield Finding("FAIL", "store", f"{file} is readable by other users (it holds the audit log; chmod 600)")
    try:
        engine = sa.create_engine(settings.store_url)
        version = schema_version(engine)
    except Exception as e:  # noqa: BLE001
        yield Finding("FAIL", "store", f"cannot reach {settings.store_url.split('@')[-1]}: {type(e).__name__}")
        return
    latest = max(n for n, _, _ in MIGRATIONS)
    if version != latest:
        yield Finding("FAIL", "store", f"schema version {version}, this safestats needs {latest} (start it once)")
        return
    yield Finding("ok", "store", f"schema version {version}")
    key_file = Path(settings.secret_key_file)
    if not key_file.exists():
        return
    from safestats.audit.heads import load_public_key
    from safestats.audit.log import AuditLog

    public = Path(settings.signing_key_file + ".pub")
    log = AuditLog(
        engine,
        key=bytes.fromhex(key_file.read_text().strip()),
        public_key=load_public_key(public) if public.exists() else None,
    )
    report = log.verify()
    yield Finding("ok" if report.ok else "FAIL", "audit log", str(report))


def _tls(settings: Settings) -> Iterator[Finding]:
    if not settings.tls_cert:
        if _loopback(settings.host):
            yield Finding("ok", "tls", f"off; serving on loopback {settings.host} (put TLS in front, e.g. nginx)")
        else:
            yield Finding(
                "FAIL", "tls", f"serving on {settings.host} without TLS: tokens would cross the network clear"
            )
        return
    import ssl

    from cryptography import x509

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as e:
        yield Finding("FAIL", "tls", f"certificate and key do not load as a pair: {e}")
        return
    if _others_can_read(Path(settings.tls_key)):
        yield Finding("FAIL", "tls", f"{settings.tls_key} is readable by other users (chmod 600)")
    cert = x509.load_pem_x509_certificate(Path(settings.tls_cert).read_bytes())
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        yield Finding("FAIL", "tls", f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    elif left.days < 30:
        yield Finding("warn", "tls", f"certificate expires in {left.days} days")
    else:
        yield Finding("ok", "tls", f"certificate valid until {cert.not_valid_after_utc:%Y-%m-%d}")
