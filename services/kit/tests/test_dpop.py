"""The kit's DPoP proof checks (svckit.dpop), each refusal as its own case, on a fake clock.

The replay store against a real Redis (shared by two guards, and lost) is at the end; everything else
is in process (the fast tier).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import time
import tracemalloc
from typing import Any

import pytest
from svckit.dpop import (
    NonceSource,
    Proof,
    ProofError,
    ProofVerifier,
    ReplayGuard,
    access_token_hash,
    normalise_url,
    thumbprint,
)
from svckit.keyring import KeyRing
from svckit.redisguard import RedisGuard

from testkit.clock import FakeClock, SkewedClock
from testkit.dpop import DpopKey
from testkit.fixtures import free_port
from testkit.redisproc import PrivateRedis

URL = "https://api.example.com/api/timesheets"
NOW = 1_700_000_000.0
TOKEN = "header.payload.signature"

unit = pytest.mark.unit


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def verifier(clock: FakeClock, **options: Any) -> ProofVerifier:
    return ProofVerifier(clock=clock, **options)


def refused(check: ProofVerifier, proof: str, reason: str, **request: Any) -> ProofError:
    arguments: dict[str, Any] = {"method": "GET", "url": URL, **request}
    with pytest.raises(ProofError) as caught:
        check.verify(proof, **arguments)
    assert caught.value.reason == reason, caught.value.description
    return caught.value


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- what passes ------------------------------------------------------------------------------------


@unit
@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA"])
def test_a_proof_of_every_allowed_algorithm_verifies(alg: str, clock: FakeClock) -> None:
    signer = DpopKey(alg)
    proof = verifier(clock).verify(
        signer.proof("GET", URL, access_token=TOKEN, iat=NOW),
        method="GET",
        url=URL,
        access_token=TOKEN,
        jkt=signer.jkt,
    )
    assert proof.jkt == signer.jkt
    assert proof.iat == NOW


@unit
def test_the_thumbprint_is_rfc_7638s_example() -> None:
    """RFC 7638 §3.1's example key and thumbprint."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQ"
        "MicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRw"
        "r3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@unit
def test_ath_is_the_base64url_sha256_of_the_token() -> None:
    # RFC 9449 §7.1's example token and its ath
    assert access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == (
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    )


@unit
@pytest.mark.parametrize(
    ("claimed", "actual"),
    [
        ("HTTPS://API.Example.COM/api/timesheets", URL),
        ("https://api.example.com:443/api/timesheets", URL),
        ("https://api.example.com/api/%74imesheets", URL),  # an escaped unreserved character
        ("https://api.example.com/api/timesheets?limit=5#x", URL + "?cursor=abc"),
        ("http://localhost:80/api/a%2fb", "http://localhost/api/a%2Fb"),
        ("https://api.example.com", "https://api.example.com/"),
    ],
)
def test_htu_is_compared_after_normalisation(
    claimed: str, actual: str, key: DpopKey, clock: FakeClock
) -> None:
    verifier(clock).verify(key.proof("GET", URL, htu=claimed, iat=NOW), method="GET", url=actual)


@unit
@pytest.mark.parametrize(
    "url",
    ["ftp://x/a", "https://user@x/a", "/api/timesheets", "https://x/a b", "https://x:99999/a", "https://"],
)
def test_urls_that_cannot_match_normalise_to_nothing(url: str) -> None:
    assert normalise_url(url) is None


# --- every refusal ------------------------------------------------------------------------------


@unit
@pytest.mark.parametrize("proof", ["", "a.b", "a.b.c.d", "!!.e30.sig", "x" * 9000])
def test_malformed_proofs(proof: str, clock: FakeClock) -> None:
    refused(verifier(clock), proof, "dpop_malformed")


@unit
@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"iat": 1e999}'])
def test_a_payload_that_is_not_a_json_object_is_malformed(
    payload: bytes, key: DpopKey, clock: FakeClock
) -> None:
    header = b64({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk})
    refused(verifier(clock), f"{header}.{b64(payload)}.c2ln", "dpop_malformed")


