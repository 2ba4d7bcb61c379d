"""Denials behind the gateway are on the audit trail too: an attacker inside the cluster who sends a
forged or replayed signed request straight to a service (bypassing the gateway), or a verified caller
refused a scope by the service itself, leaves an ``access.denied`` record naming the service (its
``source``), the reason, the route template, the method and how many were refused.

The timesheets, approvals and audit services run on loopback over a database of this module's own,
wired as in production; the denial window is short so that records arrive within the test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from svckit.identity import NONCE, SIGNATURE, Identity

from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    ServiceRedis,
    user,
)
from testkit.inprocess import three_services

SERVICES = Path(__file__).resolve().parents[2] / "services"
ALICE = user("alice", "read:timesheets", "create:timesheets")
MALLORY = user("mallory", "read:timesheets")  # verified, but without create:timesheets
CAROL = user("carol", "read:audit")
WINDOW = "0.2"
ADDRESS = "127.0.0.1"  # the peer: the test client on loopback


@dataclass
class Platform:
    urls: dict[str, str]
    audit: SignedApi
    timesheets: SignedApi


@pytest.fixture(scope="module")
async def platform(
    identity_keys: dict[str, str], service_redis: ServiceRedis, caller: Caller
) -> AsyncIterator[Platform]:
    async with three_services(
        identity_keys, service_redis, "svcdenials", poll_seconds=0.2, AUDIT_DENIAL_WINDOW_SECONDS=WINDOW
    ) as urls:
        platform = Platform(urls, SignedApi(urls["audit"], caller), SignedApi(urls["timesheets"], caller))
        try:
            yield platform
        finally:
            await platform.audit.close()
            await platform.timesheets.close()


async def send(url: str, method: str, headers: dict[str, str], body: bytes = b"") -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body or None, headers=headers) as response,
    ):
        await response.read()
        return response.status


def forged(caller: Caller, identity: Identity, method: str, url: str, body: bytes = b"") -> dict[str, str]:
    """Signed headers whose signature was tampered with (one character changed): what an attacker
    without the pair's key can send."""
    headers = caller.headers(identity, method, url, body=body)
    signature = headers[SIGNATURE]
    headers[SIGNATURE] = ("A" if signature[0] != "A" else "B") + signature[1:]
    return headers


async def denials(
    platform: Platform, source: str, expected: int, status: int | None = None, timeout: float = 15.0
) -> list[Any]:
    """The ``access.denied`` records of ``source`` (of ``status`` only, when given), once their counts
    add up to ``expected``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        params = {"action": "access.denied", "source": source, "limit": "100"}
        reply = await platform.audit.call("GET", "/audit/events", CAROL, params=params)
        assert reply.status == 200, reply.text
        items: list[Any] = [
            item for item in reply.body["items"] if status is None or item["details"]["status"] == status
        ]
        total = sum(item["details"]["count"] for item in items)
        if total >= expected or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.1)


def counts(items: list[Any]) -> Counter[tuple[int, str, str, str]]:
    tally: Counter[tuple[int, str, str, str]] = Counter()
    for item in items:
        details = item["details"]
        tally[(details["status"], details["reason"], details["method"], details["route"])] += details["count"]
    return tally


async def test_forged_and_replayed_requests_to_a_service_are_on_the_trail(
    platform: Platform, caller: Caller
) -> None:
    base = platform.urls["timesheets"]
    listing = base + "/timesheets"
    for _ in range(3):  # a forged signature, straight to the service
        assert await send(listing, "GET", forged(caller, ALICE, "GET", listing)) == 401
    url = base + "/timesheets/00000000-0000-0000-0000-000000000001"
    assert await send(url, "GET", forged(caller, ALICE, "GET", url)) == 401
    # a captured request sent again: accepted once, then refused as a replay
    body = b'{"date": "2026-11-23", "project": "Replayed", "hours": 1}'
    headers = {**caller.headers(ALICE, "POST", listing, body=body), "content-type": "application/json"}
    assert await send(listing, "POST", headers, body) == 201
    assert await send(listing, "POST", headers, body) == 401

    items = await denials(platform, "timesheets", 5)
    assert counts(items) == {
        (401, "bad_signature", "GET", "/timesheets"): 3,
        (401, "bad_signature", "GET", "/timesheets/{id}"): 1,
        (401, "replay", "POST", "/timesheets"): 1,
    }
    for item in items:
        assert item["outcome"] == "denied"
        assert item["source"] == "timesheets"
        # the identity did not verify: the claimed principal (alice) is not the actor
        assert item["actor"]["kind"] == "anonymous"
        assert item["actor"]["subject"] == "anonymous"
        assert item["actor"]["issuer"] == ""
        details = item["details"]
        assert item["resource"] == {"type": "route", "id": f"{details['method']} {details['route']}"}
        assert details["address"] == ADDRESS
        assert details["window_start"] < details["window_end"]
        assert headers[NONCE] not in str(item)  # nothing of the refused request's signature material


async def test_a_scope_refused_by_the_service_is_on_the_trail(platform: Platform) -> None:
    reply = await platform.timesheets.call(
        "POST", "/timesheets", MALLORY, json={"date": "2026-11-23", "project": "X", "hours": 1}
    )
    assert reply.status == 403, reply.text
    scoped = await denials(platform, "timesheets", 1, status=403)
    assert len(scoped) == 1, scoped
    assert scoped[0]["actor"]["subject"] == "mallory"  # verified: the caller is the actor
    assert scoped[0]["details"]["reason"] == "insufficient_scope"
    assert scoped[0]["details"]["route"] == "/timesheets"
    assert scoped[0]["details"]["method"] == "POST"
    assert scoped[0]["details"]["count"] == 1


async def test_forged_requests_to_approvals_are_on_the_trail(platform: Platform, caller: Caller) -> None:
    url = platform.urls["approvals"] + "/approvals"
    for _ in range(2):
        assert await send(url, "GET", forged(caller, ALICE, "GET", url)) == 401
    items = await denials(platform, "approvals", 2)
    assert counts(items) == {(401, "bad_signature", "GET", "/approvals"): 2}
    assert all(item["actor"]["kind"] == "anonymous" for item in items)


async def test_the_audit_service_records_its_own_refusals(platform: Platform, caller: Caller) -> None:
    # a forged sender at the ingest endpoint: recorded in process, never sent to itself over HTTP
    url = platform.urls["audit"] + "/internal/events"
    body = b'{"events": []}'
    service = Identity.service("timesheets")
    headers = {**forged(caller, service, "POST", url, body), "content-type": "application/json"}
    assert await send(url, "POST", headers, body) == 401
    items = await denials(platform, "audit", 1)
    assert counts(items) == {(401, "bad_signature", "POST", "/internal/events"): 1}
    assert items[0]["actor"]["kind"] == "anonymous"
