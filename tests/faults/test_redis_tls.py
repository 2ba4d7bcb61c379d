"""The whole platform on a Redis that speaks TLS only (``rediss://``), as a managed Redis with in-transit
encryption does: the five services, each as its own ACL user, verify the server against the CA named
in ``REDIS_TLS_CA_FILE`` (svckit.redistls) and do everything they do with Redis over it — the
provider's sign-in throttles, the gateway's JWKS cache and replay memory, the revocation stream from
the provider to the gateway (a blocking ``XREAD`` on a connection of its own), the services' replay
memory of signed requests. No plain port is open, so every connection seen is a TLS one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from svckit.redisguard import bounded_client
from svckit.redistls import resolve

from testkit.oidc import Browser, sign_in_tokens
from testkit.pgproc import PrivatePostgres
from testkit.pgtls import make_ca, make_server_cert
from testkit.redisproc import component_users
from testkit.redistls import TlsRedis

from .conftest import REDIS_PASSWORDS, REDIS_PREFIX, Stack

pytestmark = pytest.mark.timeout(180)

COMPONENTS = ("gateway", "identity", "timesheets", "approvals", "audit")


@pytest.fixture(scope="module")
async def tls_stack(
    private_postgres: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, TlsRedis]]:
    pki = tmp_path_factory.mktemp("redis-pki")
    ca = make_ca("managed redis CA")
    ca_file, _ = ca.write(pki, "ca")
    redis = TlsRedis(
        make_server_cert(ca, ["localhost"]), ca_file, acl=component_users(REDIS_PREFIX, REDIS_PASSWORDS)
    )
    redis.start()
    # a database of its own on the suite's server: the services' schemas as the other stacks have them
    admin = await asyncpg.connect(private_postgres.dsn)
    name = f"redistls_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    dsn = urlunsplit(urlsplit(private_postgres.dsn)._replace(path=f"/{name}"))
    stack = Stack(private_postgres, redis, tmp_path_factory.mktemp("redis-tls-logs"), dsn=dsn)
    for service in stack.services.values():
        service.env["REDIS_TLS_CA_FILE"] = str(ca_file)
    try:
        async with stack.running():
            yield stack, redis
    finally:
        redis.close()


async def redis_as_admin(redis: TlsRedis) -> aioredis.Redis:
    return bounded_client(redis.url, timeout=2.0, tls=resolve(redis.url, str(redis.ca_file)))


async def test_every_component_works_over_tls_redis(tls_stack: tuple[Stack, TlsRedis]) -> None:
    stack, redis = tls_stack
    async with aiohttp.ClientSession() as http:
        entry = {"date": "2031-02-03", "project": "TLS", "hours": 2}
        async with http.post(stack.api + "/timesheets", json=entry, headers=stack.headers("alice")) as reply:
            assert reply.status == 201, await reply.text()
            created = await reply.json()
        async with http.get(stack.api + "/timesheets", headers=stack.headers("alice")) as reply:
            assert reply.status == 200
            assert created["id"] in {item["id"] for item in (await reply.json())["items"]}
        async with http.get(stack.api + "/approvals", headers=stack.headers("bob")) as reply:
            assert reply.status == 200, await reply.text()

    admin = await redis_as_admin(redis)
    try:
        clients = await admin.client_list()
        users = {client["user"] for client in clients}
        assert set(COMPONENTS) <= users, users  # each component connected, as itself, over TLS
        keys = {key.decode() async for key in admin.scan_iter(match=f"{REDIS_PREFIX}*", count=1000)}
        assert any(":jwks" in key for key in keys), sorted(keys)[:20]
    finally:
        await admin.aclose()
    for name, service in stack.services.items():
        log = service.logs(tail=None)
        assert "redis unavailable" not in log, f"{name}: {log[-2000:]}"


async def test_a_revocation_reaches_the_gateway_over_the_tls_stream(
    tls_stack: tuple[Stack, TlsRedis],
) -> None:
    stack, _ = tls_stack
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        browser = Browser(stack.identity.url, http)
        tokens = await sign_in_tokens(
            browser, http, stack.identity.url, "alice", scope="openid read:timesheets"
        )
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with http.get(stack.api + "/timesheets", headers=headers) as reply:
            assert reply.status == 200
        asked = time.monotonic()
        form = {"client_id": "timesheets-spa", "token": tokens["access_token"]}
        async with http.post(stack.identity.url + "/oauth/revoke", data=form) as reply:
            assert reply.status == 200
        while True:
            async with http.get(stack.api + "/timesheets", headers=headers) as reply:
                if reply.status == 401:
                    break
            assert time.monotonic() - asked < 5.0, "the revoked token was still accepted after 5 s"
            await asyncio.sleep(0.05)
    print(f"revocation to 401 over TLS Redis: {time.monotonic() - asked:.3f} s")
