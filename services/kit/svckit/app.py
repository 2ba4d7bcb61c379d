"""The application factory every service uses.

It assembles, in one place and in a fixed order, what each service needs around its own routes:
request context (id, access log, metrics), unhandled errors, body limit and identity check (one layer:
:class:`svckit.middleware.ServiceFront`) → problem handlers → routes,
plus ``/healthz``, ``/readyz`` and ``/openapi.json`` and the lifespan that owns the database pool,
the outbound HTTP client and the service's own background tasks.

``/metrics`` is deliberately *not* served here: this is the listener an Ingress may publish, so it
answers 404 for it, and the metrics are on their own port (:class:`svckit.metrics.MetricsServer`,
``METRICS_PORT``), which only Prometheus can reach.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .collector import GC_THRESHOLDS
from .db import (
    CONFLICT_ERRORS,
    DISK_FULL_ERRORS,
    LOCK_ERRORS,
    READ_ONLY_ERRORS,
    SLOT_ERRORS,
    UNAVAILABLE_ERRORS,
    Database,
    DatabaseUnavailable,
    NotCommitted,
    OutcomeUnknown,
)
from .denials import DenialRecorder, Sink
from .health import Check, healthz, readyz_endpoint
from .http import HttpClient
from .identity import IdentityGate, IdentityVerifier
from .middleware import ServiceFront
from .probes import publishing
from .problems import EXCEPTION_HANDLERS, RETRY_AFTER, problem_response
from .query import refuse_undocumented_queries
from .replay import ReplayMemory
from .replayfallback import PURGE_INTERVAL, PURGE_TASK
from .settings import DenialAuditSettings, ServiceSettings
from .tasks import PeriodicTask

DEFAULT_MAX_BODY = 1 << 20
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


async def unavailable_handler(request: Request, exc: Exception) -> Response:
    """Every "database unavailable" error class, whatever the handler was doing: 503 + Retry-After."""
    if isinstance(exc, OutcomeUnknown):
        return problem_response(
            503,
            "Service Unavailable",
            "The database went away while the change was being committed, and whether it was stored "
            "could not be found out yet. Repeat the request with the same Idempotency-Key, or look "
            "the resource up, once the service answers again.",
            headers=RETRY_AFTER,
            outcome="unknown",
        )
    if isinstance(exc, NotCommitted):
        return problem_response(
            503,
            "Service Unavailable",
            "The database went away before the change was committed; nothing was stored. Retry shortly.",
            headers=RETRY_AFTER,
            outcome="not_stored",
        )
    if isinstance(exc, READ_ONLY_ERRORS):
        # a failover's window (svckit.db.READ_ONLY_ERRORS): the server refused the statement, so
        # nothing was stored, and a retry reaches the new primary once the name points at it
        return problem_response(
            503,
            "Service Unavailable",
            "The database takes no writes right now (read-only: a failover in progress); nothing "
            "was stored. Retry shortly.",
            headers=RETRY_AFTER,
            outcome="not_stored",
            reason="database_read_only",
        )
    if isinstance(exc, DISK_FULL_ERRORS):
        # the volume where the tables live is full (svckit.db.DISK_FULL_ERRORS): the statement was
        # refused and rolled back, reads go on; no outcome is claimed (a handler's earlier
        # transaction may have committed before a later statement found no room)
        return problem_response(
            503,
            "Service Unavailable",
            "The database is out of disk space and takes no more data right now; reads still work. "
            "Retry later.",
            headers=RETRY_AFTER,
            reason="database_disk_full",
        )
    if isinstance(exc, LOCK_ERRORS):
        # a table or rows held too long by another session (svckit.db.LOCK_ERRORS): the database is
        # up, this request waited DB_LOCK_TIMEOUT_SECONDS for them; no outcome is claimed (a
        # handler's earlier transaction may have committed before the one that waited)
        return problem_response(
            503,
            "Service Unavailable",
            "The data this request needs is held by another database session (maintenance, a "
            "migration or a long transaction); retry shortly.",
            headers=RETRY_AFTER,
            reason="database_busy",
        )
    if isinstance(exc, CONFLICT_ERRORS):
        # rolled back for a conflict with another transaction (svckit.db.CONFLICT_ERRORS: a deadlock,
        # a serialization failure) and still so after the kit ran it again a few times; no outcome
        # is claimed (a handler's earlier transaction may have committed before this one)
        return problem_response(
            503,
            "Service Unavailable",
            "The change conflicted with concurrent changes to the same data and was not stored "
            "(tried again a few times); retry shortly.",
            headers=RETRY_AFTER,
            reason="database_conflict",
        )
    if isinstance(exc, SLOT_ERRORS):
        # Postgres up, but out of connection slots (svckit.db.SLOT_ERRORS): no outcome is claimed
        # (a handler's earlier transaction may have committed before its next connection was refused)
        return problem_response(
            503,
            "Service Unavailable",
            "The database has no connection free for this service right now; retry shortly.",
            headers=RETRY_AFTER,
            reason="database_out_of_slots",
        )
    return problem_response(
        503,
        "Service Unavailable",
        "A backing service is unreachable; retry shortly.",
        headers=RETRY_AFTER,
    )


async def metrics_not_here(request: Request) -> Response:
    """The public listener never exposes metrics (an Ingress in front of it would publish them)."""
    return problem_response(404, "Not Found", "Metrics are served on the service's metrics port only.")


def freeze_startup_objects() -> None:
    """Move everything alive once the service has started (modules, models, routes, pools: some
    65,000 tracked objects after importing a service) out of the cyclic garbage collector's reach
    (:func:`gc.freeze`).

    Under load the requests' short-lived objects trigger collections all the time, and every full
    collection walked all of those long-lived objects too, with the event loop stopped: the long tail
    of the latency. Measured on the timesheets service (32 clients, 50% create / 50% list, five
    interleaved pairs of runs): p99 63-81 ms without, 33-55 ms with; CPU per request within the
    runs' noise. Objects made later are collected as before.

    And the collector runs less often (:data:`GC_THRESHOLDS`): a young generation of 20,000 objects
    instead of 700 before a collection, and 20 collections of a generation before the next older one
    (10). Under load dozens of requests are in flight at once, each holding its frames, futures and
    records: with 700 the young collections kept finding them alive and promoting them, so they
    filled the older generations and made those collections frequent and long, only to die soon
    after. Measured on the timesheets service (direct mix, 32 clients each, variants loaded at the same
    time on a busy machine, six rounds), against the same code with the default thresholds: CPU per
    request -139 us (median of paired differences; every round lower, -80 to -233)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def openapi_route(document: Mapping[str, Any]) -> Route:
    body = json.dumps(document).encode()

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)


