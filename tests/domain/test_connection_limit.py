"""A service at its connection limit (MAX_CONNECTIONS_PER_WORKER), reached through the real gateway.

The service answers a connection over its limit 503 (problem, ``Retry-After``) and closes it, before
it reads any request; the gateway, opening a fresh pooled connection to it, must relay that 503 — a
clear "try again shortly" whatever the method, since nothing was processed — and not turn it into a
502 or a 500; and once the connections that filled the service are gone, the gateway serves again
without a restart. Both ends run as processes, as deployed: ``python -m timesheets`` with a limit of
:data:`LIMIT`, ``python -m gateway`` with one worker.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.api import AUDIENCE, Issuer
from testkit.fixtures import ServiceProcess, ServiceRedis, runtime_url

EMPLOYEE = "openid read:timesheets create:timesheets delete:timesheets"
#: the timesheets worker's connection limit: the holders take all of it
LIMIT = 2


@pytest.fixture
def timesheets_at_limit(
    domain_database: str, service_env: dict[str, str], service_redis: ServiceRedis, tmp_path: Path
) -> Iterator[ServiceProcess]:
    env = {
        **service_env,
        "DATABASE_URL": runtime_url(domain_database, "timesheets"),  # its own role and Redis user
        "REDIS_URL": service_redis.url("timesheets"),
        "AUDIT_URL": "http://127.0.0.1:9",
        "MAX_CONNECTIONS_PER_WORKER": str(LIMIT),
    }
    with ServiceProcess("timesheets", env, log_dir=tmp_path).start("/readyz") as process:
        yield process


@pytest.fixture
def gateway_process(
    timesheets_at_limit: ServiceProcess,
    service_env: dict[str, str],
    service_redis: ServiceRedis,
    tmp_path: Path,
) -> Iterator[tuple[ServiceProcess, Issuer]]:
    issuer = Issuer()
    process = ServiceProcess(
        "gateway",
        {
            **service_env,
            "REDIS_URL": service_redis.url("gateway"),
            "OIDC_ISSUER": issuer.issuer,
            "OIDC_AUDIENCE": AUDIENCE,
            "TIMESHEETS_URL": timesheets_at_limit.url,
            "APPROVALS_URL": "http://127.0.0.1:9",
            "AUDIT_URL": "http://127.0.0.1:9",
            "GATEWAY_WORKERS": "1",
        },
        log_dir=tmp_path,
    )
    try:
        process.start("/readyz", timeout=60)
        yield process, issuer
    finally:
        process.stop()
        issuer.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    session: aiohttp.ClientSession, url: str, method: str, token: str, json: Any = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.request(
        method, url, json=json, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body, dict(response.headers)


def fill(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing: the service holds them open (idle) for its keep-alive
    period, 5 s, long enough for what follows."""
    host, port = url.removeprefix("http://").split(":")
    return [socket.create_connection((host, int(port))) for _ in range(count)]


async def test_a_service_at_its_connection_limit_is_a_503_through_the_gateway_until_it_has_room(
    gateway_process: tuple[ServiceProcess, Issuer],
    timesheets_at_limit: ServiceProcess,
    session: aiohttp.ClientSession,
) -> None:
    gateway, issuer = gateway_process
    token = issuer.token(f"alice-{uuid.uuid4().hex[:6]}", EMPLOYEE)
    api = gateway.url + "/api/timesheets"
    entry = {"date": "2026-11-23", "project": "Limits", "hours": 1.5, "notes": "at the limit"}

    await asyncio.sleep(0.2)  # the start-up probe's connection to the service has closed
    holders = fill(timesheets_at_limit.url, LIMIT)
    try:
        await asyncio.sleep(0.2)  # the service has accepted them
        for method, body in (("GET", None), ("POST", entry)):
            status, problem, headers = await call(session, api, method, token, body)
            assert status == 503, (method, problem, gateway.logs()[-3000:])
            assert headers["Content-Type"].startswith("application/problem+json"), method
            assert headers.get("Retry-After") == "1", (method, headers)
            assert problem["status"] == 503
            assert "connections" in problem["detail"], problem
        # a large body (a batch upload, sent whole after its head): refused as the head is read, the
        # rest discarded by the service's lingering close while the gateway still writes it
        uploader = issuer.token("client:batch", "batch:upload")
        big = b'{"entries": [' + b" " * (4 << 20) + b"]}"
        async with session.post(
            api + "/upload",
            data=big,
            headers={"Authorization": f"Bearer {uploader}", "Content-Type": "application/json"},
        ) as response:
            assert response.status == 503, await response.text()
            assert response.headers.get("Retry-After") == "1"
    finally:
        for holder in holders:
            holder.close()

    await asyncio.sleep(0.2)  # the service has seen them go
    status, listed, _ = await call(session, api, "GET", token)
    assert status == 200, listed
    assert listed["items"] == []  # the POST refused at the limit created nothing
    status, created, _ = await call(session, api, "POST", token, entry)
    assert status == 201, created
    logs = gateway.logs() + timesheets_at_limit.logs()
    assert "Traceback" not in logs
