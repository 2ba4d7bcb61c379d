"""One process's wall clock off (NTP broke on its node), for real: the process restarted under
libfaketime (:mod:`testkit.faketime`) while the rest of the platform keeps the right time.

The fault is a server's, never the caller's: the user is not told that their token is bad (no 401, no
``invalid_token`` challenge: the SPA would renew and then ask for a new sign-in, which cannot help),
the answer names the cause (``identity_clock_skew``, ``token_clock_skew``), the refusal is counted
by reason on both sides, and the SRE sees the offset itself (``identity_clock_offset_seconds{sender}``
on the receiving service) — docs/runbook.md "Clock skew".

* a data service (timesheets) ahead by more than ``IDENTITY_MAX_SKEW_SECONDS``: the gateway's signed
  identities look stale to it;
* the gateway ahead: every service sees its identities from the future;
* the identity provider ahead: its tokens are issued (``iat``, ``nbf``) in the gateway's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from testkit import faketime
from testkit.fixtures import ServiceProcess, scrape
from testkit.oidc import Browser, sign_in_tokens

from .conftest import SCOPES, Figures, Stack, tag

pytestmark = pytest.mark.timeout(180)

#: well beyond the identity contract's window (IDENTITY_MAX_SKEW_SECONDS, 60 s by default) and the
#: gateway's token leeway, well within the access tokens' lifetime (900 s)
SKEW = 150


@contextlib.asynccontextmanager
async def skewed(service: ServiceProcess, seconds: int) -> AsyncIterator[None]:
    """``service`` restarted with its wall clock ``seconds`` off; restarted on time afterwards."""
    saved = dict(service.env)
    await asyncio.to_thread(service.stop)
    service.env.update(faketime.skewed_env(seconds))
    try:
        await asyncio.to_thread(service.start, "/readyz", 60)
        yield
    finally:
        await asyncio.to_thread(service.stop)
        service.env.clear()
        service.env.update(saved)
        await asyncio.to_thread(service.start, "/readyz", 60)


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a metrics exposition (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return 0.0


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.request(method, url, headers=headers, json=body) as response:
        text = await response.text()
        try:
            payload = await response.json(content_type=None) if text else {}
        except ValueError:
            payload = {"text": text}
        return response.status, payload, {key.lower(): value for key, value in response.headers.items()}


def assert_server_fault(
    status: int, body: dict[str, Any], headers: dict[str, str], reason: str, wanted: int
) -> None:
    """Not the caller's fault: no 401, no challenge that sends the SPA to sign in again."""
    assert status == wanted, (status, body)
    assert body.get("reason") == reason, body
    assert "www-authenticate" not in headers, headers


async def denied(http: aiohttp.ClientSession, stack: Stack, source: str, reason: str) -> list[Any]:
    """The ``access.denied`` records of ``source`` for ``reason`` (polled: they are delivered later)."""
    deadline = asyncio.get_running_loop().time() + 30
    params = {"action": "access.denied", "source": source, "limit": "100"}
    while True:
        async with http.get(
            f"{stack.api}/audit/events", params=params, headers=stack.headers("carol")
        ) as reply:
            assert reply.status == 200, await reply.text()
            items = [
                item for item in (await reply.json())["items"] if item["details"].get("reason") == reason
            ]
        if items or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.25)


def test_libfaketime_really_moves_the_wall_clock() -> None:
    """The premise of every case here: a preloaded process's :func:`time.time` is off by the offset."""
    assert abs(faketime.measured_offset(SKEW) - SKEW) < 5
    assert abs(faketime.measured_offset(-SKEW) + SKEW) < 5