@unit
@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "dpop"])
def test_the_type_must_be_dpop_jwt(typ: str | None, key: DpopKey, clock: FakeClock) -> None:
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, headers={"typ": typ}), "dpop_typ")


@unit
def test_crit_is_refused(key: DpopKey, clock: FakeClock) -> None:
    proof = key.proof("GET", URL, iat=NOW, headers={"crit": ["exp"], "exp": 1})
    refused(verifier(clock), proof, "dpop_malformed")


@unit
def test_symmetric_and_none_algorithms_are_refused(key: DpopKey, clock: FakeClock) -> None:
    payload = b64({"jti": "j", "htm": "GET", "htu": URL, "iat": NOW})
    for alg in ("none", "HS256"):
        header = b64({"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk})
        refused(verifier(clock), f"{header}.{payload}.c2ln", "dpop_alg")


@unit
def test_an_algorithm_outside_the_allowlist_is_refused(clock: FakeClock) -> None:
    proof = DpopKey("RS256").proof("GET", URL, iat=NOW)
    error = refused(verifier(clock, algorithms=["ES256"]), proof, "dpop_alg")
    assert "ES256" in error.description


@unit
def test_the_allowlist_cannot_name_a_mac() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        ProofVerifier(algorithms=["HS256"])


@unit
def test_a_missing_key_is_refused(key: DpopKey, clock: FakeClock) -> None:
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, headers={"jwk": None}), "dpop_jwk")


@unit
def test_a_private_key_in_the_header_is_refused(key: DpopKey, clock: FakeClock) -> None:
    proof = key.proof("GET", URL, iat=NOW, headers={"jwk": key.private_jwk()})
    error = refused(verifier(clock), proof, "dpop_jwk")
    assert "private" in error.description


@unit
def test_a_key_of_the_wrong_type_or_curve_is_refused(key: DpopKey, clock: FakeClock) -> None:
    rsa_key = DpopKey("RS256")
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, headers={"jwk": rsa_key.public_jwk}), "dpop_jwk")
    p384 = DpopKey("ES384")
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, headers={"jwk": p384.public_jwk}), "dpop_jwk")


@unit
def test_a_short_rsa_key_is_refused(clock: FakeClock) -> None:
    with pytest.warns(UserWarning, match="2048"):  # PyJWT warns about signing with a short key
        proof = DpopKey("RS256", rsa_bits=1024).proof("GET", URL, iat=NOW)
    refused(verifier(clock), proof, "dpop_jwk")


@unit
def test_a_point_off_the_curve_is_refused(key: DpopKey, clock: FakeClock) -> None:
    bad = {**key.public_jwk, "y": key.public_jwk["x"]}
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, headers={"jwk": bad}), "dpop_jwk")


@unit
def test_a_signature_by_another_key_is_refused(key: DpopKey, clock: FakeClock) -> None:
    other = DpopKey()
    refused(
        verifier(clock), other.proof("GET", URL, iat=NOW, headers={"jwk": key.public_jwk}), "dpop_signature"
    )


@unit
def test_a_known_header_spares_no_check_of_the_rest(key: DpopKey, clock: FakeClock) -> None:
    """A header seen before is not parsed again, but the signature and the claims still are: a proof
    that reuses a verified proof's header with another key's signature, or a stale one, is refused."""
    check = verifier(clock)
    first = key.proof("GET", URL, iat=NOW)
    check.verify(first, method="GET", url=URL)
    header = first.split(".")[0]
    other = DpopKey()
    _, payload, signature = other.proof("GET", URL, iat=NOW, headers={"jwk": key.public_jwk}).split(".")
    refused(check, f"{header}.{payload}.{signature}", "dpop_signature")
    refused(check, key.proof("GET", URL, iat=NOW - 3600), "dpop_iat")
    assert check.verify(key.proof("GET", URL, iat=NOW), method="GET", url=URL).jkt == key.jkt