def create_service_app(
    settings: ServiceSettings,
    routes: Sequence[BaseRoute],
    *,
    database: Database | None = None,
    http: HttpClient | None = None,
    checks: Mapping[str, Check] | None = None,
    lifespan: Lifespan | None = None,
    require_identity: bool = True,
    open_paths: Sequence[str] = (),
    max_body_size: int = DEFAULT_MAX_BODY,
    openapi: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    verifier: IdentityVerifier | None = None,
    direct_routes: Sequence[Route] = (),
    denial_sink: Sink | None = None,
    denial_sink_errors: tuple[type[BaseException], ...] = (),
    replay_fallback: bool = False,
) -> Starlette:
    """Build a service app. ``state`` entries end up on ``app.state`` for handlers to use.

    ``verifier`` replaces the one built from the settings' pair keys (a kit test receiving from
    senders that are not platform services). ``direct_routes``: routes among ``routes`` whose endpoint
    is a raw ASGI app, called by the front layer itself rather than through Starlette's router
    (:class:`svckit.middleware.ServiceFront`): a hot route's few tens of microseconds; the answers are
    the same, errors included.

    ``denial_sink``: where the service's denials go (:class:`svckit.denials.DenialRecorder`: refused
    identities, 401, and the kit's 403s, aggregated per window as ``settings`` say); its errors
    ``denial_sink_errors`` mean "try again later". The recorder is ``app.state.denials``.

    ``replay_fallback``: while Redis is unavailable, the nonces of unsafe signed requests are recorded
    in ``database`` (whose schema lists the kit set ``replay`` in its ``kit.txt``) instead of being
    refused 503 (:mod:`svckit.replayfallback`); a task purges the expired ones."""
    all_checks: dict[str, Check] = {}
    if database is not None:
        all_checks["postgres"] = database.check
    all_checks.update(checks or {})

    operational: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz_endpoint(all_checks), methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics_not_here, methods=["GET", "HEAD"], include_in_schema=False),
    ]
    if openapi is not None:
        operational.append(openapi_route(openapi))
        # an operation documented without query parameters refuses any (svckit.query.NoQuery)
        refuse_undocumented_queries(routes, openapi)

    denials: DenialRecorder | None = None
    if denial_sink is not None:
        assert isinstance(settings, DenialAuditSettings), "a service recording denials has their settings"
        denials = DenialRecorder(
            settings.service_name,
            denial_sink,
            window_seconds=settings.audit_denial_window_seconds,
            max_keys=settings.audit_denial_max_keys,
            expected=denial_sink_errors,
        )
    replay: ReplayMemory | None = None
    gate: IdentityGate | None = None
    if require_identity:
        if verifier is None:
            verifier = IdentityVerifier(settings.identity_verify_keys, settings.identity_max_skew_seconds)
        # each signed request is accepted once: by every replica when they share Redis (svckit.replay)
        replay = ReplayMemory.for_service(settings, database if replay_fallback else None)
        gate = IdentityGate(verifier, open_paths=(*OPEN_PATHS, *open_paths), replay=replay, denials=denials)
    purge: PeriodicTask | None = None
    if replay is not None and replay.fallback is not None:
        purge = PeriodicTask(
            PURGE_TASK, PURGE_INTERVAL, replay.fallback.purge, jitter=0.2, expected=UNAVAILABLE_ERRORS
        )
    handlers: dict[Any, Callable[[Request, Exception], Any]] = dict(EXCEPTION_HANDLERS)
    handlers[DatabaseUnavailable] = unavailable_handler
    for error in UNAVAILABLE_ERRORS:
        handlers[error] = unavailable_handler
    for route in direct_routes:
        assert route in routes, "a direct route is one of the service's routes"
    # request context, unhandled errors, body limit and identity: one layer (svckit.middleware)
    middleware = [
        Middleware(
            ServiceFront,
            max_body_size=max_body_size,
            gate=gate,
            direct=direct_routes,
            handlers=handlers,
            body_budget=settings.request_body_buffer_bytes,
        )
    ]

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        if database is not None:
            database.start()
        if denials is not None:
            denials.start()
        if purge is not None:
            purge.start()
        try:
            if lifespan is not None:
                async with lifespan(app), publishing(all_checks):
                    freeze_startup_objects()
                    yield
            else:
                async with publishing(all_checks):
                    freeze_startup_objects()
                    yield
        finally:
            if denials is not None:
                await denials.stop()  # the last records, while the database is still there
            if purge is not None:
                await purge.stop()
            if replay is not None:
                replay.close()
                if replay.redis is not None:
                    await replay.redis.close()
            if http is not None:
                await http.close()
            if database is not None:
                await database.close()

    # the service's routes first: the router tries routes in order, and these are the busy ones; but a
    # catch-all (a ``{…:path}`` route: the gateway's SPA) after the operational ones it would shadow
    catch_all = [route for route in routes if ":path}" in getattr(route, "path", "")]
    specific = [route for route in routes if route not in catch_all]
    all_routes = [*specific, *operational, *catch_all]
    if denials is not None:
        denials.routes = all_routes  # the template of a request refused before it was routed
    app = Starlette(
        routes=all_routes,
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=app_lifespan,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.http = http
    app.state.denials = denials
    for key, value in (state or {}).items():
        setattr(app.state, key, value)
    return app