async def test_a_data_service_clock_ahead(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    day = dt.date(1990, 1, 1) + dt.timedelta(days=random.randrange(3000))
    marker = tag()
    gateway_before = await scrape(stack.gateway.url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        async with skewed(stack.timesheets, SKEW):
            read = await call(http, "GET", f"{stack.api}/timesheets?limit=1", stack.headers("alice"))
            entry = {"date": day.isoformat(), "project": "Clock skew", "hours": 1, "notes": marker}
            write = await call(http, "POST", f"{stack.api}/timesheets", stack.headers("alice"), entry)
            service_metrics = await scrape(stack.timesheets.url)
        gateway_after = await scrape(stack.gateway.url)
        figures.record(
            "timesheets clock ahead",
            skew_seconds=SKEW,
            read=[read[0], read[1].get("reason")],
            write=[write[0], write[1].get("reason"), write[1].get("outcome")],
            observed_offset=sample(service_metrics, "identity_clock_offset_seconds", sender="gateway"),
        )
        assert_server_fault(*read, "identity_clock_skew", 502)
        assert_server_fault(*write, "identity_clock_skew", 502)
        assert write[1].get("outcome") == "not_stored", write[1]
        # what the gateway signed was refused by the service for its clock, counted there by reason …
        assert sample(service_metrics, "identity_verification_failures_total", reason="clock_skew") >= 2
        # … with the offset it saw: its clock minus the signed timestamp
        offset = sample(service_metrics, "identity_clock_offset_seconds", sender="gateway")
        assert SKEW - 5 <= offset <= SKEW + 5, offset
        # and at the gateway, by upstream and kind
        labels = {"service": "timesheets", "kind": "identity_clock_skew"}
        counted = sample(gateway_after, "gateway_upstream_errors_total", **labels) - sample(
            gateway_before, "gateway_upstream_errors_total", **labels
        )
        assert counted >= 2, counted
        # nothing was stored; on time again, the same request goes through
        status, listing, _ = await call(
            http, "GET", f"{stack.api}/timesheets?from={day}&to={day}", stack.headers("alice")
        )
        assert status == 200, listing
        assert [item for item in listing["items"] if item.get("notes") == marker] == []
        # the service's refusals are on the audit trail as its anonymous denials (flushed as it stopped)
        audited = await denied(http, stack, "timesheets", "clock_skew")
        assert sum(item["details"]["count"] for item in audited) >= 2, audited


async def test_the_gateway_clock_ahead(stack: Stack, figures: Figures) -> None:
    """Every service sees the gateway's identities from the future: each refuses them for the clock, and
    each shows the same negative offset for the sender ``gateway`` (which tells the SRE whose clock)."""
    await stack.ensure_up()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        async with skewed(stack.gateway, SKEW):
            read = await call(http, "GET", f"{stack.api}/timesheets?limit=1", stack.headers("alice"))
            approvals = await call(http, "GET", f"{stack.api}/approvals", stack.headers("bob"))
            offsets = {
                name: sample(await scrape(service.url), "identity_clock_offset_seconds", sender="gateway")
                for name, service in (("timesheets", stack.timesheets), ("approvals", stack.approvals))
            }
        figures.record(
            "gateway clock ahead",
            skew_seconds=SKEW,
            timesheets=[read[0], read[1].get("reason")],
            approvals=[approvals[0], approvals[1].get("reason")],
            observed_offsets=offsets,
        )
        assert_server_fault(*read, "identity_clock_skew", 502)
        assert_server_fault(*approvals, "identity_clock_skew", 502)
        for name, offset in offsets.items():
            assert -SKEW - 5 <= offset <= -SKEW + 5, (name, offset)
        status, _, _ = await call(http, "GET", f"{stack.api}/timesheets?limit=1", stack.headers("alice"))
        assert status == 200


async def test_the_identity_provider_clock_ahead(stack: Stack, figures: Figures) -> None:
    """Its tokens are issued in the gateway's future (``iat`` and ``nbf`` beyond the leeway): the
    signature verifies, so the token is the provider's and only a clock can be wrong — 503
    ``token_clock_skew`` with ``Retry-After``, not 401 ``invalid_token`` (a new sign-in would bring
    another token from the same clock)."""
    await stack.ensure_up()
    before = await scrape(stack.gateway.url)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=20), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with skewed(stack.identity, SKEW):
            tokens = await sign_in_tokens(
                Browser(stack.identity.url, http), http, stack.identity.url, "alice", scope=SCOPES["alice"]
            )
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            read = await call(http, "GET", f"{stack.api}/timesheets?limit=1", headers)
        after = await scrape(stack.gateway.url)
        figures.record(
            "identity provider clock ahead",
            skew_seconds=SKEW,
            read=[read[0], read[1].get("reason"), read[2].get("retry-after")],
        )
        assert_server_fault(*read, "token_clock_skew", 503)
        assert read[2].get("retry-after"), read[2]
        counted = sample(after, "gateway_auth_failures_total", reason="token_clock_skew") - sample(
            before, "gateway_auth_failures_total", reason="token_clock_skew"
        )
        assert counted >= 1, counted