@unit
def test_a_refused_header_is_refused_every_time(key: DpopKey, clock: FakeClock) -> None:
    check = verifier(clock)
    proof = key.proof("GET", URL, iat=NOW, headers={"typ": "JWT"})
    refused(check, proof, "dpop_typ")
    refused(check, proof, "dpop_typ")


@unit
def test_a_tampered_payload_is_refused(key: DpopKey, clock: FakeClock) -> None:
    header, _, signature = key.proof("GET", URL, iat=NOW).split(".")
    payload = b64({"jti": "j", "htm": "GET", "htu": URL, "iat": NOW})
    refused(verifier(clock), f"{header}.{payload}.{signature}", "dpop_signature")


@unit
@pytest.mark.parametrize(("claim", "value"), [("jti", None), ("jti", ""), ("jti", "j" * 256), ("jti", 7)])
def test_jti_is_required(claim: str, value: Any, key: DpopKey, clock: FakeClock) -> None:
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, **{claim: value}), "dpop_malformed")


@unit
@pytest.mark.parametrize("htm", [None, "POST", "get"])
def test_htm_must_be_the_request_method(htm: str | None, key: DpopKey, clock: FakeClock) -> None:
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, htm=htm), "dpop_htm")


@unit
@pytest.mark.parametrize(
    "htu",
    [
        None,
        "http://api.example.com/api/timesheets",  # another scheme
        "https://api.example.com:8443/api/timesheets",  # another port
        "https://evil.example.com/api/timesheets",  # another host
        "https://api.example.com/api/timesheets/1",  # another path
        "https://api.example.com/api/Timesheets",  # paths are case-sensitive
    ],
)
def test_htu_must_be_the_request_url(htu: str | None, key: DpopKey, clock: FakeClock) -> None:
    refused(verifier(clock), key.proof("GET", URL, iat=NOW, htu=htu), "dpop_htu")


@unit
@pytest.mark.parametrize("iat", [None, "1700000000", True, float("inf")])
def test_iat_must_be_a_number(iat: Any, key: DpopKey, clock: FakeClock) -> None:
    proof = key.proof("GET", URL, iat=iat) if iat is not None else key.proof("GET", URL, without=("iat",))
    refused(verifier(clock), proof, "dpop_malformed")


@unit
def test_iat_window_with_leeway(key: DpopKey, clock: FakeClock) -> None:
    check = verifier(clock, max_age_seconds=60, leeway_seconds=5)
    check.verify(key.proof("GET", URL, iat=NOW - 65), method="GET", url=URL)
    check.verify(key.proof("GET", URL, iat=NOW + 5), method="GET", url=URL)
    refused(check, key.proof("GET", URL, iat=NOW - 66), "dpop_iat")
    refused(check, key.proof("GET", URL, iat=NOW + 6), "dpop_iat")
    proof = key.proof("GET", URL, iat=NOW)
    clock.advance(66)
    refused(check, proof, "dpop_iat")


@unit
def test_ath_must_hash_the_presented_token(key: DpopKey, clock: FakeClock) -> None:
    check = verifier(clock)
    refused(check, key.proof("GET", URL, iat=NOW), "dpop_ath", access_token=TOKEN)
    refused(
        check, key.proof("GET", URL, iat=NOW, access_token="another.token.x"), "dpop_ath", access_token=TOKEN
    )


@unit
def test_the_key_must_be_the_one_the_token_is_bound_to(key: DpopKey, clock: FakeClock) -> None:
    other = DpopKey()
    proof = other.proof("GET", URL, iat=NOW, access_token=TOKEN)
    refused(verifier(clock), proof, "dpop_key_mismatch", access_token=TOKEN, jkt=key.jkt)


# --- nonces -------------------------------------------------------------------------------------


