"""The audit service application: ingestion, search and verification of the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from svckit.app import create_service_app
from svckit.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable
from svckit.logs import configure_logging
from svckit.settings import load_settings

from .api import routes
from .openapi import build_document
from .settings import AuditSettings
from .store import AuditStore

SCHEMA = "audit"

log = logging.getLogger("audit")

UNREACHABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)


async def verify_periodically(store: AuditStore, interval: float) -> None:
    """Keep ``audit_chain_ok`` current for alerting; a broken chain is logged as an error."""
    await asyncio.sleep(min(interval, 30.0) * random.uniform(0.5, 1.0))
    while True:
        try:
            result = await store.verify()
            if result.ok:
                log.info("audit chain verified", extra={"checked": result.checked})
            else:
                log.error(
                    "audit chain is broken",
                    extra={"first_bad": result.first_bad, "reason": result.reason, "checked": result.checked},
                )
        except UNREACHABLE as exc:
            log.warning(
                "chain verification skipped: database unreachable", extra={"error": type(exc).__name__}
            )
        except Exception:
            log.exception("chain verification failed")
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))


def create_app(settings: AuditSettings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings(AuditSettings)
        configure_logging(settings.service_name, settings.log_level)
    database = Database.from_settings(settings, SCHEMA)
    store = AuditStore(database, SCHEMA)
    interval = settings.audit_verify_interval_seconds

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(verify_periodically(store, interval)) if interval > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return create_service_app(
        settings,
        routes,
        database=database,
        lifespan=lifespan,
        openapi=build_document(),
        state={"store": store, "verify_lock": asyncio.Lock()},
    )
