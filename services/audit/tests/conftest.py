"""Fixtures of the audit service's tests: the real app on loopback over this session's database."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jsonschema
import pytest
from audit.app import create_app
from audit.openapi import build_document
from audit.settings import AuditSettings
from svckit.identity import Identity
from svckit.settings import load_settings

from testkit.auditevents import make_event
from testkit.client import SignedApi, ingest_counts
from testkit.fixtures import (
    Caller,
    ServiceRedis,
    create_migrated_database,
    drop_database,
    migrate_schema,
    runtime_env,
    runtime_url,
    serve_app,
    user,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "audit"

AUDITOR = user("carol", "read:audit", name="Carol")
TIMESHEETS = Identity.service("timesheets")


@pytest.fixture(scope="session")
def service_env(service_env: dict[str, str], service_redis: ServiceRedis) -> dict[str, str]:
    """Every audit service of this suite connects to Redis as its own ACL user, as in production
    (testkit.fixtures.ServiceRedis), never as the tests' admin URL."""
    return {**service_env, "REDIS_URL": service_redis.url("audit")}


@pytest.fixture(scope="session")
async def audit_schema(database_url: str) -> str:
    await migrate_schema(database_url, "audit", PACKAGE_DIR)
    return database_url


async def wait_ready(url: str, timeout: float = 15.0) -> None:
    """The pool connects in the background after start-up; tests begin once /readyz says so."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} not ready within {timeout}s")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
async def audit_url(audit_schema: str, service_env: dict[str, str]) -> AsyncIterator[str]:
    env = runtime_env(service_env, "audit")  # as in production: the runtime role, not the owner
    settings = load_settings(AuditSettings, env=env, audit_verify_interval_seconds=0)
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        yield url


@pytest.fixture(scope="session")
async def api(audit_url: str, caller: Caller) -> AsyncIterator[SignedApi]:
    client = SignedApi(audit_url, caller)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def conforms() -> Callable[[str, Any], None]:
    """Assert that a response body matches its schema in the served OpenAPI document."""
    document = build_document()

    def check(model: str, body: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{model}", "components": document["components"]}
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)

    return check


EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def new_event() -> EventFactory:
    return make_event


@dataclass
class OwnTrail:
    """An audit service on a database of its own, ten events recorded: the tests that tamper with the
    records as the database's owner would (an attacker holding that role) break this trail, not the
    session's."""

    api: SignedApi
    dsn: str  # the owner's

    async def sql(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def row(self, seq: int) -> asyncpg.Record:
        conn = await asyncpg.connect(self.dsn)
        try:
            row = await conn.fetchrow(
                "SELECT *, details::text AS details FROM audit.records WHERE seq = $1", seq
            )
        finally:
            await conn.close()
        assert row is not None
        return row


@contextlib.asynccontextmanager
async def own_trail(
    identity_keys: dict[str, str], caller: Caller, env: dict[str, str] | None = None, **overrides: Any
) -> AsyncIterator[OwnTrail]:
    """:class:`OwnTrail`, its service set up with ``identity_keys``, ``env`` and ``overrides``
    (background verification off unless asked)."""
    name = f"tsp_test_audit_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name, "audit", PACKAGE_DIR)
    try:
        settings = load_settings(
            AuditSettings,
            env={"DATABASE_URL": runtime_url(dsn, "audit"), **identity_keys, **(env or {})},
            **{"audit_verify_interval_seconds": 0, **overrides},
        )
        async with serve_app(create_app(settings)) as url:
            await wait_ready(url)
            api = SignedApi(url, caller)
            try:
                events = [make_event(details={"n": n}) for n in range(10)]
                reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
                assert ingest_counts(reply.body) == {"accepted": 10, "duplicates": 0}
                yield OwnTrail(api, dsn)
            finally:
                await api.close()
    finally:
        await drop_database(name)
