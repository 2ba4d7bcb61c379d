"""Issue 14 at the provider: fresh sign-in for prompt=login/max_age, consent checked at every refresh of
a third-party client, RFC 7009 client authentication, and the revocation stream the gateways read
(the gateways' side: tests/revocation/test_propagation.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis

from testkit.fixtures import scrape
from testkit.oidc import (
    BATCH_SECRET,
    SPA,
    Browser,
    code_request,
    exchange_code,
    hidden_field,
    params_of,
    pkce_pair,
    sign_in_tokens,
)


def return_to_of(location: str) -> str:
    """The ``return_to`` of a redirect to the sign-in page."""
    assert location.startswith("/login?"), location
    return dict(parse_qsl(urlsplit(location).query))["return_to"]


async def test_prompt_login_and_max_age_need_a_sign_in_newer_than_the_request(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> None:
    """With a session, ``prompt=login``/``max_age=0`` send the user to sign in; opening the
    ``return_to`` link without signing in must not yield a code; signing in does, and the ID token's
    ``auth_time`` proves the sign-in happened after the request."""
    await browser.login("alice")
    for extra in ({"prompt": "login"}, {"max_age": "0"}):
        verifier, challenge = pkce_pair()
        request = code_request(challenge, scope="openid", **extra)
        requested_at = int(time.time())
        first = await browser.get("/authorize?" + urlencode(request))
        assert first.status == 302
        return_to = return_to_of(first.headers["Location"])
        assert "login_after=" in return_to
        skipped = await browser.get(return_to)  # the way back, without signing in
        assert skipped.status == 302
        assert skipped.headers["Location"].startswith("/login?"), "no code without a fresh sign-in"
        assert "code=" not in skipped.headers["Location"]
        signed = await browser.login("alice", return_to=return_to)
        assert signed.status == 303
        done = await browser.authorize_location(signed.headers["Location"])
        code = params_of(done.headers["Location"])["code"]
        status, tokens = await exchange_code(http, browser.base, code, verifier)
        assert status == 200
        claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
        assert claims["auth_time"] >= requested_at


async def test_third_party_refresh_needs_consent_that_still_covers_its_scopes(
    browser: Browser, http: aiohttp.ClientSession, base_url: str, db: asyncpg.Connection
) -> None:
    verifier, challenge = pkce_pair()
    request = code_request(
        challenge,
        client_id="partner-spa",
        redirect_uri=f"{SPA}/partner/callback",
        scope="openid offline_access read:timesheets",
    )
    await browser.sign_in_and_authorize("bob", **request)
    answer = {
        "csrf_token": hidden_field(browser.last_html, "csrf_token"),
        "request": hidden_field(browser.last_html, "request"),
        "decision": "allow",
    }
    response = await browser.post("/authorize/decision", answer)
    code = params_of(response.headers["Location"])["code"]
    status, tokens = await exchange_code(
        http, base_url, code, verifier, client_id="partner-spa", redirect_uri=f"{SPA}/partner/callback"
    )
    assert status == 200

    async def refresh(token: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": "refresh_token", "client_id": "partner-spa", "refresh_token": token}
        async with http.post(base_url + "/oauth/token", data=form) as r:
            return r.status, await r.json()

    status, tokens = await refresh(tokens["refresh_token"])
    assert status == 200
    # consent narrowed behind the refresh token's back (no withdrawal, so nothing was revoked yet)
    await db.execute(
        "UPDATE consents SET scopes = ARRAY['openid'] "
        "WHERE subject = 'local|bob' AND client_id = 'partner-spa'"
    )
    status, error = await refresh(tokens["refresh_token"])
    assert (status, error["error"]) == (400, "invalid_grant")
    assert "consent" in error["error_description"]
    revoked = await db.fetchval(
        "SELECT count(*) FROM issued_tokens WHERE subject = 'local|bob' AND client_id = 'partner-spa' "
        "AND revocation_reason = 'consent_withdrawn'"
    )
    assert revoked >= 2, "the family's access tokens were revoked too"


async def test_revocation_authenticates_clients_as_auth0_does(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """Public clients by client_id alone; confidential clients only with their secret."""
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    grant = {"grant_type": "client_credentials"}
    async with http.post(base_url + "/oauth/token", data=grant, headers=auth) as r:
        token = (await r.json())["access_token"]
    revoke = base_url + "/oauth/revoke"
    async with http.post(revoke, data={"client_id": "timesheets-batch", "token": token}) as r:
        assert r.status == 401, "a confidential client must authenticate"
        assert (await r.json())["error"] == "invalid_client"
    wrong = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", "not-the-secret")}
    async with http.post(revoke, data={"token": token}, headers=wrong) as r:
        assert r.status == 401
    async with http.post(revoke, data={"token": token}, headers=auth) as r:
        assert r.status == 200


async def revoked_access_token(
    browser: Browser, http: aiohttp.ClientSession, base_url: str
) -> dict[str, Any]:
    """A fresh SPA access token's claims, once the SPA has revoked it at ``/oauth/revoke``."""
    tokens = await sign_in_tokens(browser, http, base_url, scope="openid read:timesheets")
    form = {"client_id": "timesheets-spa", "token": tokens["access_token"]}
    async with http.post(base_url + "/oauth/revoke", data=form) as r:
        assert r.status == 200
    claims: dict[str, Any] = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    return claims


