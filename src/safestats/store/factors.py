"""The second factor: TOTP (RFC 6238) seeds, and the short-lived sessions a code opens.

A user enrolled by the data owner holds a TOTP seed in an authenticator app. Over the network,
a request for OFFICIAL-SENSITIVE data needs a *session*: the API token and a current code,
exchanged at ``POST /v1/session`` for a credential ``ss2_<id>_<secret>`` that expires (8 hours
by default) and can be revoked. The store keeps:

- the seed **sealed** (AES-256-GCM under a key derived from the service's secret key), so a
  copy of the store alone does not give the seeds; the last time step accepted, so a code is
  never accepted twice (replay) and a code of an earlier step is refused once a later one was
  used; the failures since the last success, and a lock-out time past ``attempts`` failures;
- each session as a random salt and the HMAC-SHA256 of its secret (never the credential), with
  its expiry and a revoked flag — as API tokens are kept (store/users.py).

Codes are 6 digits over 30-second steps (SHA-1, the authenticator apps' default), accepted for
the current step and one step either side (clock skew), never further.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable

import sqlalchemy as sa

from safestats.errors import AuthError, RateLimited, UserError
from safestats.store.db import reading, transaction
from safestats.store.schema import factors_table, sessions_table

__all__ = ["DIGITS", "STEP", "SecondFactors", "otpauth_uri", "totp"]

STEP = 30
DIGITS = 6
SKEW = 1  # steps either side of now that are accepted


def totp(seed: bytes, step: int) -> str:
    """The RFC 6238 code of ``seed`` for time step ``step`` (HMAC-SHA-1, dynamic truncation)."""
    mac = hmac.new(seed, step.to_bytes(8, "big"), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF) % 10**DIGITS
    return f"{value:0{DIGITS}d}"


def otpauth_uri(user: str, seed: bytes, issuer: str = "safestats") -> str:
    """The ``otpauth://`` URI an authenticator app enrols from (shown once, at enrolment)."""
    secret = base64.b32encode(seed).decode().rstrip("=")
    label = urllib.parse.quote(f"{issuer}:{user}")
    query = urllib.parse.urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP}
    )
    return f"otpauth://totp/{label}?{query}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


