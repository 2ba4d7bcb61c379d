"""The audit service's HTTP routes.

``POST /internal/events`` is for platform services only (the gateway never routes ``/internal``) and
records each event under its producer's own name: a service cannot write events on behalf of
another, so a compromised writer cannot forge, say, approval decisions. ``GET /audit/events`` and
``GET /audit/verify`` need ``read:audit``.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svckit.authz import require_service, requires_scope
from svckit.body import parse_body
from svckit.contracts.audit import EventsPage, EventsQuery, IngestBatch, IngestResult, VerifyQuery
from svckit.problems import validation_problem
from svckit.query import parse_query
from svckit.responses import model_response

from .store import AuditStore, Verification

READ_AUDIT = "read:audit"


def store_of(request: Request) -> AuditStore:
    store: AuditStore = request.app.state.store
    return store


async def ingest(request: Request) -> Response:
    identity = require_service(request)
    batch = await parse_body(request, IngestBatch)
    foreign = [
        {
            "field": f"events.{index}.source",
            "loc": ["events", index, "source"],
            "message": f"must be the calling service ({identity.subject!r})",
            "type": "source_mismatch",
        }
        for index, event in enumerate(batch.events)
        if event.source != identity.subject
    ]
    if foreign:
        raise validation_problem(foreign, "A service may only record events under its own name.")
    result = await store_of(request).append(batch.events)
    return model_response(IngestResult(accepted=result.accepted, duplicates=result.duplicates))


@requires_scope(READ_AUDIT)
async def list_events(request: Request) -> Response:
    query = parse_query(request, EventsQuery)
    rows, next_cursor = await store_of(request).list(query)
    return model_response(EventsPage(items=[row.record() for row in rows], next_cursor=next_cursor))


@requires_scope(READ_AUDIT)
async def verify(request: Request) -> Response:
    query = parse_query(request, VerifyQuery)
    anchor = query.anchor_point
    if anchor is None:
        result = await shared_walk(request)
    else:
        lock: asyncio.Lock = request.app.state.verify_lock
        async with lock:
            result = await store_of(request).verify(anchor=anchor)
    return model_response(result.result(), exclude_none=True)


async def shared_walk(request: Request) -> Verification:
    """Callers arriving while a full walk is under way get its result instead of starting another,
    so repeated calls cannot multiply the work. Shielded: one caller hanging up cancels nothing."""
    state = request.app.state
    task: asyncio.Task[Verification] | None = getattr(state, "verify_task", None)
    if task is None or task.done():
        task = asyncio.ensure_future(store_of(request).verify())
        state.verify_task = task
    return await asyncio.shield(task)


routes = [
    Route("/internal/events", ingest, methods=["POST"]),
    Route("/audit/events", list_events, methods=["GET"]),
    Route("/audit/verify", verify, methods=["GET"]),
]
