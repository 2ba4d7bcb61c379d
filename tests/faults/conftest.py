"""The fault suite's platform: every service as a process of its own, on a Postgres and a Redis of the
suite's own, so that a test can kill, stop or freeze any part and start it again.

* :class:`Stack` — a private PostgreSQL (``testkit.pgproc``: never the machine's shared one), a private
  Redis (``testkit.redisproc``), and identity, timesheets, approvals, audit and the gateway started as
  ``python -m <service>`` on free ports, as ``make dev`` starts them; tokens of alice (employee), bob
  (manager) and carol (auditor) from the identity service's real code flow.
* :class:`Figures` — what the fault cases measured (outages, recovery times, p99, fetch rates). Written
  to ``test-output/faults.json`` and printed in pytest's terminal summary, so the figures are in every
  ``make test`` log without ``-s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from svckit import redisacl
from svckit.listen import url_host

from testkit.fixtures import (
    REPO_ROOT,
    SUMMARY,
    ServiceProcess,
    free_port,
    migrate_schema,
    new_pair_keys,
)
from testkit.oidc import BATCH_SECRET, DEMO_PASSWORD, Browser, run_cli, sign_in_tokens
from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis, component_users

SERVICES = REPO_ROOT / "services"
OUTPUT = REPO_ROOT / "test-output" / "faults.json"
REDIS_PREFIX = "faults:"
#: each component's Redis user on the private Redis (its ACL file: the users survive a restart)
REDIS_PASSWORDS = {component: secrets.token_urlsafe(24) for component in redisacl.COMPONENTS}
SCOPES = {
    "alice": "openid read:timesheets create:timesheets delete:timesheets",
    "bob": "openid read:timesheets approve:timesheets",
    "carol": "openid read:audit",
}


# ---- figures ---------------------------------------------------------------------------------------


class Figures:
    """Named measurements of the fault cases, in the order they were taken."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def record(self, case: str, **figures: Any) -> None:
        self.values.setdefault(case, {}).update(figures)
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(json.dumps(self.values, indent=2, default=str) + "\n")

    def lines(self) -> list[str]:
        return [f"{case}: {json.dumps(figures, default=str)}" for case, figures in self.values.items()]


