"""The approvals service application: routes, the decision workflow, its reconciler, the outbox relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.db import Database
from svckit.health import http_peer_check
from svckit.http import HttpClient
from svckit.identity import IdentitySigner
from svckit.logs import configure_logging
from svckit.outbox import DB_ERRORS, OutboxRelay
from svckit.settings import load_settings

from . import api
from .openapi import document
from .peer import Timesheets
from .reconciler import Reconciler
from .settings import ApprovalsSettings
from .workflow import Workflow

SCHEMA = "approvals"
#: how long the outbox relay lets a stream of decisions gather before it sends the next batch (the
#: kit's default is 25 ms; the timesheets service's relay waits 100 ms too): a pass costs a claim, a
#: POST to the audit service and a delete whatever its size
RELAY_LINGER_SECONDS = 0.1

#: both served by the kit's front layer directly (raw ASGI endpoints: see :mod:`approvals.api`)
ROUTES = [
    Route("/approvals", api.Queue(), methods=["GET"]),
    Route("/approvals/{id}", api.Decide(), methods=["PUT"]),
]


def create_app(settings: ApprovalsSettings | None = None, *, direct: bool = True) -> Starlette:
    """``direct=False`` leaves the routes to Starlette's router (the general path, which
    ``test_direct`` holds the direct one to)."""
    if settings is None:
        settings = load_settings(ApprovalsSettings)
        configure_logging(settings.service_name, settings.log_level)
    database = Database.from_settings(settings, SCHEMA)
    http = HttpClient()
    timesheets = Timesheets.at(
        settings.timesheets_url,
        IdentitySigner(settings.identity_sign_keys("timesheets")),
        settings.apply_timeout_seconds,
    )
    relay = OutboxRelay.for_service(
        settings,
        database,
        SCHEMA,
        http,
        linger=RELAY_LINGER_SECONDS,
    )
    workflow = Workflow(
        database, timesheets, settings.apply_attempts, record=relay.record, events_committed=relay.wake
    )
    reconciler = Reconciler(
        database,
        workflow,
        interval=settings.reconcile_interval_seconds,
        after=settings.reconcile_after_seconds,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        relay.start()
        reconciler.start()
        try:
            yield
        finally:
            await reconciler.stop()
            await relay.stop()
            await timesheets.close()

    return create_service_app(
        settings,
        ROUTES,
        database=database,
        http=http,
        checks={"timesheets": http_peer_check(http.session, settings.timesheets_url)},
        lifespan=lifespan,
        openapi=document(ROUTES),
        direct_routes=ROUTES if direct else (),
        # refused identities and scopes: aggregated records, committed to the outbox like the rest
        denial_sink=relay.record,
        denial_sink_errors=DB_ERRORS,
        replay_fallback=True,  # writes go on through a Redis outage (svckit.replayfallback)
        state={"timesheets": timesheets, "workflow": workflow, "reconciler": reconciler, "relay": relay},
    )
