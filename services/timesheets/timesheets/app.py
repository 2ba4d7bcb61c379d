"""The timesheets service application: routes, the outbox relay and the idempotency-key janitor."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable
from svckit.http import HttpClient
from svckit.logs import configure_logging
from svckit.outbox import OutboxRelay
from svckit.settings import load_settings
from svckit.tasks import PeriodicTask

from . import api, internal
from .openapi import document
from .settings import TimesheetsSettings
from .store import purge_keys

SCHEMA = "timesheets"
JANITOR_INTERVAL_SECONDS = 3600.0
#: how long the outbox relay lets a stream of creates gather before it sends the next batch (the kit's
#: default is 25 ms): a pass costs a claim, a POST to the audit service and a delete whatever its size
RELAY_LINGER_SECONDS = 0.1

log = logging.getLogger("timesheets")

DB_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS, asyncpg.PostgresError)

#: the busiest routes, served by the kit's front layer directly (``create_service_app(direct_routes=)``)
LIST = Route("/timesheets", api.ListEntries(), methods=["GET"])
CREATE = Route("/timesheets", api.CreateEntry(), methods=["POST"])
#: the approvals service's calls (two per decision, one per queue page), direct too
PENDING = Route("/internal/timesheets/pending", internal.PeerRoute(internal.pending_entries), methods=["GET"])
PEER_ENTRY = Route("/internal/timesheets/{id}", internal.PeerRoute(internal.entry_for_peer), methods=["GET"])
DECISION = Route(
    "/internal/timesheets/{id}/decision", internal.PeerRoute(internal.apply_decision), methods=["POST"]
)
ROUTES = [
    LIST,
    CREATE,
    Route("/timesheets/upload", api.upload_entries, methods=["POST"]),
    Route("/timesheets/{id}", api.get_entry, methods=["GET"]),
    Route("/timesheets/{id}", api.delete_entry, methods=["DELETE"]),
    PENDING,
    PEER_ENTRY,
    DECISION,
]


async def purge_idempotency_keys(database: Database, ttl: dt.timedelta) -> None:
    """Forget expired Idempotency-Keys (expired ones are already ignored on lookup)."""
    async with database.connection() as conn:
        purged = await purge_keys(conn, ttl)
    log.info("expired idempotency keys purged", extra={"purged": purged})


def create_app(settings: TimesheetsSettings | None = None, *, direct: bool = True) -> Starlette:
    """``direct=False`` serves every route through Starlette's router (the tests compare the two)."""
    if settings is None:
        settings = load_settings(TimesheetsSettings)
        configure_logging(settings.service_name, settings.log_level)
    database = Database.from_settings(settings, SCHEMA)
    http = HttpClient()
    relay = OutboxRelay.for_service(
        settings,
        database,
        SCHEMA,
        http,
        linger=RELAY_LINGER_SECONDS,
    )
    ttl = dt.timedelta(hours=settings.idempotency_ttl_hours)
    janitor = PeriodicTask(  # once an hour
        "timesheets-idempotency-purge",
        JANITOR_INTERVAL_SECONDS,
        lambda: purge_idempotency_keys(database, ttl),
        expected=DB_ERRORS,
        logger=log,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        relay.start()
        janitor.start()
        try:
            yield
        finally:
            await janitor.stop()
            await relay.stop()

    return create_service_app(
        settings,
        ROUTES,
        database=database,
        http=http,
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
        openapi=document(ROUTES),
        state={"relay": relay},
        # refused identities and scopes: aggregated records, committed to the outbox like the rest
        denial_sink=relay.record,
        denial_sink_errors=DB_ERRORS,
        replay_fallback=True,  # writes go on through a Redis outage (svckit.replayfallback)
        direct_routes=[LIST, CREATE, PENDING, PEER_ENTRY, DECISION] if direct else [],
    )
