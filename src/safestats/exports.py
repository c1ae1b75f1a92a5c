"""Protected files (Becta: files that carry IL3 data are encrypted).

An export of an OFFICIAL-SENSITIVE output — a result's CSV or HTML, a release bundle, a report
page, an audit or incident report that names users — is written as a protected archive by
default, as the policy's ``exports:`` chooses:

- ``zip`` (the default): a WinZip-AES archive, AES-256 (``pyzipper``; 7-Zip and most archive
  tools open it), with a password — the ``password=`` argument, ``SAFESTATS_EXPORT_PASSWORD``,
  or asked for (``getpass``); at least :data:`MIN_PASSWORD` characters;
- ``age``: a zip of the files encrypted with ``age`` to the policy's recipients (``pyrage``;
  X25519 public keys ``age1…``): no secret is typed, and only the recipients' identities open it.

The marking and handling caveat are on the *outside* — the zip's comment, a ``.marking.txt``
beside an age file — and inside (``MARKING.txt``). Member names and sizes of a zip are not
encrypted (the zip format); the contents are. Writing in clear needs ``unencrypted=True`` (the
CLI's ``--unencrypted``) and is audited.
"""

from __future__ import annotations

import getpass
import io
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safestats.errors import ConfigError, ExportError

__all__ = [
    "METHODS",
    "MIN_PASSWORD",
    "PASSWORD_ENV",
    "ExportPolicy",
    "open_protected",
    "protected_name",
    "PreparedOutput",
    "prepare_output",
    "resolve_password",
    "write_protected",
]

METHODS = ("zip", "age")
PASSWORD_ENV = "SAFESTATS_EXPORT_PASSWORD"
MIN_PASSWORD = 12
MARKING_FILE = "MARKING.txt"


