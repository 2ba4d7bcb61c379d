"""The audit service's HTTP routes.

``POST /internal/events`` is for platform services only (the gateway never routes ``/internal``) and
records each event under its producer's own name: a service cannot write events on behalf of
another, so a compromised writer cannot forge, say, approval decisions. ``GET /audit/events``,
``GET /audit/verify``, ``GET /audit/checkpoints`` and ``GET /audit/checkpoint-keys`` need
``read:audit``. The public keys too: every route the gateway forwards carries a verified caller (the
identity contract has no anonymous principal), and whoever verifies checkpoints audits; a verifier
should pin the keys it got once anyway, since keys served by the platform under audit are only as
trustworthy as that platform.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from svckit.authz import require_service, requires_scope
from svckit.contracts.audit import (
    CheckpointKeySet,
    CheckpointRecord,
    CheckpointsPage,
    CheckpointsQuery,
    EventsPage,
    EventsQuery,
    ReceiptCheck,
    VerifyQuery,
    encode_checkpoint_cursor,
)
from svckit.contracts.fields import path_uuid
from svckit.problems import Problem, validation_problem
from svckit.query import parse_query
from svckit.responses import model_response

from .bounds import MIN_RETRY_AFTER, Busy, TooLong
from .checkpoints import InvalidCheckpoint, PublicKeys, parse
from .intake import read_batch
from .ranges import BadRange, range_request
from .store import AppendResult, AuditStore, Verification
from .trail import CheckpointTrail

READ_AUDIT = "read:audit"

log = logging.getLogger("audit.api")


def store_of(request: Request) -> AuditStore:
    store: AuditStore = request.app.state.store
    return store


class Ingest:
    """``POST /internal/events``, a raw ASGI endpoint: the kit's front layer calls it straight after the
    identity check (``create_service_app(direct_routes=...)``), without Starlette's router, exception
    middleware and response objects around it: for a single event those cost as much as validating
    it. The same checks as any route (:func:`~svckit.authz.require_service`,
    :func:`~audit.intake.read_batch`), and errors raised as problems are answered by the app's handlers
    as before. The answer is :class:`IngestResult`'s JSON, written here (``test_ingest`` holds the two
    to the same bytes)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        result = await ingest(request)
        receipt = result.receipt
        if receipt is None:
            body = b'{"accepted":%d,"duplicates":%d}' % (result.accepted, result.duplicates)
        else:
            body = b'{"accepted":%d,"duplicates":%d,"receipt":{"id":"%s","seq":%d,"hash":"%s"}}' % (
                result.accepted,
                result.duplicates,
                str(receipt.id).encode(),
                receipt.seq,
                receipt.hash.encode(),
            )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def ingest(request: Request) -> AppendResult:
    """Check and append the events of ``request``: what ``POST /internal/events`` accepted."""
    identity = require_service(request)
    intake = await read_batch(request)
    batch = intake.batch
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
    return await store_of(request).append(batch.events, intake.forms)


async def check_receipt(request: Request) -> Response:
    """``GET /internal/receipts/{id}``: where the trail holds the calling service's event — what its
    outbox relay checks the receipt it kept against (:mod:`svckit.outbox`). Platform services only,
    each finding only its own events: another service's id answers ``stored: false`` as an unknown one
    does. One read by the records' primary key, outside the listing turns: a relay asks once a minute."""
    identity = require_service(request)
    event_id = path_uuid(request.path_params["id"])
    if event_id is None:
        raise Problem(404, "Not Found", "No such receipt: the id is not a UUID.")
    placed = await store_of(request).receipt(event_id, identity.subject)
    if placed is None:
        return model_response(ReceiptCheck(id=event_id, stored=False), exclude_none=True)
    return model_response(ReceiptCheck(id=event_id, stored=True, seq=placed.seq, hash=placed.hash))


