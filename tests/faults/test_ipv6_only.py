"""The whole platform on IPv6 alone: what an IPv6-only cluster gives it, nothing of IPv4 anywhere.

A private Postgres and a private Redis listen on ``::1`` only (nothing answers on 127.0.0.1); every
service binds ``::1`` and is reached there — peer URLs, the issuer, ``DATABASE_URL`` and ``REDIS_URL``
all ``[::1]`` literals — except the gateway, which binds ``::`` as the chart binds every service
(``network.bindHost``) and which only the test calls. Binding the others to ``::1`` alone is on
purpose: with ``::`` a component that quietly reached for 127.0.0.1 (a default, a parsed-away
bracket) would still get through. A real flow then runs through the gateway: sign-in at the identity
service (its code flow with PKCE), an entry created, approved, and the audit trail read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.fixtures import scrape
from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis, component_users

from .conftest import REDIS_PASSWORDS, REDIS_PREFIX, Stack

pytestmark = pytest.mark.timeout(150)

IPV6_LOOPBACK = "::1"


def answers_on_ipv4(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ipv6_postgres() -> Iterator[PrivatePostgres]:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    with PrivatePostgres(host=IPV6_LOOPBACK) as server:
        yield server


@pytest.fixture(scope="module")
def ipv6_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis(acl=component_users(REDIS_PREFIX, REDIS_PASSWORDS), host=IPV6_LOOPBACK) as server:
        yield server


@pytest.fixture(scope="module")
async def ipv6_stack(
    ipv6_postgres: PrivatePostgres, ipv6_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    stack = Stack(
        ipv6_postgres,
        ipv6_redis,
        tmp_path_factory.mktemp("ipv6-logs"),
        host=IPV6_LOOPBACK,
        gateway_bind_host="::",
    )
    async with stack.running():
        yield stack


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as reply:
        return reply.status, await reply.json(content_type=None)


async def trail_of(http: aiohttp.ClientSession, stack: Stack, entry_id: str) -> set[str]:
    """The audit actions recorded about ``entry_id`` once all three arrived (delivered by the outboxes)."""
    wanted = {"timesheet.created", "approval.decided", "timesheet.decided"}
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        url = f"{stack.api}/audit/events?limit=100&resource_id={entry_id}"
        status, page = await call(http, "GET", url, stack.headers("carol"))
        assert status == 200, page
        actions = {item["action"] for item in page["items"]}
        if wanted <= actions or asyncio.get_running_loop().time() > deadline:
            return actions
        await asyncio.sleep(0.2)


def test_the_backends_take_ipv6_only(ipv6_postgres: PrivatePostgres, ipv6_redis: PrivateRedis) -> None:
    """The premise: an IPv4 assumption anywhere between the services and their stores would fail."""
    assert not answers_on_ipv4(ipv6_postgres.port)
    assert not answers_on_ipv4(ipv6_redis.port)
    assert "[::1]" in ipv6_postgres.dsn
    assert "[::1]" in ipv6_redis.url


async def test_a_real_flow_through_the_gateway_on_ipv6_alone(ipv6_stack: Stack) -> None:
    stack = ipv6_stack
    for name, service in stack.services.items():
        addresses = {k: v for k, v in service.env.items() if k.endswith(("_URL", "_ISSUER"))}
        assert addresses, name
        assert all("[::1]" in v for v in addresses.values()), (name, addresses)
        if name != "gateway":  # bound to ::1 alone: nothing of the platform answers on IPv4
            assert not answers_on_ipv4(service.port), name
    assert stack.gateway.url.startswith("http://[::1]:")

    day = dt.date(2030, 1, 1) + dt.timedelta(days=random.randrange(3000))
    marker = f"ipv6-{uuid.uuid4().hex[:12]}"
    entry = {"date": day.isoformat(), "project": "IPv6 only", "hours": 2, "notes": marker}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        alice = {**stack.headers("alice"), "Idempotency-Key": str(uuid.uuid4())}
        status, created = await call(http, "POST", f"{stack.api}/timesheets", alice, entry)
        assert status == 201, (created, entry)
        decision = {"decision": "approved"}
        status, decided = await call(
            http, "PUT", f"{stack.api}/approvals/{created['id']}", stack.headers("bob"), decision
        )
        assert status == 200, decided
        status, read = await call(
            http, "GET", f"{stack.api}/timesheets/{created['id']}", stack.headers("alice")
        )
        assert status == 200, read
        assert read["notes"] == marker
        actions = await trail_of(http, stack, created["id"])
        assert {"timesheet.created", "approval.decided", "timesheet.decided"} <= actions, actions
    for name, service in stack.services.items():  # the metrics listeners, on the same address
        exposition = await scrape(service.url)
        families = {family.name: family for family in text_string_to_metric_families(exposition)}
        assert families, name
        if name == "gateway":  # a label holding an IPv6 literal (the issuer) is still a valid exposition
            issuers = {s.labels["issuer"] for s in families["gateway_jwks_key_age_seconds"].samples}
            assert issuers == {stack.issuer}, issuers
