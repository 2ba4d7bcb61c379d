"""Gateway test rig: a real OIDC provider, a real echo upstream and real gateways, all on loopback.

* :class:`Provider` — a small Starlette app serving discovery and JWKS for its own RSA, EC and
  Ed25519 keys; tests rotate keys, take it down, and count how often it was asked.
* :class:`Echo` — stands in for every upstream: verifies the gateway-signed identity with the kit's
  :class:`IdentityVerifier` (as the real services do) and echoes what it received; it also plays the
  audit service's ``POST /internal/events``.
* ``start_gateway(**settings)`` — a gateway instance (in-process uvicorn) with its own Redis prefix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from gateway.app import create_app
from gateway.settings import GatewaySettings
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from multidict import CIMultiDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.identity import (
    GATEWAY,
    IdentityError,
    IdentityVerifier,
    identity_headers,
    pair_variable,
    request_target,
)
from svckit.settings import parse_identity_keys

from testkit.fixtures import serve_app

AUDIENCE = "https://timesheets.abc.example/api"
#: the gateways a test starts are replicas of one deployment: they share the JWKS copies in Redis
CACHE_SECRET = "gateway-tests-jwks-cache-mac-secret-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


class Provider:
    """A standards-shaped OIDC provider (discovery + JWKS) with keys the test controls."""

    def __init__(self) -> None:
        self.base = ""
        self.keys: dict[str, tuple[Any, str]] = {}
        self.published: list[str] = []
        self.discovery_hits = 0
        self.jwks_hits = 0
        self.down = False
        self.max_age = 600
        self.delay = 0.0  # before each JWKS answer
        self.discovery_delay = 0.0  # before each discovery answer
        self.discovery_issuer: str | None = None  # the issuer discovery names (None: its own)
        self.add_key("rsa-1", "RS256")
        self.add_key("ec-1", "ES256")
        self.add_key("ed-1", "EdDSA")
        self.add_key("rsa-pss", "PS256")

    @property
    def issuer(self) -> str:
        return self.base + "/"

    def add_key(self, kid: str, alg: str, publish: bool = True) -> None:
        if alg in ("RS256", "PS256"):
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        self.keys[kid] = (key, alg)
        if publish:
            self.published.append(kid)

    def public_jwk(self, kid: str) -> dict[str, Any]:
        key, alg = self.keys[kid]
        public = key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": kid, "alg": alg, "use": "sig"}

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            self.discovery_hits += 1
            if self.discovery_delay:
                await asyncio.sleep(self.discovery_delay)
            if self.down:
                return Response("down", status_code=503)
            issuer = self.discovery_issuer or self.issuer
            return JSONResponse({"issuer": issuer, "jwks_uri": self.base + "/jwks"})

        async def jwks(request: Request) -> Response:
            self.jwks_hits += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.down:
                return Response("down", status_code=503)
            return JSONResponse(
                {"keys": [self.public_jwk(kid) for kid in self.published]},
                headers={"Cache-Control": f"public, max-age={self.max_age}"},
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
            ]
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": [AUDIENCE, self.issuer + "userinfo"],
            "azp": "timesheets-spa",
            "iat": now,
            "exp": now + 600,
            "scope": "openid read:timesheets",
            "jti": uuid.uuid4().hex,
        }
        for key, value in overrides.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def token(self, kid: str = "rsa-1", headers: dict[str, Any] | None = None, **claims: Any) -> str:
        key, alg = self.keys[kid]
        return jwt.encode(
            self.claims(**claims),
            key,
            algorithm=alg,
            headers={"kid": kid, "typ": "at+jwt", **(headers or {})},
        )

    def scoped(self, *scopes: str, subject: str = "alice", **claims: Any) -> str:
        return self.token(sub=subject, scope=" ".join(scopes), **claims)


class Echo:
    """Every upstream at once: verifies the signed identity, echoes the request, ingests audit events."""

    def __init__(self, identity_keys: dict[str, str]) -> None:
        # the gateway's keys towards each of the three upstreams this one stands in for
        gateway = {
            kid: secret
            for upstream in ("timesheets", "approvals", "audit")
            for kid, secret in parse_identity_keys(identity_keys[pair_variable(GATEWAY, upstream)]).items()
        }
        self.verifier = IdentityVerifier({GATEWAY: gateway})
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.audit_down = False

    def app(self) -> Starlette:
        async def events(request: Request) -> Response:
            identity = self._verify(request)
            if isinstance(identity, Response):
                return identity
            if self.audit_down:
                return Response("down", status_code=503)
            if identity.kind != "service":
                return JSONResponse({"detail": "service principals only"}, status_code=403)
            document = await request.json()
            self.events.extend(document["events"])
            return JSONResponse({"accepted": len(document["events"]), "duplicates": 0})

        async def echo(request: Request) -> Response:
            self.requests += 1
            identity = self._verify(request)
            if isinstance(identity, Response):
                return identity
            if request.url.path.endswith("/slow"):
                await asyncio.sleep(float(request.query_params.get("s", "3")))
            body = await request.body()
            if request.url.path.endswith("/big"):
                size = int(request.query_params.get("n", "300000"))  # more than the buffers hold
                return Response(b"x" * size, media_type="application/octet-stream")
            return JSONResponse(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "raw_path": request.scope["raw_path"].decode(),
                    "query": request.scope["query_string"].decode(),
                    "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
                    "identity": {
                        "issuer": identity.issuer,
                        "subject": identity.subject,
                        "kind": identity.kind,
                        "client_id": identity.client_id,
                        "scopes": sorted(identity.scopes),
                        "name": identity.name,
                    },
                    "body_length": len(body),
                },
                headers={
                    "X-Upstream": "echo",
                    "Connection": "keep-alive",
                    "X-Request-Id": "upstream-id-ignored",
                },
            )

        return Starlette(
            routes=[
                Route("/internal/events", events, methods=["POST"]),
                Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            ]
        )

    def _verify(self, request: Request) -> Any:
        target = request_target(request.scope["raw_path"].decode("latin-1"), request.scope["query_string"])
        try:
            headers = identity_headers(request.scope["headers"])
            return self.verifier.verify(headers, method=request.method, target=target)
        except IdentityError as exc:
            return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=401)


@pytest.fixture(scope="session")
async def provider() -> AsyncIterator[Provider]:
    provider = Provider()
    async with serve_app(provider.app()) as url:
        provider.base = url
        yield provider


@pytest.fixture(scope="session")
async def echo(identity_keys: dict[str, str]) -> AsyncIterator[Echo]:
    echo = Echo(identity_keys)
    async with serve_app(echo.app()) as url:
        echo.url = url  # type: ignore[attr-defined]
        yield echo


StartGateway = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture(scope="session")
def start_gateway(
    provider: Provider,
    echo: Echo,
    identity_keys: dict[str, str],
    redis_user: Callable[..., str],
    redis_prefix: str,
) -> StartGateway:
    # the gateway's own Redis user, as in production (svckit.redisacl), for every prefix a test draws
    gateway_redis = redis_user("gateway", redis_prefix, any_suffix=True)

    @contextlib.asynccontextmanager
    async def start(clock: Clock = SYSTEM_CLOCK, **overrides: Any) -> AsyncIterator[str]:
        async with serve_app(create_app(gateway_settings(**overrides), clock)) as url:
            yield url

    def gateway_settings(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            **{name.lower(): value for name, value in identity_keys.items()},
            "oidc_issuer": [provider.issuer],
            "oidc_audience": AUDIENCE,
            "redis_url": gateway_redis,
            "redis_key_prefix": f"{redis_prefix}gw-{secrets.token_hex(4)}:",
            "gateway_cache_secret": CACHE_SECRET,  # as on every replica of one deployment
            "timesheets_url": echo.url,  # type: ignore[attr-defined]
            "approvals_url": echo.url,  # type: ignore[attr-defined]
            "audit_url": echo.url,  # type: ignore[attr-defined]
            "audit_flush_seconds": 0.05,
            "audit_denial_window_seconds": 0.2,  # aggregated denials reach the echo within ~0.3 s
            # every test calls from 127.0.0.1, and many send bad tokens on purpose: the per-address
            # limit of anonymous denials is tested on its own, with a limit of its own
            "rate_limit_anonymous_per_address": 1_000_000,
            "cors_origins": ["http://localhost:8080"],
            "gateway_access_log": False,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    start.settings = gateway_settings  # type: ignore[attr-defined]
    return start


@pytest.fixture(scope="session")
async def gateway(start_gateway: StartGateway) -> AsyncIterator[str]:
    async with start_gateway() as url:
        yield url


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # bounded: a hang shows up as a failing request with a traceback, not as a stuck session
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, CIMultiDict[str], Any]:
    """One request; returns (status, headers, parsed JSON body or raw bytes)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, headers=all_headers, allow_redirects=False, **kwargs) as response:
        raw = await response.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        return response.status, CIMultiDict(response.headers), body


Api = Callable[..., Any]


@pytest.fixture(scope="session")
def api(http: aiohttp.ClientSession) -> Api:
    async def bound(method: str, url: str, token: str | None = None, **kwargs: Any) -> Any:
        return await call(http, method, url, token, **kwargs)

    return bound


def process_env(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str, **extra: str
) -> dict[str, str]:
    """Environment for ``python -m gateway`` in front of the echo upstream (tests of the real process)."""
    return {
        **identity_keys,
        "OIDC_ISSUER": provider.issuer,
        "OIDC_AUDIENCE": AUDIENCE,
        "REDIS_KEY_PREFIX": f"{redis_prefix}proc-{uuid.uuid4().hex[:6]}:",
        "GATEWAY_CACHE_SECRET": CACHE_SECRET,
        "TIMESHEETS_URL": echo.url,  # type: ignore[attr-defined]
        "APPROVALS_URL": echo.url,  # type: ignore[attr-defined]
        "AUDIT_URL": echo.url,  # type: ignore[attr-defined]
        **extra,
    }