async def test_revocations_are_published_to_the_stream_and_republished_when_lost(
    browser: Browser,
    http: aiohttp.ClientSession,
    base_url: str,
    issuer: str,
    redis_url: str,
    seeded: dict[str, str],
) -> None:
    """The event contract of docs/CONTRACTS.md: {iss, jti, exp, reason} on <prefix>revocations; the
    provider re-publishes every unexpired revocation when the stream and its marker are gone."""
    access = await revoked_access_token(browser, http, base_url)
    stream = seeded["REDIS_KEY_PREFIX"] + "revocations"
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def events() -> list[dict[str, str]]:
            entries: Any = await client.xrange(stream)
            return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

        expected = {"iss": issuer, "jti": access["jti"], "exp": str(access["exp"]), "reason": "revoked"}
        assert expected in await events()
        await client.delete(stream, seeded["REDIS_KEY_PREFIX"] + "revocations:complete")  # Redis lost it
        deadline = time.monotonic() + 10  # REVOCATION_CHECK_SECONDS is 1 s in these tests
        while expected not in await events():
            assert time.monotonic() < deadline, "not re-published"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def test_a_stream_lost_without_its_marker_is_republished_and_never_restarted_partial(
    browser: Browser,
    http: aiohttp.ClientSession,
    base_url: str,
    issuer: str,
    redis_url: str,
    seeded: dict[str, str],
) -> None:
    """Redis evicting keys under memory pressure (an ``allkeys-*`` policy, a managed Redis's default)
    can drop the stream and keep its ``revocations:complete`` marker: the provider then never
    re-published, and the next revocation's ``XADD`` made a new stream holding only itself, so a
    gateway that started (or read from ``0``) afterwards accepted every token revoked before. The
    stream's absence is itself "incomplete": the next revocation re-publishes everything at once
    (``XADD NOMKSTREAM`` sees it gone), and the periodic check does too."""
    prefix = seeded["REDIS_KEY_PREFIX"]
    stream = prefix + "revocations"
    client = aioredis.Redis.from_url(redis_url)

    async def revoke() -> str:
        jti: str = (await revoked_access_token(browser, http, base_url))["jti"]
        return jti

    async def published() -> set[str]:
        entries: Any = await client.xrange(stream)
        return {fields[b"jti"].decode() for _, fields in entries if b"jti" in fields}

    try:
        before = await revoke()
        assert before in await published()
        deadline = time.monotonic() + 10  # the marker is set by the periodic check (1 s in these tests)
        while not await client.exists(prefix + "revocations:complete"):
            assert time.monotonic() < deadline, "no marker"
            await asyncio.sleep(0.1)
        await client.delete(stream)  # evicted; the marker stays
        after = await revoke()
        assert {before, after} <= await published()  # at once: the revocation re-published the rest
        await client.delete(stream)  # evicted again, and no revocation comes
        deadline = time.monotonic() + 10  # REVOCATION_CHECK_SECONDS is 1 s in these tests
        while not {before, after} <= await published():
            assert time.monotonic() < deadline, "the periodic check did not re-publish a lost stream"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def test_a_revocation_within_the_gateways_leeway_past_expiry_is_republished(
    browser: Browser,
    http: aiohttp.ClientSession,
    base_url: str,
    redis_url: str,
    seeded: dict[str, str],
    db: asyncpg.Connection,
) -> None:
    """A gateway accepts a token until ``exp`` plus its leeway (up to 300 s): when Redis lost the
    stream, a revoked token that expired a minute ago is re-published too, or a gateway that starts
    then would accept it for the rest of its leeway."""
    jti = (await revoked_access_token(browser, http, base_url))["jti"]
    expired = "UPDATE issued_tokens SET expires_at = now() - interval '60 seconds' WHERE jti = $1"
    await db.execute(expired, jti)
    stream = seeded["REDIS_KEY_PREFIX"] + "revocations"
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def published() -> list[bytes]:
            entries: Any = await client.xrange(stream)
            return [fields[b"jti"] for _, fields in entries]

        await client.delete(stream, seeded["REDIS_KEY_PREFIX"] + "revocations:complete")  # Redis lost it
        deadline = time.monotonic() + 10  # REVOCATION_CHECK_SECONDS is 1 s in these tests
        while jti.encode() not in await published():
            assert time.monotonic() < deadline, "a revocation still within the leeway was not re-published"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