@unit
def test_nonces_are_required_when_on_and_rotate(key: DpopKey, clock: FakeClock) -> None:
    nonces = NonceSource(b"s" * 32, 60, clock)
    check = verifier(clock, nonces=nonces)
    error = refused(check, key.proof("GET", URL, iat=NOW), "dpop_nonce")
    assert error.use_nonce
    assert error.error == "use_dpop_nonce"
    refused(check, key.proof("GET", URL, iat=NOW, nonce="made-up"), "dpop_nonce")
    first = nonces.current()
    check.verify(key.proof("GET", URL, iat=NOW, nonce=first), method="GET", url=URL)
    clock.advance(60)  # next window: the previous nonce still works, a new one is handed out
    assert nonces.current() != first
    check.verify(key.proof("GET", URL, iat=clock.time(), nonce=first), method="GET", url=URL)
    clock.advance(60)
    refused(check, key.proof("GET", URL, iat=clock.time(), nonce=first), "dpop_nonce")


@unit
def test_processes_with_the_same_secret_agree_on_nonces(clock: FakeClock) -> None:
    one, two = NonceSource(b"k" * 32, 30, clock), NonceSource(b"k" * 32, 30, clock)
    assert one.current() == two.current()
    assert not NonceSource(b"x" * 32, 30, clock).valid(one.current())


@unit
def test_nonces_are_taken_from_clocks_within_the_skew_and_no_further() -> None:
    """The windows a nonce is taken in: the checking clock's current and previous one, widened by the
    skew either way (a replica ahead hands out the next window's nonce first), and no more."""
    start = 1_700_000_040.0  # a multiple of 60: a window's start
    behind = FakeClock(start - 10)
    checker = NonceSource(b"k" * 32, 60, behind, skew_seconds=30)
    issued = {
        offset: NonceSource(b"k" * 32, 60, FakeClock(start + offset)).current()
        for offset in (-130, -75, 20, 65)
    }
    assert checker.valid(issued[20])  # the next window's, from a clock 30 s ahead: taken
    assert not checker.valid(issued[65])  # from a clock 75 s ahead: not
    assert checker.valid(issued[-75])  # the previous window's: taken
    assert not checker.valid(issued[-130])  # two windows back, and beyond the skew: not
    assert not NonceSource(b"k" * 32, 60, behind).valid(issued[20])  # without a skew, as before


@unit
def test_a_nonce_key_ring_makes_with_its_first_key_and_checks_with_each(clock: FakeClock) -> None:
    """DPOP_NONCE_SECRET while it rotates (svckit.keyring): the first key makes the nonces, named; a
    ring that still holds a key checks that key's nonces, named or unnamed (an earlier release's, or a
    pod given the single value of before); a key no longer in the ring checks nothing."""
    old, new = b"o" * 32, b"n" * 32
    before = NonceSource(old, 60, clock)  # the single value of before: unnamed nonces, as before
    adding = NonceSource(KeyRing((("old", old), ("new", new))), 60, clock)
    first = NonceSource(KeyRing((("new", new), ("old", old))), 60, clock)
    after = NonceSource(KeyRing((("new", new),)), 60, clock)
    assert "." not in before.current()
    assert adding.current().startswith("old.")
    assert first.current().startswith("new.")
    assert adding.current().removeprefix("old.") == before.current()  # the name is only a hint
    for one, other in ((before, adding), (adding, first), (first, after)):
        assert other.valid(one.current())
        assert one.valid(other.current())
    assert not after.valid(before.current())
    assert not after.valid(adding.current())
    assert not before.valid(first.current())  # the new key made first in one step: refused
    # a made-up name finds no key in a named ring; a name is checked against that key only
    assert not first.valid("made-up." + before.current())
    assert not first.valid("new." + before.current())
    assert before.valid("made-up." + before.current())  # an unnamed key answers for any name


# --- replays ------------------------------------------------------------------------------------