FIGURES = Figures()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The figures so far ride on each fault test's report (:data:`testkit.fixtures.SUMMARY`): under
    ``pytest -n`` they are taken in a worker, and only the reports reach the terminal."""
    report = yield
    if report.when == "teardown" and FIGURES.values:
        report.user_properties.append(
            (SUMMARY + "fault suite figures (also in test-output/faults.json)", FIGURES.lines())
        )
    return report


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


# ---- the stack -------------------------------------------------------------------------------------


class Stack:
    """Five service processes on a private Postgres and Redis; each can be killed and started again.
    Each connects to Redis as its own ACL user (svckit.redisacl), as in production."""

    def __init__(
        self,
        postgres: PrivatePostgres,
        redis: PrivateRedis,
        logs: Path,
        *,
        dsn: str | None = None,
        host: str = "127.0.0.1",
        gateway_bind_host: str | None = None,
    ) -> None:
        """``dsn``: where the services find Postgres, if not at ``postgres`` itself (a proxy before it).
        ``host``: the address every service binds and is reached at, by the others and by the test
        (``::1``: an IPv6-only platform); ``gateway_bind_host``: the gateway's ``BIND_HOST``, if not
        ``host`` (only the test calls the gateway: ``::`` there, as the chart binds it, while the
        others keep ``host`` alone, so a peer reaching for another family fails)."""
        self.postgres = postgres
        self.dsn = dsn or postgres.dsn
        self.redis = redis
        self.logs = logs
        redis_url = {c: redis.url_for(c, password) for c, password in REDIS_PASSWORDS.items()}
        self.identity_keys = new_pair_keys("faults")
        port = free_port()
        self.issuer = f"http://{'localhost' if host == '127.0.0.1' else url_host(host)}:{port}/"
        common = {
            "DATABASE_URL": self.dsn,
            "REDIS_KEY_PREFIX": REDIS_PREFIX,
            **self.identity_keys,
            "LOG_LEVEL": "INFO",
            "DB_CONNECT_TIMEOUT_SECONDS": "2",
            "DB_STATEMENT_TIMEOUT_SECONDS": "2",  # a hung Postgres: 503 after this (test_postgres.py)
            "DB_LOCK_TIMEOUT_SECONDS": "0.5",  # a table locked too long: 503 after this (test_locks.py)
            "DB_MIGRATION_LOCK_TIMEOUT_SECONDS": "0.3",  # below it (test_locks.py: a migration's wait)
            "REDIS_RETRY_SECONDS": "0.5",
            "SHUTDOWN_TIMEOUT_SECONDS": "5",
        }
        audit = {
            "REDIS_URL": redis_url["audit"],
            # a listing's own limit below the statement bound (audit.settings)
            "AUDIT_READ_TIMEOUT_SECONDS": "1.5",
        }
        self.audit = ServiceProcess("audit", {**common, **audit}, log_dir=logs, host=host)
        relay = {
            "AUDIT_URL": self.audit.url,
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
            "OUTBOX_MAX_BACKOFF_SECONDS": "1",
        }
        self.identity = ServiceProcess(
            "identity",
            {
                **common,
                "REDIS_URL": redis_url["identity"],
                **relay,  # the provider's denials go to the audit trail too
                "IDENTITY_ISSUER": self.issuer,
                "CORS_ORIGINS_REFRESH_SECONDS": "1",  # test_provider_cors.py: re-read during an outage
                "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
                "IDENTITY_SESSION_SECRET": secrets.token_urlsafe(32),
                "DEMO_PASSWORD": DEMO_PASSWORD,
                "BATCH_CLIENT_SECRET": BATCH_SECRET,
            },
            port=port,
            log_dir=logs,
            host=host,
        )
        self.timesheets = ServiceProcess(
            "timesheets", {**common, **relay, "REDIS_URL": redis_url["timesheets"]}, log_dir=logs, host=host
        )
        self.approvals = ServiceProcess(
            "approvals",
            {
                **common,
                **relay,
                "REDIS_URL": redis_url["approvals"],
                "TIMESHEETS_URL": self.timesheets.url,
                "RECONCILE_INTERVAL_SECONDS": "0.5",
                "RECONCILE_AFTER_SECONDS": "1",
                "APPLY_TIMEOUT_SECONDS": "2",
            },
            log_dir=logs,
            host=host,
        )
        self.gateway_env = {
            **common,
            "REDIS_URL": redis_url["gateway"],
            "OIDC_ISSUER": self.issuer,
            "TIMESHEETS_URL": self.timesheets.url,
            "APPROVALS_URL": self.approvals.url,
            "AUDIT_URL": self.audit.url,
            "GATEWAY_WORKERS": "1",
            "RATE_LIMIT_PER_SUBJECT": "1000000",
            "RATE_LIMIT_PER_CLIENT": "1000000",
            "JWKS_MIN_TTL_SECONDS": "1",
            "JWKS_MAX_TTL_SECONDS": "10",  # keys go stale 10 s after a fetch (the issuer-down case)
            "SPA_DIST_DIR": str(logs),
            "GATEWAY_ACCESS_LOG": "false",
        }
        self.gateway = ServiceProcess(
            "gateway", self.gateway_env, log_dir=logs, host=host, bind_host=gateway_bind_host
        )
        self.tokens: dict[str, str] = {}

    @property
    def services(self) -> dict[str, ServiceProcess]:
        return {
            "identity": self.identity,
            "audit": self.audit,
            "timesheets": self.timesheets,
            "approvals": self.approvals,
            "gateway": self.gateway,
        }

    @property
    def api(self) -> str:
        return self.gateway.url + "/api"

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def prepare(self) -> None:
        for schema in ("identity", "timesheets", "approvals", "audit"):
            await migrate_schema(self.dsn, schema, SERVICES / schema / schema)
        seeded = await asyncio.to_thread(run_cli, {**os.environ, **self.identity.env}, "seed")
        assert seeded.returncode == 0, seeded.stderr

    async def start_all(self) -> None:
        await asyncio.to_thread(self.identity.start, "/readyz", 60)
        await asyncio.gather(
            *(asyncio.to_thread(s.start, "/readyz", 60) for s in (self.audit, self.timesheets))
        )
        await asyncio.gather(
            *(asyncio.to_thread(s.start, "/readyz", 60) for s in (self.approvals, self.gateway))
        )

    async def ensure_up(self) -> None:
        """Every service running and ready (a case that failed half-way may have left one down)."""
        self.postgres.resume()  # a case that failed while it was frozen
        if not self.postgres.running():
            await asyncio.to_thread(self.postgres.start)
        for service in self.services.values():
            if service.process is None or service.process.poll() is not None:
                await asyncio.to_thread(service.start, "/readyz", 60)
        for service in self.services.values():
            await wait_ready(service.url)

    async def sign_in(self) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for who, scope in SCOPES.items():
                browser = Browser(self.identity.url, http)
                tokens = await sign_in_tokens(browser, http, self.identity.url, who, scope=scope)
                self.tokens[who] = tokens["access_token"]
                http.cookie_jar.clear()
            form = {
                "grant_type": "client_credentials",
                "client_id": "timesheets-batch",
                "client_secret": BATCH_SECRET,
                "audience": "https://timesheets.abc.example/api",
            }
            async with http.post(self.identity.url + "/oauth/token", data=form) as response:
                body = await response.json()
                assert response.status == 200, body
                self.tokens["batch"] = body["access_token"]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Stack]:
        """Migrated and seeded, every service started and ready, the suite's users signed in; every
        service stopped at the end."""
        await self.prepare()
        try:
            await self.start_all()
            await self.sign_in()
            yield self
        finally:
            await asyncio.to_thread(self.stop_all)

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop(timeout=10)

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)


async def wait_ready(url: str, timeout: float = 30.0) -> float:
    """Seconds until ``url/readyz`` answers 200."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{url} not ready within {timeout}s")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    with PrivatePostgres() as server:
        yield server


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis(acl=component_users(REDIS_PREFIX, REDIS_PASSWORDS)) as server:
        yield server


@pytest.fixture(scope="session")
async def stack(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    stack = Stack(private_postgres, private_redis, tmp_path_factory.mktemp("fault-logs"))
    started = time.monotonic()
    await stack.prepare()
    try:
        await stack.start_all()
        await stack.sign_in()
        FIGURES.record("stack", started_in_seconds=round(time.monotonic() - started, 1))
        yield stack
    finally:
        await asyncio.to_thread(stack.stop_all)


def tag() -> str:
    return f"faults-{uuid.uuid4().hex[:12]}"
