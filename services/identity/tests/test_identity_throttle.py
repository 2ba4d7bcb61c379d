"""Sign-in throttling: counted before the password check, atomically, shared through Redis, and still
working (bounded in time) when Redis refuses connections or hangs."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from identity import store
from identity.models import User
from identity.passwords import hash_secret
from identity.settings import IdentitySettings
from identity.throttle import LoginThrottle
from svckit.redisguard import RedisGuard

from testkit.fixtures import free_port
from testkit.oidc import DEMO_PASSWORD, Browser, code_request, hidden_field, params_of, pkce_pair
from testkit.redisproc import PrivateRedis

from .conftest import own_provider, own_provider_process, provider_url

SIGN_IN_BOUND_SECONDS = 1.5


@pytest.fixture
async def guard(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisGuard]:
    guard = RedisGuard(redis_url, redis_prefix + "throttle:", timeout=0.5, retry_seconds=1.0)
    yield guard
    await guard.close()


async def test_attempts_are_shared_through_redis(guard: RedisGuard) -> None:
    replica_a = LoginThrottle(
        guard, max_per_user=3, max_per_user_all_addresses=5, max_per_address=100, window_seconds=60
    )
    replica_b = LoginThrottle(
        guard, max_per_user=3, max_per_user_all_addresses=5, max_per_address=100, window_seconds=60
    )
    user = "shared-" + secrets.token_hex(4)
    for _ in range(3):
        assert (await replica_a.attempt(user, "10.0.0.1")).allowed
    verdict = await replica_b.attempt(user, "10.0.0.1")
    assert not verdict.allowed
    assert verdict.scope == "user"
    assert 0 < verdict.retry_after <= 60
    # another address is not locked out by the first one's failures, up to the name's overall limit
    for _ in range(2):
        assert (await replica_b.attempt(user, "10.0.0.2")).allowed
    verdict = await replica_a.attempt(user, "10.0.0.3")
    assert (verdict.allowed, verdict.scope) == (False, "user_all")


async def test_a_success_gives_back_its_slot_but_forgives_no_failure(guard: RedisGuard) -> None:
    throttle = LoginThrottle(guard, max_per_user=3, max_per_address=100, window_seconds=60)
    user = "typo-" + secrets.token_hex(4)
    for _ in range(2):  # two failures
        assert (await throttle.attempt(user, "10.0.0.3")).allowed
    for _ in range(5):  # successes never use up the limit
        assert (await throttle.attempt(user, "10.0.0.3")).allowed
        await throttle.succeeded(user, "10.0.0.3")
    assert (await throttle.attempt(user, "10.0.0.3")).allowed  # third failure
    assert not (await throttle.attempt(user, "10.0.0.3")).allowed


async def test_concurrent_attempts_cannot_exceed_either_limit(guard: RedisGuard) -> None:
    throttle = LoginThrottle(guard, max_per_user=5, max_per_address=20, window_seconds=60)
    user = "burst-" + secrets.token_hex(4)
    verdicts = await asyncio.gather(*(throttle.attempt(user, "10.0.0.4") for _ in range(30)))
    assert sum(v.allowed for v in verdicts) == 5
    assert {v.scope for v in verdicts if not v.allowed} == {"user"}
    address = "10.0.1." + str(secrets.randbelow(250))
    verdicts = await asyncio.gather(*(throttle.attempt(f"u{i}-{user}", address) for i in range(30)))
    assert sum(v.allowed for v in verdicts) == 20
    assert {v.scope for v in verdicts if not v.allowed} == {"address"}


async def test_the_window_ends(guard: RedisGuard) -> None:
    throttle = LoginThrottle(guard, max_per_user=1, max_per_address=100, window_seconds=1)
    user = "window-" + secrets.token_hex(4)
    assert (await throttle.attempt(user, "10.0.0.5")).allowed
    refused = await throttle.attempt(user, "10.0.0.5")
    assert not refused.allowed
    assert refused.retry_after == 1
    await asyncio.sleep(1.2)
    assert (await throttle.attempt(user, "10.0.0.5")).allowed


async def test_the_limits_hold_in_process_without_redis() -> None:
    dead = RedisGuard(f"redis://127.0.0.1:{free_port()}/0", "x:", timeout=0.2, retry_seconds=60)
    try:
        throttle = LoginThrottle(dead, max_per_user=10, max_per_address=4, window_seconds=60)
        verdicts = await asyncio.gather(*(throttle.attempt(f"user{i}", "192.0.2.7") for i in range(10)))
        assert sum(v.allowed for v in verdicts) == 4
        verdict = await throttle.attempt("someone-else", "192.0.2.7")
        assert not verdict.allowed
        assert verdict.scope == "address"
        assert (await throttle.attempt("someone-else", "192.0.2.8")).allowed
    finally:
        await dead.close()


async def test_thirty_concurrent_guesses_the_last_one_right(base_url: str, db: asyncpg.Connection) -> None:
    """Issue 14's attack over HTTP: at most 5 guesses are ever checked; the right one, coming last, is
    refused like the rest, and stays refused after the burst."""
    name = "erin" + secrets.token_hex(3)
    erin = User(f"local|{name}", name, f"{name}@example.com", "Erin", ("employee",), hash_secret("right-one"))
    await store.upsert_user(db, erin)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(base_url, session)
        assert (await browser.get("/login")).status == 200
        token = hidden_field(browser.last_html, "csrf_token")

        async def guess(password: str) -> int:
            form = {"username": name, "password": password, "csrf_token": token, "return_to": ""}
            async with session.post(base_url + "/login", data=form, allow_redirects=False) as response:
                return response.status

        statuses = await asyncio.gather(*(guess(f"guess-{i}") for i in range(29)), guess("right-one"))
        assert statuses.count(401) + statuses.count(303) <= 5, statuses
        assert statuses.count(429) >= 25, statuses
        if 303 not in statuses:
            assert await guess("right-one") == 429, "the right password after the limit is refused too"


async def test_sign_in_takes_bounded_time_while_redis_hangs_or_is_gone(seeded: dict[str, str]) -> None:
    """A replica whose Redis hangs (SIGSTOP: connections accepted, nothing answered) and then refuses
    connections still signs users in, each sign-in within SIGN_IN_BOUND_SECONDS, and still throttles
    in process; once Redis is back it is used again."""
    with (
        PrivateRedis() as redis_server,
        own_provider_process(seeded, REDIS_URL=redis_server.url, LOGIN_MAX_FAILURES_PER_USER="3") as process,
    ):
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                browser = Browser(provider_url(process.port), session)

                async def timed_login(user: str, password: str = DEMO_PASSWORD) -> tuple[int, float]:
                    started = time.monotonic()
                    status = (await browser.login(user, password=password)).status
                    return status, time.monotonic() - started

                assert (await timed_login("carol"))[0] == 303  # Redis up: connections are open
                redis_server.pause()
                hung = []
                for user in ("alice", "bob", "carol"):
                    status, elapsed = await timed_login(user)
                    assert status == 303
                    assert elapsed < SIGN_IN_BOUND_SECONDS, f"sign-in took {elapsed:.2f}s with Redis hung"
                    hung.append(elapsed)
                # one timeout opens the circuit; the sign-ins after it do not wait for Redis at all
                assert sum(hung) < 2.0, hung
                print("sign-in seconds with Redis hung:", [round(t, 3) for t in hung])
                redis_server.stop()
                gone = []
                for _ in range(3):
                    status, elapsed = await timed_login("alice", "wrong")
                    assert status == 401
                    assert elapsed < SIGN_IN_BOUND_SECONDS, f"sign-in took {elapsed:.2f}s with Redis gone"
                    gone.append(elapsed)
                print("sign-in seconds with Redis refusing connections:", [round(t, 3) for t in gone])
                status, elapsed = await timed_login("alice")
                assert status == 429, "throttled in process while Redis is gone"
                assert elapsed < SIGN_IN_BOUND_SECONDS
                status, elapsed = await timed_login("bob")
                assert (status, elapsed < SIGN_IN_BOUND_SECONDS) == (303, True)
            assert "redis unavailable" in process.logs()
        finally:
            redis_server.resume()  # before the provider stops (and the private Redis after it)


async def test_the_code_limit_has_a_window_of_its_own(seeded: dict[str, str]) -> None:
    """``AUTHORIZE_MAX_CODES_PER_USER`` counts per ``AUTHORIZE_CODE_WINDOW_SECONDS``, not per the sign-in
    throttle's ``LOGIN_THROTTLE_WINDOW_SECONDS``: an operator can give a busy SPA's silent renewals a
    short window without shortening the one that slows password guessing (and the other way round)."""
    with own_provider(  # counters of their own (keyed by issuer)
        seeded,
        AUTHORIZE_MAX_CODES_PER_USER="1",
        AUTHORIZE_CODE_WINDOW_SECONDS="1",
        LOGIN_THROTTLE_WINDOW_SECONDS="900",
    ) as url:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            browser = Browser(url, session)
            _, challenge = pkce_pair()
            first = await browser.sign_in_and_authorize("carol", **code_request(challenge))
            assert "code" in params_of(first.headers["Location"]), browser.last_html
            second = await browser.authorize(**code_request(challenge))
            assert params_of(second.headers["Location"])["error"] == "temporarily_unavailable"
            await asyncio.sleep(1.3)  # the code window (1 s) is over; the sign-in window (900 s) is not
            third = await browser.authorize(**code_request(challenge))
            assert "code" in params_of(third.headers["Location"]), params_of(third.headers["Location"])


def test_the_code_window_defaults_to_the_sign_in_window() -> None:
    """Upgrading changes nothing: the code limit's window is 900 s as before, set on its own."""
    fields = IdentitySettings.model_fields
    assert fields["authorize_code_window_seconds"].default == fields["login_throttle_window_seconds"].default
