"""Users managed by the data owner, and their API tokens.

A token is shown once, when it is issued: ``ss_<id>_<secret>``. The store keeps only a random
salt and the HMAC-SHA256 of the secret under it (the secret is 256 random bits, so a slow hash
adds nothing but latency), with an expiry and a revoked flag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from safestats.errors import AuthError, UserError
from safestats.store.db import reading
from safestats.store.schema import tokens_table, users_table

__all__ = ["AuthError", "UserStore", "tokens_table", "users_table"]


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    expires_utc: str
    revoked: bool


# read at every request: built once, with bound parameters
_TOKEN = sa.select(tokens_table).where(tokens_table.c.id == sa.bindparam("id"))
_USER = sa.select(users_table).where(users_table.c.name == sa.bindparam("name"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


class UserStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add_user(
        self, name: str, *, groups: list[str], organisation: str, service: bool = False, interaction: str | None = None
    ) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(users_table.c.name).where(users_table.c.name == name)).first()
            if exists:
                raise UserError(f"user {name!r} already exists; issue a new token with `safestats users token {name}`")
            conn.execute(
                users_table.insert().values(
                    name=name,
                    groups=json.dumps(groups),
                    organisation=organisation,
                    service=service,
                    interaction=interaction,
                    created_utc=_now().isoformat(timespec="seconds"),
                )
            )

    def get_user(self, name: str) -> dict[str, Any] | None:
        with reading(self.engine) as conn:
            row = conn.execute(_USER, {"name": name}).mappings().first()
        if row is None:
            return None
        return {
            "groups": json.loads(row["groups"]),
            "organisation": row["organisation"],
            "service": bool(row["service"]),
            "interaction": row["interaction"],
        }

    def users(self) -> dict[str, dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = conn.execute(sa.select(users_table.c.name)).scalars().all()
        return {name: self.get_user(name) or {} for name in rows}

    def issue_token(self, user: str, *, days: int = 90) -> str:
        """A new token for ``user``, valid for ``days``; returned once and never stored."""
        if days < 1:
            raise UserError("a token must be valid for at least one day")
        token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                tokens_table.insert().values(
                    id=token_id,
                    user=user,
                    salt=salt,
                    digest=_digest(salt, secret),
                    created_utc=now.isoformat(timespec="seconds"),
                    expires_utc=(now + dt.timedelta(days=days)).isoformat(timespec="seconds"),
                    revoked=False,
                )
            )
        return f"ss_{token_id}_{secret}"

    def revoke(self, user: str) -> int:
        """Revoke every token of ``user``; returns how many."""
        with self.engine.begin() as conn:
            live = (tokens_table.c.user == user) & (tokens_table.c.revoked == sa.false())
            result = conn.execute(tokens_table.update().where(live).values(revoked=True))
        return int(result.rowcount or 0)

    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        query = sa.select(tokens_table).order_by(tokens_table.c.created_utc)
        if user:
            query = query.where(tokens_table.c.user == user)
        with reading(self.engine) as conn:
            return [
                TokenInfo(r["id"], r["user"], r["expires_utc"], bool(r["revoked"]))
                for r in conn.execute(query).mappings()
            ]

    def authenticate(self, token: str | None) -> str:
        """The user a token belongs to, or :class:`AuthError` saying why not (never echoing it)."""
        if not token:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'", claimed=None)
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "ss" or not parts[1] or not parts[2]:
            raise AuthError("malformed token", claimed=None)
        _, token_id, secret = parts
        with reading(self.engine) as conn:
            row = conn.execute(_TOKEN, {"id": token_id}).mappings().first()
        if row is None or not hmac.compare_digest(row["digest"], _digest(row["salt"], secret)):
            raise AuthError("invalid token", claimed=row["user"] if row is not None else None)
        if row["revoked"]:
            raise AuthError("revoked token; ask the data owner for a new one", claimed=row["user"])
        if dt.datetime.fromisoformat(row["expires_utc"]) <= _now():
            raise AuthError("expired token; ask the data owner for a new one", claimed=row["user"])
        return str(row["user"])
