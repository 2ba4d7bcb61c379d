"""The bundled provider and gateways in front of an echo upstream, as real processes.

What the revocation and restore tests share: the identity service migrated, seeded and serving as its
runtime role with its own Redis user, and one or more gateways (one worker each, as replicas) that
trust it and forward every ``/api/...`` call to an upstream answering with the path it was asked.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from svckit import redisacl

from testkit.fixtures import ServiceProcess, free_port, migrate_schema, runtime_env, serve_app
from testkit.oidc import BATCH_SECRET, DEMO_PASSWORD, run_cli
from testkit.redisproc import PrivateRedis, component_users

REPO = Path(__file__).resolve().parents[1]


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path})


@asynccontextmanager
async def echo_upstream() -> AsyncIterator[str]:
    """An upstream for every service URL of the gateway: answers 200 with the path."""
    app = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])])
    async with serve_app(app) as url:
        yield url


@dataclass
class ComponentRedis:
    server: PrivateRedis
    urls: dict[str, str]  # each component's own Redis user's URL (svckit.redisacl)


@contextmanager
def component_redis(prefix: str) -> Iterator[ComponentRedis]:
    """A private Redis whose users are the components' as in production (svckit.redisacl, named
    after the component, keys under ``prefix``), whose ACL file survives a restart; the default user
    stays the tests' own, for looking at keys."""
    passwords = {component: secrets.token_urlsafe(24) for component in redisacl.COMPONENTS}
    with PrivateRedis(acl=component_users(prefix, passwords)) as server:
        yield ComponentRedis(server, {c: server.url_for(c, password) for c, password in passwords.items()})


@dataclass
class ProviderStack:
    identity: ServiceProcess
    identity_env: dict[str, str]  # the runtime role's, as the pods and the admin commands run
    issuer: str
    gateways: list[ServiceProcess]
    gateway_env: dict[str, str]
    owner_url: str  # the migration role's database URL: what backs up and restores
    logs: Path

    @property
    def base(self) -> str:
        return self.issuer.rstrip("/")


@asynccontextmanager
async def provider_and_gateways(
    env: dict[str, str], redis_urls: dict[str, str], upstream: str, logs: Path, *, gateways: int = 1
) -> AsyncIterator[ProviderStack]:
    """``env``: the isolated owner's environment; ``redis_urls``: each component's Redis user's URL
    (svckit.redisacl). The processes are stopped when the block ends (those a test replaced too: the
    stack's lists are read then)."""
    port = free_port()
    issuer = f"http://localhost:{port}/"
    identity_env = {
        **env,
        "REDIS_URL": redis_urls["identity"],
        "IDENTITY_ISSUER": issuer,
        "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
        "DEMO_PASSWORD": DEMO_PASSWORD,
        "BATCH_CLIENT_SECRET": BATCH_SECRET,
        "REVOCATION_CHECK_SECONDS": "0.5",
        "REDIS_RETRY_SECONDS": "0.5",
    }
    await migrate_schema(env["DATABASE_URL"], "identity", REPO / "services" / "identity" / "identity")
    seeded = run_cli(identity_env, "seed")
    assert seeded.returncode == 0, seeded.stderr
    runtime = runtime_env(identity_env, "identity")
    identity = ServiceProcess("identity", runtime, port=port, log_dir=logs).start(wait_path="/readyz")
    gateway_env = {
        **env,
        "REDIS_URL": redis_urls["gateway"],
        "OIDC_ISSUER": issuer,
        "TIMESHEETS_URL": upstream,
        "APPROVALS_URL": upstream,
        "AUDIT_URL": upstream,
        "GATEWAY_WORKERS": "1",
        "AUDIT_DENIALS": "false",
        "REDIS_RETRY_SECONDS": "0.5",
        "SPA_DIST_DIR": str(logs),
    }
    stack = ProviderStack(identity, runtime, issuer, [], gateway_env, env["DATABASE_URL"], logs)
    try:
        for _ in range(gateways):
            stack.gateways.append(
                ServiceProcess("gateway", gateway_env, log_dir=logs).start(wait_path="/readyz")
            )
        yield stack
    finally:
        for process in [*stack.gateways, stack.identity]:
            process.stop()
