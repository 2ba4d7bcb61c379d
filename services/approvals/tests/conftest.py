"""Approvals under test with a real timesheets service, both on loopback, one session database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from approvals.store import DecisionRow
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings

from testkit.client import SignedApi, wait_ready
from testkit.fixtures import Caller, ServiceRedis, TcpProxy, migrate_schema, runtime_url, serve_app

SERVICES = Path(__file__).resolve().parents[2]


def decision_row(**changes: Any) -> DecisionRow:
    """A row of ``decisions`` as the store reads it: a person's pending approval, but for ``changes``."""
    at = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)
    row = DecisionRow(
        id=uuid.uuid4(),
        entry_id=uuid.uuid4(),
        decision="approved",
        comment=None,
        approver_issuer="http://localhost:9000/",
        approver_subject="bob",
        approver_name="",
        approver_client="timesheets-spa",
        approver_kind="user",
        request_id="r",
        state="pending",
        void_reason=None,
        attempts=0,
        last_error=None,
        decided_at=at,
        applied_at=None,
        updated_at=at,
    )
    return dataclasses.replace(row, **changes)


@pytest.fixture(scope="session")
def service_env(service_env: dict[str, str], service_redis: ServiceRedis) -> dict[str, str]:
    """Every approvals service of this suite connects to Redis as its own ACL user, as in production
    (testkit.fixtures.ServiceRedis), never as the tests' admin URL; the timesheets service beside it
    as timesheets' (:func:`timesheets_url`)."""
    return {**service_env, "REDIS_URL": service_redis.url("approvals")}


@pytest.fixture(scope="session")
async def domain_database(database_url: str) -> str:
    await migrate_schema(database_url, "timesheets", SERVICES / "timesheets" / "timesheets")
    await migrate_schema(database_url, "approvals", SERVICES / "approvals" / "approvals")
    return database_url


@pytest.fixture(scope="session")
async def timesheets_url(
    domain_database: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> AsyncIterator[str]:
    url = runtime_url(domain_database, "timesheets")  # each service as its own runtime role and Redis user
    redis = service_redis.url("timesheets")
    env = {**service_env, "DATABASE_URL": url, "REDIS_URL": redis, "AUDIT_URL": "http://127.0.0.1:9"}
    async with serve_app(create_timesheets(load_settings(TimesheetsSettings, env=env))) as url:
        await wait_ready(url)
        yield url


@pytest.fixture(scope="session")
async def timesheets_link(timesheets_url: str) -> AsyncIterator[TcpProxy]:
    """Approvals reach timesheets through this proxy, so a test can cut the link."""
    port = int(timesheets_url.rsplit(":", 1)[1])
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    yield proxy
    await proxy.cut()


@pytest.fixture(scope="session")
async def approvals_url(
    domain_database: str, service_env: dict[str, str], timesheets_link: TcpProxy
) -> AsyncIterator[str]:
    env = {
        **service_env,
        "DATABASE_URL": runtime_url(domain_database, "approvals"),
        "TIMESHEETS_URL": f"http://127.0.0.1:{timesheets_link.port}",
        "AUDIT_URL": "http://127.0.0.1:9",
        "APPLY_TIMEOUT_SECONDS": "2",
        "RECONCILE_INTERVAL_SECONDS": "0.3",
        "RECONCILE_AFTER_SECONDS": "1",
    }
    async with serve_app(create_approvals(load_settings(ApprovalsSettings, env=env))) as url:
        await wait_ready(url)
        yield url


@pytest.fixture(scope="session")
async def timesheets(timesheets_url: str, caller: Caller) -> AsyncIterator[SignedApi]:
    client = SignedApi(timesheets_url, caller)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def approvals(approvals_url: str, caller: Caller) -> AsyncIterator[SignedApi]:
    client = SignedApi(approvals_url, caller)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def db(domain_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(domain_database)
    yield conn
    await conn.close()
