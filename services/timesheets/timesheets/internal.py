"""Routes for the approvals service only (service principal ``approvals``; the gateway never routes
``/internal/…``).

``POST /internal/timesheets/{id}/decision`` is the one step of an approval that changes this schema.
It is idempotent by decision id, so the approvals service may retry it after any failure (timeout,
crash, lost response) and always learns the true outcome: applied (200, also for a replay), entry
gone (404), decided otherwise (409) or the approver owns the entry (403).

All three are raw ASGI endpoints (:class:`PeerRoute` around each handler) that the kit's front layer
calls straight after the identity check (``create_service_app(direct_routes=...)``), as
``GET``/``POST /timesheets`` are (:class:`timesheets.api.ListEntries`): the approvals service calls
two of them for every decision and one for every queue page, and Starlette's exception middleware,
router, request-response wrapper and response objects cost about as much as what each route decides.
The same check first (:func:`~svckit.authz.require_service`, as ``requires_service`` makes it),
problems raised and answered by the app's handlers, a 200 written as ``json_response`` writes it
(``tests/test_direct.py`` holds these to the same service with the routes behind the router).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asyncpg import Record
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from svckit.authz import identity_of, require_service
from svckit.contracts.timesheets import PendingQuery
from svckit.db import Connection, DatabaseUnavailable
from svckit.problems import Problem
from svckit.query import parse_query
from svckit.responses import send_json

from . import cursor, events, store
from .api import database_of, entry_id_of, events_committed, not_found
from .intake import read_decision
from .representation import entry_json, entry_of, page_json

PEER = "approvals"
#: who may call these routes (``endpoint.required_service``, as ``requires_service(PEER)`` records it)
PEERS = frozenset({PEER})


async def pending_entries(request: Request) -> str:
    """The approval queue of one approver: submitted entries of everyone else (the page's JSON). The
    callers of these three checked the service principal."""
    query = parse_query(request, PendingQuery)
    after = cursor.decode(query.cursor) if query.cursor else None
    async with database_of(request).connection() as conn:
        rows = await store.list_pending(
            conn, (query.exclude_issuer, query.exclude_subject), query.limit, after
        )
    return page_json(rows, query.limit)


async def entry_for_peer(request: Request) -> str:
    """Any live entry, whoever owns it (the approvals service checks the rules before deciding)."""
    entry_id = entry_id_of(request)
    async with database_of(request).connection() as conn:
        row = await store.get_entry(conn, entry_id)
    if row is None or not row.live:
        raise not_found()
    return entry_json(row)


async def apply_decision(request: Request) -> str:
    """One statement in autocommit (``store.APPLY_DECISION``: the entry locked by its update, the
    decision and its audit event); only when it changed nothing is the entry read again, to answer why."""
    caller = identity_of(request)
    entry_id = entry_id_of(request)
    decision = await read_decision(request)
    database = database_of(request)

    async def committed(conn: Connection) -> bool:
        return await store.decision_recorded(conn, entry_id, decision.decision_id)

    async def reread(conn: Connection) -> Record | None:
        return await conn.fetchrow(store.GET_ENTRY, entry_id)

    arguments = store.apply_arguments(entry_id, decision, events.decided(caller, decision, entry_id))
    for _ in range(3):
        record = await database.write_once(
            store.APPLY_DECISION, *arguments, committed=committed, reread=reread
        )
        if record is not None:
            if record["decision_id"] == decision.decision_id:  # (after a lost answer: it was applied)
                events_committed(request)
            break
        async with database.connection() as conn:
            row = await store.get_entry(conn, entry_id)
        refusal = store.apply_refusal(row, decision)
        if refusal == "gone":
            raise not_found()
        if refusal == "applied":
            assert row is not None
            return entry_json(row)  # already applied: a retry learns it was
        if refusal == "decided":
            assert row is not None
            raise Problem(
                409,
                "Conflict",
                "The entry has already been decided.",
                entry=entry_of(row).model_dump(mode="json"),
            )
        if refusal == "own":
            raise Problem(403, "Forbidden", "Approvers cannot decide their own entries.")
    else:
        raise DatabaseUnavailable("the entry kept changing under the decision")
    return entry_json(store.EntryRow.of(record))


class PeerRoute:
    """One of the approvals service's routes as a raw ASGI endpoint (see the module docstring): the
    service principal checked first, then ``handler``'s JSON answered as ``json_response`` writes it."""

    required_service = PEERS

    def __init__(self, handler: Callable[[Request], Awaitable[str]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        require_service(request, PEERS)
        await send_json(send, await self.handler(request))
