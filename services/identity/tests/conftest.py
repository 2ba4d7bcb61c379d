"""Fixtures for the identity service's tests.

The service runs as a real process (``python -m identity``) against this session's own database,
seeded with ``python -m identity seed``; tests drive it over HTTP like a browser and an SDK would.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from testkit.clihost import CliHost
from testkit.fixtures import ServiceProcess, free_port, migrate_schema, runtime_env
from testkit.oidc import BATCH_SECRET, DEMO_PASSWORD, Browser, hosted_cli

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "identity"


@contextlib.contextmanager
def own_provider_process(
    seeded: dict[str, str], *, wait_path: str = "/readyz", **settings: str
) -> Iterator[ServiceProcess]:
    """A provider process of its own on a free port (its issuer named by that port), with
    ``settings`` over the seeded environment — limits and counters no other test shares — started
    once ``wait_path`` answers 200 (``/healthz`` for one that is never ready). The process itself, for
    a test that reads its logs; :func:`provider_url` is the base URL to drive it at."""
    port = free_port()
    env = {**seeded, "IDENTITY_ISSUER": provider_url(port) + "/", **settings}
    process = ServiceProcess("identity", env, port=port).start(wait_path=wait_path)
    try:
        yield process
    finally:
        process.stop()


def provider_url(port: int) -> str:
    """The base URL of a provider on ``port`` as its issuer names it (localhost, not
    ServiceProcess.url's 127.0.0.1): its cookies and redirects are for that host."""
    return f"http://localhost:{port}"


@contextlib.contextmanager
def own_provider(seeded: dict[str, str], **settings: str) -> Iterator[str]:
    """:func:`own_provider_process`, ready: its base URL while it runs."""
    with own_provider_process(seeded, **settings) as process:
        yield provider_url(process.port)


@pytest.fixture(scope="session")
def identity_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def issuer(identity_port: int) -> str:
    return f"http://localhost:{identity_port}/"


@pytest.fixture(scope="session")
def identity_env(service_env: dict[str, str], issuer: str, redis_user: Callable[..., str]) -> dict[str, str]:
    import os

    return {
        **os.environ,
        **service_env,
        # the provider's own Redis user, as in production (svckit.redisacl)
        "REDIS_URL": redis_user("identity", service_env["REDIS_KEY_PREFIX"], any_suffix=True),
        "IDENTITY_ISSUER": issuer,
        # the outbox relay of the provider's denials: no audit service here (nothing listens there, the
        # records wait in the outbox); test_identity_audit_trail.py runs one
        "AUDIT_URL": f"http://127.0.0.1:{free_port()}",
        "AUDIT_DENIAL_WINDOW_SECONDS": "0.5",  # records in the outbox soon after a refusal
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        "DEMO_PASSWORD": DEMO_PASSWORD,
        "BATCH_CLIENT_SECRET": BATCH_SECRET,
        "KEY_REFRESH_SECONDS": "1",
        "REVOCATION_CHECK_SECONDS": "1",
        "CORS_ORIGINS_REFRESH_SECONDS": "1",  # clients registered by a test are allowed soon
        "KEY_ROTATION_GRACE_SECONDS": "600",
        "LOGIN_MAX_FAILURES_PER_USER": "5",
        # the suite fails sign-ins from its one address by the dozen: run in one process (no xdist) it
        # used up 40 a window (test_signin_lockout.py and test_throttle_ipv6_prefix.py check the limit)
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
        # the suite has alice's codes issued far faster than a person would (test_identity_audit_trail.py
        # checks the limit on a provider of its own)
        "AUTHORIZE_MAX_CODES_PER_USER": "100000",
        # and refuses client authentications from one address (the tests' loopback) on purpose many
        # times, more than the default 30 a window once the client-secret rotation tests joined it
        # (test_client_auth_bounds.py and test_identity_admin.py check the limit on providers of their own)
        "CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS": "100000",
        # and has token and revocation requests refused from that one address on purpose, by the hundred
        # (test_token_failure_budget.py checks TOKEN_MAX_FAILURES_PER_ADDRESS on providers of its own)
        "TOKEN_MAX_FAILURES_PER_ADDRESS": "100000",
    }


@pytest.fixture(scope="session")
async def seeded(identity_env: dict[str, str], database_url: str, cli_host: CliHost) -> dict[str, str]:
    """Migrated and seeded as the owner (like the chart's migration Job); what it returns runs the
    service and its admin commands as the runtime role, as in production. ``seed`` runs in the
    command host (test_identity_admin runs it as a real process)."""
    await migrate_schema(database_url, "identity", PACKAGE_DIR)
    result = hosted_cli(cli_host, identity_env, "seed")
    assert result.returncode == 0, result.stderr
    return runtime_env(identity_env, "identity")


@pytest.fixture(scope="session")
def identity_service(seeded: dict[str, str], identity_port: int) -> Iterator[ServiceProcess]:
    process = ServiceProcess("identity", seeded, port=identity_port)
    process.start(wait_path="/readyz")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def base_url(identity_service: ServiceProcess, issuer: str) -> str:
    return issuer.rstrip("/")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    yield conn
    await conn.close()


@pytest.fixture
async def browser(base_url: str) -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Browser(base_url, session)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Tokens:
    raw: dict[str, Any]
    access: dict[str, Any]
    access_header: dict[str, Any]
    id: dict[str, Any] | None


@pytest.fixture
def verify(base_url: str, issuer: str) -> Any:
    """Verify tokens the way the gateway and an SDK would: keys from the JWKS, claims checked."""

    async def check(
        raw: dict[str, Any], client_id: str, audience: str = "https://timesheets.abc.example/api"
    ) -> Tokens:
        jwks_client = jwt.PyJWKClient(base_url + "/.well-known/jwks.json")
        access_token = raw["access_token"]
        key = jwks_client.get_signing_key_from_jwt(access_token)
        access = jwt.decode(
            access_token, key.key, algorithms=["RS256", "ES256"], audience=audience, issuer=issuer
        )
        header = jwt.get_unverified_header(access_token)
        id_claims = None
        if "id_token" in raw:
            id_key = jwks_client.get_signing_key_from_jwt(raw["id_token"])
            id_claims = jwt.decode(
                raw["id_token"], id_key.key, algorithms=["RS256", "ES256"], audience=client_id, issuer=issuer
            )
        return Tokens(raw, access, header, id_claims)

    return check