@requires_scope(READ_AUDIT)
async def list_events(request: Request) -> Response:
    """A page of records. A listing that runs into the read timeout is the query's cost, not the
    database's absence: 422 saying how to narrow it, not 503 (a retry would cost the same again)."""
    query = parse_query(request, EventsQuery)
    try:
        rows, next_cursor = await store_of(request).list(query)
    except TooLong as exc:
        raise Problem(
            422,
            "Unprocessable Content",
            f"The listing took longer than {exc.seconds:g} s and was stopped. Narrow it: a shorter "
            "from/to window, or a filter that selects fewer records (actor, resource_id, client_id).",
            errors=[
                {
                    "field": "query",
                    "loc": ["query"],
                    "message": f"selects too much to list within {exc.seconds:g} s",
                    "type": "query_too_broad",
                }
            ],
        ) from None
    except Busy as exc:
        busy(exc)
    return model_response(EventsPage(items=[row.record() for row in rows], next_cursor=next_cursor))


def busy(exc: Busy) -> NoReturn:
    """A read on request refused for want of a turn (:mod:`audit.bounds`): 503, when to come back."""
    raise Problem(
        503,
        "Service Unavailable",
        f"The {exc.what} was not started: every {exc.holders} turn ({exc.turns}) is taken; retry "
        f"after {exc.retry_after} s.",
        headers={"Retry-After": str(exc.retry_after)},
    ) from None


def new_trail(request: Request) -> CheckpointTrail | None:
    keys: PublicKeys | None = request.app.state.checkpoint_keys
    return CheckpointTrail(keys) if keys is not None else None


#: where a walk too long for a request is verified instead (the 422 chain_too_long says so)
RANGED_INSTEAD = (
    "verify a range on request instead: ?from_checkpoint=latest (from the newest signed checkpoint to "
    "the head) or ?since=<seq> (from the newest checkpoint at or before that record)"
)


@requires_scope(READ_AUDIT)
async def verify(request: Request) -> Response:
    """The chain walked on request, bounded (:meth:`AuditStore.verify_on_request`): a walk that runs
    into the verification time limit is stopped with 422 (a retry would be stopped again; the trail
    is verified elsewhere, or a range of it here), one that finds no turn is refused at once with
    503 and Retry-After. With ``from_checkpoint``, ``since`` or ``until``: a range, anchored at a
    signed checkpoint (:mod:`audit.ranges`), under the same bound."""
    query = parse_query(request, VerifyQuery)
    anchor = query.anchor_point
    try:
        if query.ranged:
            result = await verify_range(request, query)
        elif anchor is None:
            result = await shared_walk(request)
        else:
            result = await store_of(request).verify_on_request(anchor=anchor, trail=new_trail(request))
    except TooLong as exc:
        if query.ranged:
            detail = (
                f"Verifying the range took longer than {exc.seconds:g} s and was stopped; nothing is known "
                "about it from this one. Start it later (from_checkpoint=latest walks only what was "
                "appended since the newest checkpoint), end it sooner (until), or verify from outside "
                "with `python -m audit verify`."
            )
            message = f"the range cannot be walked within {exc.seconds:g} s"
        else:
            detail = (
                f"Verifying the chain took longer than {exc.seconds:g} s and was stopped: the trail is too "
                "long to verify on request, and nothing is known about it from this one. The service "
                "verifies it in the background (audit_chain_ok); verify it yourself from outside with "
                f"`python -m audit verify`, or {RANGED_INSTEAD}."
            )
            message = f"the chain cannot be walked within {exc.seconds:g} s"
        raise Problem(
            422,
            "Unprocessable Content",
            detail,
            errors=[{"field": "query", "loc": ["query"], "message": message, "type": "chain_too_long"}],
        ) from None
    except Busy as exc:
        busy(exc)
    return model_response(result.result(), exclude_none=True)


def range_problem(parameter: str, message: str) -> Problem:
    """A range that names nothing on this chain (or cannot be anchored): 422 naming the parameter."""
    return validation_problem(
        [{"field": parameter, "loc": ["query", parameter], "message": message, "type": "bad_range"}],
        "The range to verify is invalid.",
    )


