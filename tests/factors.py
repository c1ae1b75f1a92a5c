"""Second-factor helpers for tests that ask for OFFICIAL-SENSITIVE data over the network."""

from __future__ import annotations

import base64
import time
import urllib.parse
from typing import Any

from safestats.store.factors import STEP, totp


def seed_of(uri: str) -> bytes:
    """The TOTP seed in an ``otpauth://`` URI (what an authenticator app reads from the QR code)."""
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def code_now(seed: bytes, offset: int = 0) -> str:
    return totp(seed, int(time.time() // STEP) + offset)


def second_factor_session(service: Any, user: str) -> str:
    """Enrol ``user`` and open a session with a current code: the credential a client would hold."""
    seed = seed_of(service.factors.enrol(user))
    token, _ = service.factors.open_session(user, code_now(seed))
    return str(token)
