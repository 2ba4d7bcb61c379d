"""Cross-service tests of the approval rules: timesheets in-process, approvals as a real process that
can be killed, and between them an HTTP proxy that can lose or hold decision calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings
from yarl import URL

from testkit.client import SignedApi, wait_ready
from testkit.fixtures import (
    Caller,
    ServiceProcess,
    ServiceRedis,
    create_database,
    drop_database,
    free_port,
    migrate_schema,
    runtime_url,
    serve_app,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"

Mode = Literal["pass", "drop_request", "drop_response", "hold_before", "hold_after"]


class FaultProxy:
    """Forwards HTTP to ``upstream``; decision calls (``POST …/decision``) misbehave on demand.

    - ``drop_request``: the connection is cut before the request reaches the timesheets service;
    - ``drop_response``: the request is applied upstream, then the connection is cut (lost answer);
    - ``hold_before`` / ``hold_after``: the call hangs before / after reaching upstream until the test
      releases it (a released call is cut, never forwarded late) — the window to kill the caller in.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.mode: Mode = "pass"
        self.held = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: Mode) -> None:
        self.mode = mode
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    async def _forward(self, request: web.Request) -> tuple[int, bytes, str]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
        async with self._session.request(
            request.method,
            URL(self.upstream + request.raw_path, encoded=True),
            headers=headers,
            data=await request.read(),
        ) as response:
            return response.status, await response.read(), response.headers.get("content-type", "")

    async def _cut(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=599)  # never sent: the connection is gone

    async def handle(self, request: web.Request) -> web.StreamResponse:
        decision = request.method == "POST" and request.path.endswith("/decision")
        mode = self.mode if decision else "pass"
        if mode == "drop_request":
            return await self._cut(request)
        if mode == "hold_before":
            self.held.set()
            await self._release.wait()
            return await self._cut(request)
        status, body, content_type = await self._forward(request)
        if mode == "drop_response":
            return await self._cut(request)
        if mode == "hold_after":
            self.held.set()
            await self._release.wait()
            return await self._cut(request)
        response = web.Response(status=status, body=body)
        if content_type:
            response.headers["content-type"] = content_type
        return response

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture(scope="session")
async def domain_database(test_run_id: str) -> AsyncIterator[str]:
    """A database of these tests' own: no other test's reconciler or relay may touch their rows."""
    name = f"tsp_test_{test_run_id}_domain"
    url = await create_database(name)
    await migrate_schema(url, "timesheets", SERVICES / "timesheets" / "timesheets")
    await migrate_schema(url, "approvals", SERVICES / "approvals" / "approvals")
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
async def timesheets_url(
    domain_database: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> AsyncIterator[str]:
    url = runtime_url(domain_database, "timesheets")  # as in production: its own role and Redis user
    redis = service_redis.url("timesheets")
    env = {**service_env, "DATABASE_URL": url, "REDIS_URL": redis, "AUDIT_URL": "http://127.0.0.1:9"}
    async with serve_app(create_timesheets(load_settings(TimesheetsSettings, env=env))) as url:
        await wait_ready(url)
        yield url


@pytest.fixture
async def fault_proxy(timesheets_url: str) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(timesheets_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def approvals_env(
    domain_database: str, service_env: dict[str, str], service_redis: ServiceRedis, fault_proxy: FaultProxy
) -> dict[str, str]:
    return {
        **service_env,
        "DATABASE_URL": runtime_url(domain_database, "approvals"),
        "REDIS_URL": service_redis.url("approvals"),
        "TIMESHEETS_URL": fault_proxy.url,
        "AUDIT_URL": "http://127.0.0.1:9",
        "APPLY_TIMEOUT_SECONDS": "2",
        "APPLY_ATTEMPTS": "2",
        "RECONCILE_INTERVAL_SECONDS": "0.2",
        "RECONCILE_AFTER_SECONDS": "1",
    }


@pytest.fixture
def approvals_process(approvals_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    """``python -m approvals`` as in production (started by the test; stopped afterwards)."""
    process = ServiceProcess("approvals", approvals_env, log_dir=tmp_path)
    yield process
    process.stop()


@pytest.fixture(scope="session")
async def timesheets(timesheets_url: str, caller: Caller) -> AsyncIterator[SignedApi]:
    client = SignedApi(timesheets_url, caller)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def db(domain_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(domain_database)
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def signed_api(url: str, caller: Caller) -> AsyncIterator[SignedApi]:
    client = SignedApi(url, caller, timeout=20)
    try:
        yield client
    finally:
        await client.close()