async def verify_range(request: Request, query: VerifyQuery) -> Verification:
    """A ranged walk (:meth:`AuditStore.verify_range`): what the parameters say alone is checked here,
    what they say of this chain (beyond the head, no such checkpoint) by the walk, in its snapshot."""
    keys: PublicKeys | None = request.app.state.checkpoint_keys
    try:
        wanted = range_request(query)
    except BadRange as exc:
        raise range_problem(exc.parameter, exc.message) from None
    if keys is None:
        given = next(p for p in ("from_checkpoint", "since", "until") if getattr(query, p) is not None)
        raise range_problem(
            given,
            "this service signs no checkpoints (AUDIT_CHECKPOINT_KEYS is empty), so a range has "
            "nothing to be anchored to: verify the whole chain, or with anchor=<seq>:<hash>",
        )
    try:
        return await store_of(request).verify_range(wanted, keys)
    except BadRange as exc:
        raise range_problem(exc.parameter, exc.message) from None


async def shared_walk(request: Request) -> Verification:
    """Callers arriving while a full walk is under way get its result instead of starting another,
    so repeated calls cannot multiply the work (nor be refused for want of a turn). Shielded: one
    caller hanging up cancels nothing (the walk's time limit ends it)."""
    state = request.app.state
    task: asyncio.Task[Verification] | None = getattr(state, "verify_task", None)
    if task is None or task.done():
        task = asyncio.ensure_future(store_of(request).verify_on_request(trail=new_trail(request)))
        state.verify_task = task
    return await asyncio.shield(task)


@requires_scope(READ_AUDIT)
async def list_checkpoints(request: Request) -> Response:
    """A page of checkpoints, bounded as a listing is. A page is at most 100 rows read by key, so one
    that runs into the read timeout says the database is slow, not that the request asked too much:
    503 with Retry-After, not the events listing's 422."""
    query = parse_query(request, CheckpointsQuery)
    try:
        signed, more = await store_of(request).checkpoint_page(query.limit, query.before_number)
    except TooLong as exc:
        raise Problem(
            503,
            "Service Unavailable",
            f"The page of checkpoints took longer than {exc.seconds:g} s and was stopped; retry shortly.",
            headers={"Retry-After": str(MIN_RETRY_AFTER)},
        ) from None
    except Busy as exc:
        busy(exc)
    items = []
    for number, jws in signed:
        # the stored JWS as it is (verifying signatures is GET /audit/verify's job); a row that is
        # not even a checkpoint was written by someone else than this service: verify reports it
        try:
            checkpoint = parse(jws)
            items.append(
                CheckpointRecord(
                    number=checkpoint.number,
                    seq=checkpoint.seq,
                    head=checkpoint.head,
                    count=checkpoint.count,
                    signed_at=checkpoint.signed_at,
                    prev=checkpoint.prev,
                    key_id=checkpoint.key_id,
                    jws=checkpoint.jws,
                )
            )
        except (InvalidCheckpoint, ValidationError) as exc:
            log.warning(
                "a stored checkpoint is malformed; not listed",
                extra={"number": number, "error": str(exc)[:200]},
            )
    next_cursor = encode_checkpoint_cursor(signed[-1][0]) if more and signed else None
    return model_response(CheckpointsPage(items=items, next_cursor=next_cursor))


@requires_scope(READ_AUDIT)
async def checkpoint_keys(request: Request) -> Response:
    keys: PublicKeys | None = request.app.state.checkpoint_keys
    document = CheckpointKeySet.model_validate(keys.jwks() if keys is not None else {"keys": []})
    response = model_response(document)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


#: the events writers send (a route the front layer serves directly: see :class:`Ingest`)
INGEST = Route("/internal/events", Ingest(), methods=["POST"])

routes = [
    INGEST,
    Route("/internal/receipts/{id}", check_receipt, methods=["GET"]),
    Route("/audit/events", list_events, methods=["GET"]),
    Route("/audit/verify", verify, methods=["GET"]),
    Route("/audit/checkpoints", list_checkpoints, methods=["GET"]),
    Route("/audit/checkpoint-keys", checkpoint_keys, methods=["GET"]),
]