@unit
async def test_a_jti_is_accepted_once_within_the_window(clock: FakeClock) -> None:
    guard = ReplayGuard(None, "dpop", window_seconds=65, clock=clock)
    proof = Proof("jkt", "jti-1", NOW)
    assert await guard.first_use(proof)
    assert not await guard.first_use(proof)
    assert await guard.first_use(Proof("other-key", "jti-1", NOW))  # scoped to the key
    clock.advance(66)  # the proof is no longer acceptable anyway: the entry may go
    assert await guard.first_use(proof)


@unit
async def test_the_local_window_is_bounded(clock: FakeClock) -> None:
    guard = ReplayGuard(None, "dpop", window_seconds=65, clock=clock, max_local=100)
    for n in range(250):
        await guard.first_use(Proof("jkt", f"jti-{n}", NOW))
    assert len(guard) <= 100


async def test_two_guards_sharing_redis_accept_a_jti_once(redis_url: str, redis_prefix: str) -> None:
    """Two processes' guards (separate clients, separate local windows) on one Redis."""
    guards = [
        ReplayGuard(RedisGuard(redis_url, redis_prefix, timeout=0.5, retry_seconds=1), "dpop", 65)
        for _ in range(2)
    ]
    try:
        import time

        proof = Proof("jkt", "shared-jti", time.time())
        assert await guards[0].first_use(proof)
        assert not await guards[1].first_use(proof)
        assert not await guards[0].first_use(proof)
    finally:
        for guard in guards:
            assert guard.redis is not None
            await guard.redis.close()


async def test_a_proof_is_accepted_once_across_replicas_whose_clocks_differ_within_the_leeway(
    redis_url: str, redis_prefix: str, key: DpopKey
) -> None:
    """Two replicas (verifier and replay guard each, on one Redis), the second 1.5 s ahead of the
    first: less than the clock leeway they grant clients. The proof is first used at the one ahead;
    the Redis entry must outlive the moment the one behind stops accepting the proof. It expired
    by the clock of the replica that made it (``iat`` + max age + leeway), 1.5 s early: the replay
    to the replica behind was accepted then."""
    replicas = []
    for offset in (0.0, 1.5):
        clock = SkewedClock(offset)
        check = ProofVerifier(max_age_seconds=2, leeway_seconds=2, clock=clock)
        redis = RedisGuard(redis_url, redis_prefix, timeout=0.5, retry_seconds=1)
        replicas.append((check, ReplayGuard(redis, "dpop", check.window_seconds, clock=clock)))
    (behind, behind_replays), (ahead, ahead_replays) = replicas
    try:
        sent = key.proof("GET", URL, iat=time.time())
        assert await ahead_replays.first_use(ahead.verify(sent, method="GET", url=URL))
        await asyncio.sleep(3.3)  # past iat + 3 s (when the entry the replica ahead made expired)
        replayed = behind.verify(sent, method="GET", url=URL)  # still within its window (iat + 4 s)
        assert not await behind_replays.first_use(replayed)
    finally:
        for _, replays in replicas:
            assert replays.redis is not None
            await replays.redis.close()


async def test_without_redis_the_local_window_still_refuses_replays() -> None:
    """Redis down: a replay to the same process is refused; the check counts as local-only."""
    import time

    from svckit.dpop import replay_checks

    redis = RedisGuard(f"redis://127.0.0.1:{free_port()}/0", "p:", timeout=0.2, retry_seconds=60)
    guard = ReplayGuard(redis, "dpop", 65)
    before = replay_checks.labels("local")._value.get()
    try:
        proof = Proof("jkt", "lonely", time.time())
        assert await guard.first_use(proof)
        assert not await guard.first_use(proof)
        assert replay_checks.labels("local")._value.get() == before + 1
    finally:
        await redis.close()