class SecondFactors:
    """Enrolment, code checks and sessions, in the service's store."""

    def __init__(
        self,
        engine: sa.Engine,
        key: bytes,
        *,
        attempts: int = 5,
        lockout_s: int = 900,
        session_hours: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self._seal_key = hmac.new(key, b"safestats second factor seal v1", hashlib.sha256).digest()
        self.attempts = attempts
        self.lockout_s = lockout_s
        self.session_hours = session_hours
        self.clock = clock

    # -- seeds ----------------------------------------------------------------------------------
    def _seal(self, user: str, seed: bytes) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        return (nonce + AESGCM(self._seal_key).encrypt(nonce, seed, user.encode())).hex()

    def _unseal(self, user: str, sealed: str) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        raw = bytes.fromhex(sealed)
        try:
            return AESGCM(self._seal_key).decrypt(raw[:12], raw[12:], user.encode())
        except InvalidTag:
            raise AuthError("this second factor cannot be read with the service's key; re-enrol") from None

    def enrol(self, user: str) -> str:
        """A new seed for ``user`` (replacing any earlier one, and ending its sessions); returns the
        ``otpauth://`` URI to show once."""
        seed = secrets.token_bytes(20)
        row = {"sealed": self._seal(user, seed), "last_step": 0, "failures": 0, "locked_until": None}
        with transaction(self.engine) as conn:
            done = conn.execute(factors_table.update().where(factors_table.c.user == user).values(**row)).rowcount
            if not done:
                conn.execute(factors_table.insert().values(user=user, enrolled_utc=_now().isoformat(), **row))
            conn.execute(sessions_table.update().where(sessions_table.c.user == user).values(revoked=True))
        return otpauth_uri(user, seed)

    def enrolled(self, user: str) -> bool:
        with reading(self.engine) as conn:
            return conn.execute(sa.select(factors_table.c.user).where(factors_table.c.user == user)).first() is not None

    def reset(self, user: str) -> bool:
        """Remove ``user``'s second factor and end their sessions; False if there was none."""
        with transaction(self.engine) as conn:
            gone = conn.execute(factors_table.delete().where(factors_table.c.user == user)).rowcount
            conn.execute(sessions_table.update().where(sessions_table.c.user == user).values(revoked=True))
        return bool(gone)

    # -- codes ----------------------------------------------------------------------------------
    def verify(self, user: str, code: str) -> None:
        """Accept ``code`` for ``user`` once, or raise (AuthError: wrong, reused or not enrolled;
        RateLimited: locked out). A failure is counted (and a lock-out set) before raising."""
        now = self.clock()
        problem: UserError | None = None
        with transaction(self.engine) as conn:
            row = (
                conn.execute(sa.select(factors_table).where(factors_table.c.user == user).with_for_update())
                .mappings()
                .first()
            )
            if row is None:
                raise AuthError(f"{user} has no second factor; ask the data owner to enrol you")
            locked = row["locked_until"]
            if locked and dt.datetime.fromisoformat(locked).timestamp() > now:
                raise RateLimited(
                    f"too many wrong codes: the second factor is locked until {locked[11:16]} UTC; "
                    "ask the data owner if that was not you"
                )
            seed = self._unseal(user, row["sealed"])
            current = int(now // STEP)
            typed = "".join(str(code).split())
            matched = [
                s
                for s in range(current - SKEW, current + SKEW + 1)
                if typed.isdigit() and hmac.compare_digest(totp(seed, s), typed)
            ]
            if matched and matched[0] > row["last_step"]:
                conn.execute(
                    factors_table.update()
                    .where(factors_table.c.user == user)
                    .values(last_step=matched[0], failures=0, locked_until=None)
                )
                return
            failures = row["failures"] + 1
            values: dict[str, object] = {"failures": failures}
            if failures >= self.attempts:
                until = dt.datetime.fromtimestamp(now + self.lockout_s, dt.UTC).isoformat()
                values |= {"locked_until": until, "failures": 0}
            conn.execute(factors_table.update().where(factors_table.c.user == user).values(**values))
            problem = (
                AuthError("that code was used already; wait for the next one")
                if matched
                else AuthError("wrong code (or your device's clock is more than 30 seconds out)")
            )
            if "locked_until" in values:
                problem = RateLimited(
                    f"{self.attempts} wrong codes: the second factor is locked for {self.lockout_s // 60} minutes"
                )
        raise problem

    # -- sessions -------------------------------------------------------------------------------
    def open_session(self, user: str, code: str) -> tuple[str, str]:
        """Check ``code``, then a new session credential and its expiry (shown once)."""
        self.verify(user, code)
        token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
        expires = dt.datetime.fromtimestamp(self.clock(), dt.UTC) + dt.timedelta(hours=self.session_hours)
        with transaction(self.engine) as conn:
            conn.execute(
                sessions_table.insert().values(
                    id=token_id,
                    user=user,
                    salt=salt,
                    digest=_digest(salt, secret),
                    created_utc=_now().isoformat(),
                    expires_utc=expires.isoformat(),
                    revoked=False,
                )
            )
        return f"ss2_{token_id}_{secret}", expires.isoformat(timespec="seconds")

    def authenticate(self, token: str) -> str:
        """The user of a live session credential, or AuthError saying why not (never echoing it)."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "ss2" or not parts[1] or not parts[2]:
            raise AuthError("malformed session credential")
        _, token_id, secret = parts
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(sessions_table).where(sessions_table.c.id == token_id)).mappings().first()
        if row is None or not hmac.compare_digest(row["digest"], _digest(row["salt"], secret)):
            raise AuthError("invalid session credential", claimed=row["user"] if row is not None else None)
        if row["revoked"]:
            raise AuthError("this session was ended; open a new one with your token and a code", claimed=row["user"])
        if dt.datetime.fromisoformat(row["expires_utc"]).timestamp() <= self.clock():
            raise AuthError("this session has expired; open a new one with your token and a code", claimed=row["user"])
        return str(row["user"])

    def revoke_sessions(self, user: str) -> int:
        """End every session of ``user`` not ended before (expired ones too); returns how many."""
        with transaction(self.engine) as conn:
            return int(
                conn.execute(
                    sessions_table.update()
                    .where(sessions_table.c.user == user, sessions_table.c.revoked.is_(False))
                    .values(revoked=True)
                ).rowcount
            )