@dataclass(frozen=True)
class ExportPolicy:
    """How protected files are written: the policy's ``exports:``, sent with every result."""

    method: str = "zip"
    recipients: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str) -> ExportPolicy:
        if raw in (None, {}):
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: exports: expected a mapping with method (and recipients for age)")
        method = raw.get("method", "zip")
        if method not in METHODS:
            raise ConfigError(f"{where}: exports: method must be one of {', '.join(METHODS)}, not {method!r}")
        recipients = tuple(str(r) for r in raw.get("recipients") or ())
        if method == "age":
            if not recipients:
                raise ConfigError(f"{where}: exports: method age needs recipients (age1… public keys)")
            from pyrage import x25519

            for r in recipients:
                try:
                    x25519.Recipient.from_str(r)
                except Exception:  # noqa: BLE001 - pyrage raises its own error types
                    raise ConfigError(f"{where}: exports: {r!r} is not an age X25519 recipient") from None
        return cls(str(method), recipients)

    def to_meta(self) -> dict[str, Any]:
        return {"method": self.method, "recipients": list(self.recipients)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> ExportPolicy:
        if not meta:
            return cls()
        return cls(str(meta.get("method", "zip")), tuple(meta.get("recipients") or ()))


def protected_name(path: Path, policy: ExportPolicy) -> Path:
    """Where a protected export of ``path`` is written: ``<name>.zip`` or ``<name>.zip.age``."""
    base = path if path.suffix == ".zip" else path.with_name(path.name + ".zip")
    return base.with_name(base.name + ".age") if policy.method == "age" else base


def resolve_password(password: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The password a zip export is written with (argument, environment, or asked for); a clear
    error when there is none or it is too short. Call it before recording the export."""
    return _password(password, environ).decode()


def _password(password: str | None, environ: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if environ is None else environ
    text = password or env.get(PASSWORD_ENV)
    if not text and sys.stdin is not None and sys.stdin.isatty():
        text = getpass.getpass("password for the protected file (it is not stored): ")
    if not text:
        raise ExportError(
            f"an OFFICIAL-SENSITIVE export is written encrypted: give password=..., set {PASSWORD_ENV}, "
            "or write it in clear with unencrypted=True (--unencrypted), which is audited"
        )
    if len(text) < MIN_PASSWORD:
        raise ExportError(f"the export password must be at least {MIN_PASSWORD} characters")
    return text.encode()


def _outside(marking: str, caveat: str) -> str:
    return f"{marking}\n{caveat}\n"


def write_protected(
    path: Path,
    files: Mapping[str, bytes],
    *,
    marking: str,
    caveat: str,
    policy: ExportPolicy,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Write ``files`` (name -> bytes) as one protected archive for ``path``; returns its path.
    Nothing is written unless the whole archive is (a temporary file, then renamed)."""
    out = protected_name(Path(path), policy)
    out.parent.mkdir(parents=True, exist_ok=True)
    label = _outside(marking, caveat)
    members = {MARKING_FILE: label.encode(), **dict(files)}
    if policy.method == "zip":
        import pyzipper

        secret = _password(password, environ)
        buf = io.BytesIO()
        with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
            z.setpassword(secret)
            z.setencryption(pyzipper.WZ_AES, nbits=256)
            for name, data in members.items():
                z.writestr(name, data)
            z.comment = label.encode()[:65535]
        data = buf.getvalue()
    else:
        from pyrage import encrypt, x25519

        plain = io.BytesIO()
        with zipfile.ZipFile(plain, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, content in members.items():
                z.writestr(name, content)
        data = encrypt(plain.getvalue(), [x25519.Recipient.from_str(r) for r in policy.recipients])
        (out.with_name(out.name + ".marking.txt")).write_text(label)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, out)
    return out


def open_protected(
    path: Path | str,
    *,
    password: str | None = None,
    identity_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """The files of a protected archive (``.zip`` with a password, ``.age`` with an identity
    file), ``MARKING.txt`` included; a clear error for a wrong key or a damaged file."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".age":
        if identity_file is None:
            raise ExportError(f"{path} is encrypted with age: give the identity file (--identity)")
        from pyrage import decrypt, x25519

        lines = [ln for ln in Path(identity_file).read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-")]
        if not lines:
            raise ExportError(f"{identity_file}: no AGE-SECRET-KEY line")
        try:
            raw = decrypt(raw, [x25519.Identity.from_str(ln) for ln in lines])
        except Exception:  # noqa: BLE001 - pyrage raises its own error types
            raise ExportError(f"{path}: not decrypted by the identity in {identity_file}") from None
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            return {n: z.read(n) for n in z.namelist()}
    import pyzipper

    secret = _password(password, environ)
    try:
        with pyzipper.AESZipFile(io.BytesIO(raw)) as z:
            z.setpassword(secret)
            return {n: z.read(n) for n in z.namelist()}
    except RuntimeError as e:
        raise ExportError(f"{path}: wrong password ({e})") from None
    except (zipfile.BadZipFile, pyzipper.BadZipFile, ValueError) as e:  # an HMAC check fails too
        raise ExportError(f"{path}: wrong password, or the archive was changed ({e})") from None


@dataclass(frozen=True)
class PreparedOutput:
    """A file about to be written: where, how it is protected (``clear``: it needs none;
    ``none``: in clear, asked for; ``zip`` or ``age``), and the write itself."""

    target: Path
    protection: str
    _write: Callable[[], object]

    def write(self) -> Path:
        self._write()
        return self.target


def prepare_output(
    out: Path,
    text: str,
    *,
    marking: str,
    caveat: str,
    policy: ExportPolicy,
    protect: bool,
    unencrypted: bool = False,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> PreparedOutput:
    """Prepare ``text`` for the file ``out``: in clear when it needs no protection or
    ``unencrypted`` was asked for, else a protected archive. The password is settled here, so
    the caller can audit the export (target and protection) *before* writing: no password, no
    record and no file; no record, no file."""
    out = Path(out)
    if not protect or unencrypted:
        return PreparedOutput(out, "none" if protect else "clear", lambda: out.write_text(text))
    secret = resolve_password(password, environ) if policy.method == "zip" else None

    def write() -> object:
        return write_protected(
            out, {out.name: text.encode()}, marking=marking, caveat=caveat, policy=policy, password=secret
        )

    return PreparedOutput(protected_name(out, policy), policy.method, write)