@pytest.mark.parametrize("skew", [0, 3600, -3600])
async def test_the_stream_keeps_only_what_can_still_be_used(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, skew: int
) -> None:
    """Entries older than the retention (longest access-token lifetime + gateway leeway) are trimmed,
    their age measured on Redis's clock (entry ids are the milliseconds Redis added them at): a
    provider whose clock is an hour ahead of (or behind) Redis's trims the same entries, not every
    entry still needed (or none)."""
    from datetime import UTC, datetime

    from identity.revocation import RevocationPublisher
    from identity.store import RevokedToken
    from svckit.clock import SystemClock
    from svckit.db import Database
    from svckit.redisguard import RedisGuard

    guard = RedisGuard(redis_url, redis_prefix + f"trim{skew}:", timeout=0.5, retry_seconds=1)
    unused = Database("postgresql://unused@127.0.0.1:1/none")  # only Redis is touched below
    seconds, microseconds = await guard.client.time()
    redis_ms = seconds * 1000 + microseconds // 1000
    real_time = time.time
    # this process's clock, skewed (time.time and the kit's system clock, which bound it at import)
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    monkeypatch.setattr(SystemClock, "time", staticmethod(time.time))
    publisher = RevocationPublisher(guard, unused, "http://localhost:9000/", retention_seconds=60)
    soon = datetime.fromtimestamp(real_time() + 30, UTC)
    try:
        # written two minutes and half a minute ago, by Redis's clock
        for jti, age in (("old", 120), ("recent", 30)):
            entry_id = f"{redis_ms - age * 1000}-0"
            await guard.client.xadd(publisher.stream, {"iss": "x", "jti": jti, "exp": "0"}, id=entry_id)
        assert await publisher._append([RevokedToken("new", soon, "revoked")])
        await publisher.trim()
        entries: Any = await guard.client.xrange(publisher.stream)
        assert [fields[b"jti"] for _, fields in entries] == [b"recent", b"new"]
    finally:
        await guard.client.delete(publisher.stream)
        await guard.close()


