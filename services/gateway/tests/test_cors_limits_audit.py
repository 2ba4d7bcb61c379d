"""CORS, rate limits and the audit trail of denials."""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import uuid
from typing import Any

from prometheus_client import REGISTRY

from testkit.clock import FakeClock

from .conftest import Echo, Provider

SPA = "http://localhost:8080"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- CORS --------------------------------------------------------------------------------------


async def test_preflight_allowed_origin(api: Any, gateway: str, echo: Echo) -> None:
    before = echo.requests
    status, headers, _ = await api(
        "OPTIONS",
        f"{gateway}/api/timesheets/123",
        headers={
            "Origin": SPA,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == SPA
    assert headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD"
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in headers["Vary"]
    assert echo.requests == before  # never forwarded


async def test_a_browser_may_send_and_read_the_idempotency_headers(
    api: Any, gateway: str, provider: Provider
) -> None:
    """The published document offers ``Idempotency-Key`` on ``createEntry`` and ``uploadEntries`` (and
    a create whose outcome is unknown says to repeat with it): a browser on an allowed origin must be
    able to send it, and to read ``Idempotent-Replayed`` on the answer."""
    status, headers, _ = await api(
        "OPTIONS",
        f"{gateway}/api/timesheets",
        headers={
            "Origin": SPA,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type, idempotency-key"
    status, headers, _ = await api(
        "GET", f"{gateway}/api/timesheets", provider.token(), headers={"Origin": SPA}
    )
    assert status == 200
    exposed = {name.strip().lower() for name in headers["Access-Control-Expose-Headers"].split(",")}
    assert "idempotent-replayed" in exposed


async def test_preflight_other_origin_gets_no_allow_headers(api: Any, gateway: str, echo: Echo) -> None:
    before = echo.requests
    for origin in (
        "https://evil.example",
        "http://localhost:8080.evil.example",
        "null",
        "http://localhost:8081",
    ):
        status, headers, _ = await api(
            "OPTIONS",
            f"{gateway}/api/timesheets",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
        )
        assert status == 403
        assert not any(name.lower().startswith("access-control-allow") for name in headers)
    assert echo.requests == before


async def test_preflight_refuses_unknown_method_and_headers(api: Any, gateway: str) -> None:
    status, _headers, _ = await api(
        "OPTIONS",
        f"{gateway}/api/approvals",
        headers={"Origin": SPA, "Access-Control-Request-Method": "DELETE"},
    )
    assert status == 403
    status, _, _ = await api(
        "OPTIONS",
        f"{gateway}/api/approvals",
        headers={
            "Origin": SPA,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-evil",
        },
    )
    assert status == 403


async def test_actual_request_cors_headers(api: Any, gateway: str, provider: Provider) -> None:
    status, headers, _ = await api(
        "GET", f"{gateway}/api/timesheets", provider.token(), headers={"Origin": SPA}
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == SPA
    assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]
    # errors carry them too, so the SPA can read a 401 and sign in again
    status, headers, _ = await api("GET", f"{gateway}/api/timesheets", headers={"Origin": SPA})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == SPA
    status, headers, _ = await api(
        "GET", f"{gateway}/api/timesheets", provider.token(), headers={"Origin": "https://evil.example"}
    )
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers


# --- rate limits -------------------------------------------------------------------------------


async def test_rate_limit_per_subject(api: Any, start_gateway: Any, provider: Provider) -> None:
    async with start_gateway(rate_limit_per_subject=5, rate_limit_window_seconds=60) as gateway:
        token = provider.token(sub=f"busy-{uuid.uuid4().hex[:6]}")
        statuses = [(await api("GET", f"{gateway}/api/timesheets", token))[0] for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        status, headers, body = await api("GET", f"{gateway}/api/timesheets", token)
        assert status == 429
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert body["reason"] == "rate_limit_subject"
        # another subject of the same client is not affected
        other = provider.token(sub=f"calm-{uuid.uuid4().hex[:6]}")
        assert (await api("GET", f"{gateway}/api/timesheets", other))[0] == 200


async def test_rate_limit_per_client_shared_through_redis(
    api: Any, start_gateway: Any, provider: Provider, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}rl-{uuid.uuid4().hex[:6]}:"
    client = f"client-{uuid.uuid4().hex[:6]}"
    settings = {
        "rate_limit_per_client": 6,
        "rate_limit_sync_seconds": 0.05,
        "redis_key_prefix": prefix,
        # the test takes ~2 s: in a 60 s fixed window it straddled a window's end one run in 30 (every
        # count then starts again, and all four answers are 200); in the longest window, one in 1,800
        "rate_limit_window_seconds": 3600,
        # sharing is what is tested: a Redis reply slowed past the default 0.25 s by a loaded machine
        # would open the circuit, and the limiter rightly fails open for REDIS_RETRY_SECONDS
        "redis_timeout_seconds": 2.0,
    }
    async with start_gateway(**settings) as one, start_gateway(**settings) as two:
        for i in range(4):
            token = provider.token(sub=f"u{i}", azp=client)
            assert (await api("GET", f"{one}/api/timesheets", token))[0] == 200
        await asyncio.sleep(
            0.5
        )  # both replicas sync with Redis (every 0.05 s; generous for a loaded machine)
        results = []
        for i in range(4):
            token = provider.token(sub=f"v{i}", azp=client)
            results.append((await api("GET", f"{two}/api/timesheets", token))[0])
            await asyncio.sleep(0.4)  # replica two learns the global count at its next sync
        assert results == [200, 200, 429, 429]


# --- audit of denials ---------------------------------------------------------------------------


async def wait_for_events(echo: Echo, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = [event for event in echo.events if event["request_id"] == request_id]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no audit event for {request_id}")


def from_address(echo: Echo, address: str) -> list[dict[str, Any]]:
    """The aggregated denial records of one client address."""
    return [event for event in echo.events if event["details"].get("address") == address]


async def wait_for_address(echo: Echo, address: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = from_address(echo, address)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no aggregated audit record for {address}")


def unique_address() -> str:
    # IPv6 documentation prefix, a random /64 of it (the limits count an IPv6 client by its /64):
    # unique per test, valid in X-Forwarded-For
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


BEHIND_PROXY = {"gateway_trusted_proxies": ["127.0.0.1"]}


async def test_denials_reach_the_audit_trail_without_the_token(
    api: Any, start_gateway: Any, provider: Provider, echo: Echo
) -> None:
    # anonymous denials are counted per window (one record per reason, route and address); a
    # verified caller's 403 is a record of its own, with the request's id
    address = unique_address()
    bad = provider.token(aud="https://other.example")
    async with start_gateway(**BEHIND_PROXY) as gateway:
        for _ in range(3):
            status, _, _ = await api(
                "GET", f"{gateway}/api/timesheets", bad, headers={"X-Forwarded-For": address}
            )
            assert status == 401
        rid403 = f"deny-403-{uuid.uuid4().hex}"
        await api(
            "GET",
            f"{gateway}/api/audit/events",
            provider.token(sub="mallory"),
            headers={"X-Request-Id": rid403, "X-Forwarded-For": address},
        )
        [event403] = await wait_for_events(echo, rid403)
        records = await wait_for_address(echo, address)
    assert sum(event["details"]["count"] for event in records) == 3
    event401 = records[0]
    assert event401["action"] == "access.denied"
    assert event401["outcome"] == "denied"
    assert event401["source"] == "gateway"
    assert event401["actor"]["subject"] == "anonymous"
    assert event401["actor"]["kind"] == "anonymous"
    assert event401["resource"] == {"type": "route", "id": "GET /api/timesheets"}
    details = event401["details"]
    assert details["reason"] == "audience"
    assert details["status"] == 401
    assert details["route"] == "/api/timesheets"
    assert details["window_start"] < details["window_end"]
    assert event403["actor"]["subject"] == "mallory"
    assert event403["actor"]["issuer"] == provider.issuer
    assert event403["details"]["required_scope"] == "read:audit"
    assert event403["details"]["client_ip"] == address
    text = json.dumps(echo.events)
    assert bad not in text
    assert bad.split(".")[1] not in text


async def test_denials_wait_while_audit_is_down(
    api: Any, start_gateway: Any, provider: Provider, echo: Echo
) -> None:
    address = unique_address()
    async with start_gateway(**BEHIND_PROXY) as gateway:
        echo.audit_down = True
        try:
            status, _, _ = await api("GET", f"{gateway}/api/timesheets", headers={"X-Forwarded-For": address})
            assert status == 401
            await asyncio.sleep(0.8)  # the window (0.2 s) closed: the record is ready and retried
            assert not from_address(echo, address)
        finally:
            echo.audit_down = False
        [record] = await wait_for_address(echo, address, timeout=10)
    assert record["details"]["reason"] == "missing_token"
    assert record["details"]["count"] == 1


async def test_denial_queue_is_bounded(api: Any, start_gateway: Any, provider: Provider, echo: Echo) -> None:
    async with start_gateway(audit_queue_size=3) as gateway:
        echo.audit_down = True
        try:
            dropped = sample("gateway_audit_dropped_total")
            token = provider.token(sub=f"nosy-{uuid.uuid4().hex[:6]}")
            for _ in range(8):  # 403s: one record each, so they queue
                assert (await api("GET", f"{gateway}/api/audit/events", token))[0] == 403
            assert sample("gateway_audit_dropped_total") - dropped >= 5
        finally:
            echo.audit_down = False


async def test_a_flood_without_tokens_is_limited_per_address_and_counted_not_recorded(
    api: Any, start_gateway: Any, echo: Echo
) -> None:
    # The clock stands still (one rate-limit window, one audit window): the figures are exact.
    clock = FakeClock(start=1_800_000_000)  # a multiple of 60: windows start here
    address, other = unique_address(), unique_address()
    limit, flood = 50, 2000
    limited = sample("gateway_rate_limited_total", limit="address")
    statuses: collections.Counter[int] = collections.Counter()
    retry_after: set[str] = set()
    settings = {"rate_limit_anonymous_per_address": limit, "audit_denial_window_seconds": 60, **BEHIND_PROXY}
    async with start_gateway(clock, **settings) as gateway:

        async def one(source: str) -> None:
            status, headers, body = await api(
                "GET", f"{gateway}/api/timesheets", headers={"X-Forwarded-For": source}
            )
            statuses[status] += 1
            if status == 429:
                assert body["reason"] == "rate_limit_address"
                retry_after.add(headers["Retry-After"])

        for start in range(0, flood, 100):
            await asyncio.gather(*(one(address) for _ in range(start, min(flood, start + 100))))
        # another address is not affected by the first one's flood
        status, headers, _ = await api("GET", f"{gateway}/api/timesheets", headers={"X-Forwarded-For": other})
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="timesheets"'
        assert not from_address(echo, address)  # nothing on the trail while the window is open
    # stopping the gateway closed the open window: the records arrive now
    assert statuses == {401: limit, 429: flood - limit}
    # the clock did not move: the whole window is left, and at the next one's start the estimate is
    # still the limit (limit * (1 - 0)), below it just after: 61
    assert retry_after == {"61"}
    assert sample("gateway_rate_limited_total", limit="address") - limited == flood - limit
    records = from_address(echo, address)
    assert len(records) == 2
    counts = {event["details"]["reason"]: event["details"]["count"] for event in records}
    assert counts == {"missing_token": limit, "rate_limit_address": flood - limit}
    for event in records:
        details = event["details"]
        assert event["actor"]["kind"] == "anonymous"
        assert details["route"] == "/api/timesheets"
        assert details["window_start"] == "2027-01-15T08:00:00.000Z"
        assert details["window_end"] == "2027-01-15T08:00:00.000Z"  # the clock stood still
    assert [event["details"]["count"] for event in from_address(echo, other)] == [1]
