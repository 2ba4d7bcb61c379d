"""The real edge in front of real services: gateway + timesheets + audit on loopback, one test database,
and an OIDC provider (discovery + JWKS) whose RSA key signs the tests' access tokens."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from audit.app import create_app as create_audit
from audit.settings import AuditSettings
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings

from testkit.fixtures import IsolatedEnv, ServiceRedis, migrate_schema, pair_fields, serve_app

SERVICES = Path(__file__).resolve().parents[2] / "services"
AUDIENCE = "https://timesheets.abc.example/api"


class Issuer:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.base = ""

    @property
    def issuer(self) -> str:
        return self.base + "/"

    def app(self) -> Starlette:
        jwk = {**RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}

        async def discovery(request: Request) -> JSONResponse:
            return JSONResponse({"issuer": self.issuer, "jwks_uri": self.base + "/jwks"})

        async def jwks(request: Request) -> JSONResponse:
            return JSONResponse({"keys": [jwk]})

        return Starlette(routes=[Route("/.well-known/openid-configuration", discovery), Route("/jwks", jwks)])

    def token(self, subject: str, *scopes: str, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "sub": subject,
            "aud": AUDIENCE,
            "azp": "timesheets-spa",
            "iat": now,
            "exp": now + 600,
            "scope": " ".join(scopes),
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})


@dataclass
class Edge:
    gateway: str
    timesheets: str
    audit: str
    issuer: Issuer
    other_issuer: Issuer
    database: str  # the owner's URL of the edge's own database


@pytest.fixture(scope="session")
async def edge(isolated_env: IsolatedEnv, service_redis: ServiceRedis) -> AsyncIterator[Edge]:
    """A database of its own, not the session's: this timesheets relays its outbox to a real audit
    service every 0.2 s until the session ends, and on the session's database it deleted the outbox
    rows that ``services/timesheets/tests`` assert on (their app relays nowhere) whenever a run put
    this file first (``make test``'s workers hand out files in another order)."""
    service_env = isolated_env("security_edge")
    database_url = service_env["DATABASE_URL"]
    await migrate_schema(database_url, "timesheets", SERVICES / "timesheets" / "timesheets")
    await migrate_schema(database_url, "audit", SERVICES / "audit" / "audit")
    issuer, other = Issuer(), Issuer()
    async with serve_app(issuer.app()) as issuer_url, serve_app(other.app()) as other_url:
        issuer.base, other.base = issuer_url, other_url
        audit_env = service_redis.runtime_env(service_env, "audit")  # its own role and Redis user
        audit_settings = load_settings(AuditSettings, env=audit_env, audit_verify_interval_seconds=0)
        async with serve_app(create_audit(audit_settings)) as audit_url:
            timesheets_settings = load_settings(
                TimesheetsSettings,
                env={**service_redis.runtime_env(service_env, "timesheets"), "AUDIT_URL": audit_url},
                outbox_poll_interval_seconds=0.2,
            )
            async with serve_app(create_timesheets(timesheets_settings)) as timesheets_url:
                gateway_settings = GatewaySettings(
                    **pair_fields(service_env),
                    oidc_issuer=[issuer.issuer, other.issuer],
                    oidc_audience=AUDIENCE,
                    redis_url=service_redis.url("gateway"),
                    redis_key_prefix=service_env["REDIS_KEY_PREFIX"] + "security:",
                    timesheets_url=timesheets_url,
                    approvals_url=timesheets_url,
                    audit_url=audit_url,
                    audit_flush_seconds=0.05,
                    audit_denial_window_seconds=0.2,
                    gateway_access_log=False,
                )
                async with serve_app(create_gateway(gateway_settings)) as gateway_url:
                    yield Edge(gateway_url, timesheets_url, audit_url, issuer, other, database_url)


@pytest.fixture(scope="session")
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)
