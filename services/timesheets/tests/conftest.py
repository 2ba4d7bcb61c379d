"""Timesheets under test: migrated in the session's own database, served on a real loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from svckit.settings import load_settings
from timesheets.app import create_app
from timesheets.settings import TimesheetsSettings

from testkit.client import SignedApi, wait_ready
from testkit.fixtures import Caller, ServiceRedis, migrate_schema, runtime_url, serve_app

PACKAGE = Path(__file__).resolve().parents[1] / "timesheets"


@pytest.fixture(scope="session")
def service_env(service_env: dict[str, str], service_redis: ServiceRedis) -> dict[str, str]:
    """Every timesheets service of this suite connects to Redis as its own ACL user, as in production
    (testkit.fixtures.ServiceRedis), never as the tests' admin URL."""
    return {**service_env, "REDIS_URL": service_redis.url("timesheets")}


@pytest.fixture(scope="session")
async def timesheets_database(database_url: str) -> str:
    await migrate_schema(database_url, "timesheets", PACKAGE)
    return database_url


@pytest.fixture(scope="session")
async def timesheets_url(timesheets_database: str, service_env: dict[str, str]) -> AsyncIterator[str]:
    # No audit service here: the relay keeps events in the outbox (asserted on directly).
    # As in production, the service runs as its runtime role; tests read rows as the owner (db).
    url = runtime_url(timesheets_database, "timesheets")
    env = {**service_env, "DATABASE_URL": url, "AUDIT_URL": "http://127.0.0.1:9"}
    settings = load_settings(TimesheetsSettings, env=env)
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        yield url


@pytest.fixture(scope="session")
async def api(timesheets_url: str, caller: Caller) -> AsyncIterator[SignedApi]:
    client = SignedApi(timesheets_url, caller)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def db(timesheets_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(timesheets_database, server_settings={"search_path": "timesheets"})
    yield conn
    await conn.close()