async def feed_checks(base_url: str, after: float = 0.0) -> float:
    """The provider's periodic revocation checks completed so far (``background_task_runs_total`` of
    ``identity-revocation-feed``), once there are at least ``after`` (within 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        runs = sum(
            float(line.rsplit(" ", 1)[1])
            for line in (await scrape(base_url)).splitlines()
            if line.startswith("background_task_runs_total{")
            and 'task="identity-revocation-feed"' in line
            and 'outcome="ok"' in line
        )
        if runs >= after:
            return runs
        assert time.monotonic() < deadline, f"{runs} periodic revocation checks, not {after}"
        await asyncio.sleep(0.1)


async def test_a_restores_cutoff_is_published_republished_and_kept_from_the_trim(
    base_url: str, redis_url: str, seeded: dict[str, str], issuer: str, db: asyncpg.Connection
) -> None:
    """after-restore records a revocation cutoff (store.record_cutoff) while the provider is stopped;
    the provider publishes it as ``{iss, issued_before, until, reason}`` on the revocation stream,
    publishes it again when Redis lost the stream and its marker, and its periodic trim keeps the
    stream whole while a cutoff is held (an entry older than the retention included), trimming again
    once it ended."""
    from identity import store

    cutoff = await store.record_cutoff(db, reason="restore", keep_seconds=1200)
    expected = {
        "iss": issuer,
        "issued_before": str(int(cutoff.issued_before.timestamp())),
        "until": str(int(cutoff.keep_until.timestamp())),
        "reason": "restore",
    }
    prefix = seeded["REDIS_KEY_PREFIX"]
    stream, marker = prefix + "revocations", prefix + "revocations:complete"
    client = aioredis.Redis.from_url(redis_url)

    async def events() -> list[dict[str, str]]:
        entries: Any = await client.xrange(stream)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

    async def until_published(what: str) -> None:
        deadline = time.monotonic() + 10  # REVOCATION_CHECK_SECONDS is 1 s in these tests
        while expected not in await events():
            assert time.monotonic() < deadline, f"the cutoff was not {what}"
            await asyncio.sleep(0.2)

    try:
        await until_published("published")
        deadline = time.monotonic() + 5  # marked right after the XADD
        while not await db.fetchval(
            "SELECT published_at IS NOT NULL FROM revocation_cutoffs WHERE issued_before = $1",
            cutoff.issued_before,
        ):
            assert time.monotonic() < deadline, "the publication was not recorded"
            await asyncio.sleep(0.1)
        await client.delete(stream, marker)  # Redis lost everything
        await until_published("re-published")

        # the stream as a provider left it that published the cutoff long ago (older than the
        # retention, ACCESS_TOKEN_TTL_SECONDS + 300 s): while the cutoff is held nothing is trimmed
        await client.delete(stream)  # the marker stays: the periodic check trims, not re-publishes
        seconds, _ = await client.time()
        long_ago = (seconds - 3600) * 1000
        ancient = {"iss": issuer, "jti": "ancient", "exp": "0"}
        checks_before = await feed_checks(base_url)
        await client.xadd(stream, ancient, id=f"{long_ago}-0")  # type: ignore[arg-type]
        await client.xadd(stream, expected, id=f"{long_ago}-1")  # type: ignore[arg-type]
        await feed_checks(base_url, after=checks_before + 2)  # two periodic checks, run after the XADDs
        assert expected in await events(), "a held cutoff was trimmed"
        assert len(await events()) == 2

        await db.execute(
            "UPDATE revocation_cutoffs SET keep_until = now() - interval '1 second' WHERE issued_before = $1",
            cutoff.issued_before,
        )
        deadline = time.monotonic() + 10
        while await events():
            assert time.monotonic() < deadline, "the trim did not resume once the cutoff ended"
            await asyncio.sleep(0.2)
    finally:
        await db.execute("DELETE FROM revocation_cutoffs WHERE issued_before = $1", cutoff.issued_before)
        await client.aclose()


def test_a_replica_whose_clock_is_behind_a_held_cutoff_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The cutoff is Postgres's clock, a token's iat the replica's: a replica behind the database issues
    tokens the gateways refuse until its clock passes the cutoff — its log says so, every check."""
    import logging
    from datetime import UTC, datetime, timedelta

    from identity.revocation import RevocationPublisher
    from identity.store import Cutoff

    def held(offset: float) -> Cutoff:
        issued_before = datetime.fromtimestamp(time.time() + offset, UTC)
        return Cutoff(issued_before, issued_before + timedelta(seconds=1200), "restore")

    with caplog.at_level(logging.ERROR, logger="identity.revocation"):
        RevocationPublisher.check_clock([held(-5)])
        assert not caplog.records, "a clock past the cutoff: nothing to say"
        RevocationPublisher.check_clock([held(-5), held(30)])
    assert [record.getMessage() for record in caplog.records] == [
        "this replica's clock is behind the database's revocation cutoff: the tokens it issues until "
        "its clock passes the cutoff are refused by the gateways"
    ]
