"""The audit service application: ingestion, search and verification of the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from svckit.app import create_service_app
from svckit.contracts.audit import MAX_BATCH, MAX_DETAILS_BYTES
from svckit.db import Database
from svckit.logs import configure_logging
from svckit.settings import load_settings

from .api import routes
from .openapi import build_document
from .settings import AuditSettings
from .store import AuditStore
from .verifier import BackgroundVerifier

SCHEMA = "audit"
# A full batch of events with the largest details, plus room for the rest of each event: a relay's
# batch must never be refused for its size alone.
MAX_BODY_BYTES = MAX_BATCH * MAX_DETAILS_BYTES + (2 << 20)


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
        task = verifier.task() if interval > 0 else None
        if task is not None:
            task.start()
        try:
            yield
        finally:
            if task is not None:
                await task.stop()

    return create_service_app(
        settings,
        routes,
        database=database,
        lifespan=lifespan,
        openapi=build_document(),
        max_body_size=MAX_BODY_BYTES,
        state={"store": store, "verify_lock": asyncio.Lock(), "verifier": verifier},
    )
