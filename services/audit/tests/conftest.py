"""Fixtures of the audit service's tests: the real app on loopback over this session's database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from audit.app import create_app
from audit.openapi import build_document
from audit.settings import AuditSettings
from svckit.identity import Identity
from svckit.settings import load_settings

from testkit.auditevents import make_event
from testkit.client import SignedApi
from testkit.fixtures import Caller, ServiceRedis, migrate_schema, runtime_env, serve_app, user

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