async def _stored(redis: PrivateRedis, pattern: str, count: int, timeout: float = 3.0) -> None:
    """Wait until Redis holds ``count`` keys matching ``pattern`` (at most ``timeout`` seconds)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis.url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(await client.keys(pattern)) >= count:
                return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_proofs_seen_while_redis_was_away_and_before_it_came_back_empty_stay_used_once() -> None:
    """Replica A accepts one proof through Redis, then Redis dies (a restart without persistence, as
    the chart runs it) and A accepts a second in process only; Redis comes back empty. Neither may
    pass at replica B now: A writes its window back (fails on main: B accepted both, once each, for
    the rest of their window — the chaos hunt's replays to the other gateway after a Redis restart)."""
    with PrivateRedis() as redis:
        guards = [
            ReplayGuard(RedisGuard(redis.url, "p:", timeout=0.3, retry_seconds=0.2), "dpop", 65)
            for _ in range(2)
        ]
        a, b = guards
        try:
            before = Proof("jkt", "before-the-restart", time.time())
            during = Proof("jkt", "while-redis-was-away", time.time())
            assert await a.first_use(before)
            redis.stop()
            assert await a.first_use(during)  # in process only
            assert not await a.first_use(during)
            redis.start()  # empty
            await _stored(redis, "p:dpop:*", 2)
            assert not await b.first_use(before)
            assert not await b.first_use(during)
            assert await b.first_use(Proof("jkt", "new", time.time()))
        finally:
            for guard in guards:
                await guard.close()
                assert guard.redis is not None
                await guard.redis.close()


async def test_a_restart_between_two_proofs_is_noticed_and_the_window_written_back() -> None:
    """Redis restarts empty between two proofs at replica A (no request saw it down): A's next call
    fails once on the connection the old server closed, and A writes its window back, the first
    proof included. Fails on main: B accepted the first proof again."""
    with PrivateRedis() as redis:
        guards = [
            ReplayGuard(RedisGuard(redis.url, "p:", timeout=0.3, retry_seconds=0.2), "dpop", 65)
            for _ in range(2)
        ]
        a, b = guards
        try:
            first = Proof("jkt", "before-a-quick-restart", time.time())
            assert await a.first_use(first)
            redis.restart()
            assert await a.first_use(Proof("jkt", "after-it", time.time()))
            await _stored(redis, "p:dpop:*", 2)
            assert not await b.first_use(first)
        finally:
            for guard in guards:
                await guard.close()
                assert guard.redis is not None
                await guard.redis.close()


async def test_a_rewrite_waiting_for_redis_stops_with_the_guard() -> None:
    """Redis stays away: the rewrite keeps waiting (it costs a sleep per retry) until close()."""
    redis = RedisGuard(f"redis://127.0.0.1:{free_port()}/0", "p:", timeout=0.2, retry_seconds=0.05)
    guard = ReplayGuard(redis, "dpop", 65)
    try:
        assert await guard.first_use(Proof("jkt", "alone", time.time()))
        await asyncio.sleep(0.3)
        assert guard.rewrite is not None
        task = guard.rewrite.task
        assert task is not None
        assert not task.done()
        await guard.close()
        assert guard.rewrite.task is None
        assert task.done()
    finally:
        await redis.close()


@unit
def test_headers_of_proofs_whose_signature_fails_are_not_kept(key: DpopKey, clock: FakeClock) -> None:
    """What a proof's header decides (algorithm, key, thumbprint) is kept per header text, 10,000 of
    them, so that a client's every proof is read once; it was kept before the signature was checked:
    anyone could fill it with headers of up to 8 KiB (an extra member makes each new) — ~80 MB per
    process, at the provider's token endpoint without any credential (fails on main: 1.3 MB kept
    for 200 such proofs)."""
    check = verifier(clock)
    proofs = []
    for number in range(200):
        header, payload, _ = key.proof("GET", URL, iat=NOW, headers={"pad": f"{number}" + "p" * 4500}).split(
            "."
        )
        proofs.append(f"{header}.{payload}.{b64(b'not the signature')}")
    refused(check, proofs[0], "dpop_signature")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for proof in proofs[1:]:
            refused(check, proof, "dpop_signature")
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 200_000, f"{kept / 1e6:.2f} MB kept for {len(proofs) - 1} refused proofs"
