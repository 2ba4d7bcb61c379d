"""The audit service application: ingestion, search and verification of the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from svckit.app import create_service_app
from svckit.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable
from svckit.logs import configure_logging
from svckit.settings import load_settings

from .api import routes
from .models import MAX_BATCH, MAX_DETAILS_BYTES, Anchor
from .openapi import build_document
from .settings import AuditSettings
from .store import AuditStore, Verification

SCHEMA = "audit"
# A full batch of events with the largest details, plus room for the rest of each event: a relay's
# batch must never be refused for its size alone.
MAX_BODY_BYTES = MAX_BATCH * MAX_DETAILS_BYTES + (2 << 20)

log = logging.getLogger("audit")

UNREACHABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)


class BackgroundVerifier:
    """Keeps ``audit_chain_ok`` current: cheap incremental walks, a full walk now and then.

    An incremental run starts at the head the previous run verified (which must still be there,
    unchanged) and recomputes only what was appended since; a full run walks from seq 1 and so also
    catches tampering with older records. A broken chain is logged as an error and forces the next
    run to be a full one.
    """

    def __init__(self, store: AuditStore, interval: float, full_interval: float) -> None:
        self.store = store
        self.interval = interval
        self.full_interval = full_interval
        self.head: Anchor | None = None
        self.last_full = -float("inf")

    async def run_once(self) -> Verification:
        now = time.monotonic()
        full = self.head is None or now - self.last_full >= self.full_interval
        result = await self.store.verify(since=None if full else self.head)
        if result.ok:
            self.head = result.head or self.head
            if full:
                self.last_full = now
            log.info("audit chain verified", extra={"checked": result.checked, "full": full})
        else:
            self.head = None
            log.error(
                "audit chain is broken",
                extra={"first_bad": result.first_bad, "reason": result.reason, "checked": result.checked},
            )
        return result

    async def run_forever(self) -> None:
        await asyncio.sleep(min(self.interval, 30.0) * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.run_once()
            except UNREACHABLE as exc:
                log.warning(
                    "chain verification skipped: database unreachable", extra={"error": type(exc).__name__}
                )
            except Exception:
                log.exception("chain verification failed")
            await asyncio.sleep(self.interval * random.uniform(0.9, 1.1))


def create_app(settings: AuditSettings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings(AuditSettings)
        configure_logging(settings.service_name, settings.log_level)
    database = Database.from_settings(settings, SCHEMA)
    store = AuditStore(database, SCHEMA)
    interval = settings.audit_verify_interval_seconds
    verifier = BackgroundVerifier(store, interval, settings.audit_full_verify_interval_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(verifier.run_forever()) if interval > 0 else None
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
        max_body_size=MAX_BODY_BYTES,
        state={"store": store, "verify_lock": asyncio.Lock(), "verifier": verifier},
    )
