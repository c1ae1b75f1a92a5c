"""The second factor's store: TOTP codes, replay, skew, lock-out and sessions."""

from __future__ import annotations

import base64

import pytest

from safestats.errors import AuthError, RateLimited
from safestats.store.db import open_store
from safestats.store.factors import STEP, SecondFactors, totp
from safestats.store.schema import factors_table
from tests.factors import seed_of


@pytest.mark.parametrize(
    ("seconds", "code"),
    [(59, "287082"), (1111111109, "081804"), (1234567890, "005924"), (2000000000, "279037")],
)
def test_codes_are_rfc_6238s(seconds, code):
    """RFC 6238 appendix B (SHA-1 seed "12345678901234567890"), last six digits."""
    assert totp(b"12345678901234567890", seconds // STEP) == code


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def factors(tmp_path):
    clock = Clock(1_800_000_000.0)
    store = SecondFactors(
        open_store(f"sqlite:///{tmp_path / 's.db'}"), b"k" * 32, attempts=3, lockout_s=600, clock=clock
    )
    return store, clock


_seed = seed_of


def test_enrol_verify_and_never_twice(factors):
    store, clock = factors
    uri = store.enrol("jo")
    assert uri.startswith("otpauth://totp/safestats%3Ajo?") and "issuer=safestats" in uri
    seed = _seed(uri)
    step = int(clock.now // STEP)
    store.verify("jo", totp(seed, step))
    with pytest.raises(AuthError, match="used already"):  # replay of the same code
        store.verify("jo", totp(seed, step))
    with pytest.raises(AuthError, match="used already"):  # an earlier step's code, once a later one was used
        store.verify("jo", totp(seed, step - 1))
    clock.now += STEP
    store.verify("jo", totp(seed, step + 1))


def test_one_step_of_skew_either_side_and_no_more(factors):
    store, clock = factors
    seed = _seed(store.enrol("jo"))
    step = int(clock.now // STEP)
    store.verify("jo", totp(seed, step + 1))  # a device 30 s fast
    with pytest.raises(AuthError, match="wrong code"):
        store.verify("jo", totp(seed, step + 3))  # 90 s fast: no
    seed = _seed(store.enrol("ann"))
    store.verify("ann", totp(seed, step - 1))  # 30 s slow
    with pytest.raises(AuthError, match="wrong code"):
        store.verify("ann", totp(seed, step - 2))


def test_the_seed_is_sealed_in_the_store(factors):
    store, _ = factors
    seed = _seed(store.enrol("jo"))
    with store.engine.connect() as conn:
        sealed = conn.execute(factors_table.select()).mappings().one()["sealed"]
    assert seed.hex() not in sealed and base64.b32encode(seed).decode().rstrip("=") not in sealed
    other = SecondFactors(store.engine, b"x" * 32, clock=store.clock)  # another service key cannot read it
    with pytest.raises(AuthError, match="cannot be read"):
        other.verify("jo", "000000")


def test_lockout_after_wrong_codes_even_for_the_right_one(factors):
    store, clock = factors
    seed = _seed(store.enrol("jo"))
    for _ in range(2):
        with pytest.raises(AuthError, match="wrong code"):
            store.verify("jo", "000000")
    with pytest.raises(RateLimited, match="3 wrong codes: the second factor is locked for 10 minutes"):
        store.verify("jo", "000000")
    with pytest.raises(RateLimited, match="locked until"):
        store.verify("jo", totp(seed, int(clock.now // STEP)))  # the right code is refused while locked
    clock.now += 601
    store.verify("jo", totp(seed, int(clock.now // STEP)))  # after the lock-out, it works again


def test_sessions_expire_and_are_revocable(factors):
    store, clock = factors
    seed = _seed(store.enrol("jo"))
    token, expires = store.open_session("jo", totp(seed, int(clock.now // STEP)))
    assert token.startswith("ss2_") and store.authenticate(token) == "jo"
    with pytest.raises(AuthError, match="invalid session"):
        store.authenticate(token[:-2] + "xx")
    clock.now += 8 * 3600 + 1
    with pytest.raises(AuthError, match="expired"):
        store.authenticate(token)
    token, _ = store.open_session("jo", totp(seed, int(clock.now // STEP)))
    assert store.revoke_sessions("jo") == 2  # the expired one and the new one
    with pytest.raises(AuthError, match="ended"):
        store.authenticate(token)
    with pytest.raises(AuthError, match="no second factor"):
        store.verify("nobody", "123456")
