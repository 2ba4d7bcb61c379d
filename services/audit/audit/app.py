"""The audit service application: ingestion, search and verification of the audit trail."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from svckit.app import create_service_app
from svckit.contracts.audit import MAX_BATCH, MAX_DETAILS_BYTES
from svckit.db import Database
from svckit.logs import configure_logging
from svckit.outbox import DB_ERRORS
from svckit.redisguard import RedisGuard
from svckit.settings import load_settings

from .api import INGEST, routes
from .checkpointer import Checkpointer
from .openapi import build_document
from .settings import AuditSettings
from .store import AuditStore
from .verifier import BackgroundVerifier
from .watermark import TrailWatermark

log = logging.getLogger("audit")

SCHEMA = "audit"
# A full batch of events with the largest details, plus room for the rest of each event: a relay's
# batch must never be refused for its size alone.
MAX_BODY_BYTES = MAX_BATCH * MAX_DETAILS_BYTES + (2 << 20)


def create_app(settings: AuditSettings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings(AuditSettings)
        configure_logging(settings.service_name, settings.log_level)
    database = Database.from_settings(settings, SCHEMA)
    store = AuditStore(
        database,
        SCHEMA,
        read_timeout=settings.audit_read_timeout_seconds,
        readers=settings.read_concurrency,
        verify_timeout=settings.audit_verify_timeout_seconds,
        verifiers=settings.verify_concurrency,
    )
    keys = settings.checkpoint_keys
    # the trail's watermark outside the database (audit.watermark): a restore that lost signed records
    # is reported, and the signer does not sign their numbers again. A Redis client of its own with
    # few connections (within the budget svckit.fdlimit counts for a service's guard): one call per
    # check by the signer or the background verifier, never on the ingest path.
    redis: RedisGuard | None = None
    watermark: TrailWatermark | None = None
    if keys is not None:
        redis = RedisGuard.from_settings(settings, max_connections=4)
        watermark = TrailWatermark(redis, keys, store.checkpoints)
    interval = settings.audit_verify_interval_seconds
    verifier = BackgroundVerifier(
        store, interval, settings.audit_full_verify_interval_seconds, keys, watermark=watermark
    )
    signing = settings.audit_checkpoint_interval_seconds
    checkpointer = (
        Checkpointer(store, keys, signing, watermark=watermark) if keys is not None and signing > 0 else None
    )
    if keys is None:
        log.warning(
            "AUDIT_CHECKPOINT_KEYS is not set: no checkpoints are signed or checked, so a history "
            "rewritten with the database owner's rights would verify (not for production)"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [verifier.task()] if interval > 0 else []
        if checkpointer is not None:
            tasks.append(checkpointer.task())
        for task in tasks:
            task.start()
        try:
            yield
        finally:
            for task in tasks:
                await task.stop()
            if redis is not None:
                await redis.close()

    return create_service_app(
        settings,
        routes,
        database=database,
        lifespan=lifespan,
        openapi=build_document(),
        max_body_size=MAX_BODY_BYTES,
        direct_routes=[INGEST],
        # its own refusals (a forged sender at the ingest endpoint too) go on its own trail, appended
        # in process: never sent to itself over HTTP, where they could be refused in turn
        denial_sink=store.append,
        denial_sink_errors=DB_ERRORS,
        replay_fallback=True,  # writes go on through a Redis outage (svckit.replayfallback)
        state={
            "store": store,
            "verifier": verifier,
            "checkpoint_keys": keys,
            "checkpointer": checkpointer,
            "watermark": watermark,
        },
    )
