"""The revocation deny set and how stream entries feed it (in process; the end-to-end proof with two
gateway processes is tests/revocation/test_propagation.py)."""

from __future__ import annotations

import pytest
from gateway.revocations import DenyList, RevocationFeed
from svckit.redisguard import RedisGuard

pytestmark = pytest.mark.unit

ISSUER = "http://localhost:9000/"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed(deny: DenyList) -> RevocationFeed:
    # never started: only apply() is exercised, so no connection is made
    guard = RedisGuard("redis://127.0.0.1:1/0", "p:", timeout=0.1, retry_seconds=1)
    return RevocationFeed(guard, deny, {ISSUER: 30})


def entry(**fields: str) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_an_entry_is_held_until_exp_plus_the_issuers_leeway() -> None:
    clock = Clock()
    deny = DenyList(clock)
    reader = feed(deny)
    exp = clock.now + 60
    assert reader.apply(entry(iss=ISSUER, jti="a", exp=str(int(exp)), reason="revoked")) == "added"
    assert deny.denied(ISSUER, "a")
    assert not deny.denied(ISSUER, "b")
    assert not deny.denied("https://other.example/", "a"), "keyed by (issuer, jti)"
    clock.now = exp + 29
    deny.purge()
    assert deny.denied(ISSUER, "a"), "still inside the leeway the gateway grants exp"
    clock.now = exp + 31
    deny.purge()
    assert not deny.denied(ISSUER, "a")
    assert len(deny) == 0


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"iss": "https://stranger.example/", "jti": "x", "exp": "2000000"}, "ignored"),
        ({"iss": ISSUER, "jti": "", "exp": "2000000"}, "ignored"),
        ({"iss": ISSUER, "jti": "x" * 256, "exp": "2000000"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "NaN"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "inf"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "soon"}, "ignored"),
        ({"iss": ISSUER, "jti": "x"}, "ignored"),
        ({"iss": ISSUER, "jti": "x", "exp": "10"}, "expired"),
    ],
)
def test_malformed_foreign_or_expired_entries_deny_nothing(fields: dict[str, str], outcome: str) -> None:
    deny = DenyList(Clock())
    assert feed(deny).apply(entry(**fields)) == outcome
    assert len(deny) == 0


def test_not_utf8_is_ignored() -> None:
    deny = DenyList(Clock())
    assert feed(deny).apply({b"iss": b"\xff", b"jti": b"x", b"exp": b"2000000"}) == "ignored"


def test_a_full_deny_set_drops_expired_entries_first() -> None:
    clock = Clock()
    deny = DenyList(clock, max_entries=2)
    deny.add(ISSUER, "old", clock.now + 1)
    deny.add(ISSUER, "live", clock.now + 100)
    clock.now += 2
    assert deny.add(ISSUER, "new", clock.now + 100)
    assert deny.denied(ISSUER, "live")
    assert deny.denied(ISSUER, "new")
    assert len(deny) == 2
