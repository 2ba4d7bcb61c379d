"""The three services behind the gateway — timesheets, approvals and audit — run in the test's own
process on loopback, over a database of their own, wired to each other exactly as in production
(``AUDIT_URL``, ``TIMESHEETS_URL``), each connected as its own runtime role and its own Redis user,
under the session's Redis prefix (testkit.fixtures.ServiceRedis)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from audit.app import create_app as create_audit
from audit.settings import AuditSettings
from svckit.settings import load_settings
from timesheets.app import create_app as create_timesheets
from timesheets.settings import TimesheetsSettings

from testkit.client import wait_ready
from testkit.fixtures import (
    ServiceRedis,
    create_database,
    drop_database,
    free_port,
    migrate_schema,
    runtime_url,
    serve_app,
)

SERVICES = Path(__file__).resolve().parents[1] / "services"
NAMES = ("timesheets", "approvals", "audit")


@contextlib.asynccontextmanager
async def three_services(
    identity_keys: Mapping[str, str],
    redis: ServiceRedis,
    purpose: str,
    poll_seconds: float = 0.5,
    **env: str,
) -> AsyncIterator[dict[str, str]]:
    """The services' base URLs by name, ready (``/readyz`` 200); ``env`` is given to all three (the
    outbox relays poll every ``poll_seconds``). The database is dropped afterwards."""
    name = f"tsp_test_{purpose}_{secrets.token_hex(4)}"
    dsn = await create_database(name)
    try:
        for service in NAMES:
            await migrate_schema(dsn, service, SERVICES / service / service)
        ports = {service: free_port() for service in NAMES}
        urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}

        def settings_env(service: str, **more: str) -> dict[str, str]:
            own = {  # its own role and Redis user
                "DATABASE_URL": runtime_url(dsn, service),
                "REDIS_URL": redis.url(service),
                "REDIS_KEY_PREFIX": redis.prefix,
            }
            return {**identity_keys, "AUDIT_URL": urls["audit"], **env, **own, **more}

        poll = {"OUTBOX_POLL_INTERVAL_SECONDS": str(poll_seconds)}
        audit = create_audit(
            load_settings(AuditSettings, env=settings_env("audit"), audit_verify_interval_seconds=0)
        )
        timesheets = create_timesheets(
            load_settings(TimesheetsSettings, env=settings_env("timesheets", **poll))
        )
        approvals = create_approvals(
            load_settings(
                ApprovalsSettings, env=settings_env("approvals", TIMESHEETS_URL=urls["timesheets"], **poll)
            )
        )
        async with (
            serve_app(audit, ports["audit"]),
            serve_app(timesheets, ports["timesheets"]),
            serve_app(approvals, ports["approvals"]),
        ):
            for url in urls.values():
                await wait_ready(url)
            yield urls
    finally:
        await drop_database(name)
