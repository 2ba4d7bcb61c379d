"""The public routes (through the gateway as ``/api/approvals…``); both need approve:timesheets.

Both are raw ASGI endpoints (:class:`Queue`, :class:`Decide`) that the kit's front layer calls
straight after the identity check (``create_service_app(direct_routes=...)``), without Starlette's
router, exception middleware, ``request_response`` wrapper and response objects: the same checks in
the same order (the scope first, as :func:`~svckit.authz.requires_scope` makes them), problems raised
and answered by the app's handlers as before, and a 200 written as Starlette's ``Response`` writes it
(``Content-Length``, ``Content-Type: application/json``; ``test_direct`` holds the two to the same
messages, and the routed app to the same answers).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from svckit.authz import identity_of, require_scope
from svckit.body import parse_body
from svckit.contracts.approvals import DecisionIn, QueueQuery
from svckit.contracts.fields import path_uuid
from svckit.contracts.timesheets import EntryPage
from svckit.problems import Problem, validation_problem
from svckit.query import parse_query

from .peer import PeerUnavailable, Timesheets, not_json
from .representation import decision_json, decision_of
from .workflow import Refusal, Workflow

APPROVE = "approve:timesheets"
RETRY_AFTER = {"Retry-After": "5"}
# What a decision voided by the timesheets service's verdict means to the client.
VOID_ANSWERS = {
    "entry_gone": (404, "No such timesheet entry."),
    "already_decided": (409, "The entry has already been decided."),
    "own_entry": (403, "Approvers cannot decide their own entries."),
}
#: why a recorded decision can never apply, by its void reason: the 503 of one whose voiding failed
VOID_CAUSES = {
    "entry_gone": "the entry was deleted",
    "already_decided": "the entry was decided otherwise",
    "own_entry": "the entry is the approver's own",
}


def unavailable(detail: str) -> Problem:
    return Problem(503, "Service Unavailable", detail, headers=RETRY_AFTER)


#: the bodies nearly every decision is, with the model ``parse_body`` reads from each (frozen)
KNOWN_BODIES: dict[bytes, DecisionIn] = {
    raw: DecisionIn(decision=verdict)
    for verdict in ("approved", "rejected")
    for raw in (
        b'{"decision":"%s"}' % verdict.encode(),
        b'{"decision": "%s"}' % verdict.encode(),
    )
}


async def read_decision(request: Request) -> DecisionIn:
    """The request's decision as :func:`~svckit.body.parse_body` reads it: looked up when the body is
    one of :data:`KNOWN_BODIES` sent as plain ``application/json`` without a ``Content-Encoding``
    (``parse_body`` reads each of those to the same model; ``test_direct`` holds them to it), else
    read by ``parse_body`` (and its problems)."""
    headers = request.headers
    if headers.get("content-type") == "application/json" and "content-encoding" not in headers:
        known = KNOWN_BODIES.get(await request.body())
        if known is not None:
            return known
    return await parse_body(request, DecisionIn)


async def send_json(send: Send, body: bytes) -> None:
    """A 200 with a JSON body, the messages Starlette's ``Response(body, media_type=
    "application/json")`` sends."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Queue:
    """``GET /approvals``, raw ASGI (see the module docstring)."""

    required_scope = APPROVE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        require_scope(request, APPROVE)
        await send_json(send, (await queue(request)).encode())


class Decide:
    """``PUT /approvals/{id}``, raw ASGI (see the module docstring)."""

    required_scope = APPROVE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        require_scope(request, APPROVE)
        await send_json(send, await decide(request))


async def queue(request: Request) -> str:
    """Submitted entries of other users, newest date first (served by the timesheets service): the
    page's JSON text. The caller checked the scope."""
    approver = identity_of(request)
    query = parse_query(request, QueueQuery)
    timesheets: Timesheets = request.app.state.timesheets
    try:
        reply = await timesheets.pending(approver, query.limit, query.cursor)
    except PeerUnavailable:
        raise unavailable("The timesheets service is unreachable; retry shortly.") from None
    if reply.status == 200:
        # Held to the contract here, then answered as the timesheets service wrote it: its page is
        # ``EntryPage.model_dump_json()``'s bytes (timesheets.representation.page_json, held to them by
        # its tests), so writing the validated model out again would give the same text, for about
        # three times the validation's CPU (a page of 20: ~400 us against ~140 in-process).
        try:
            EntryPage.model_validate_json(reply.text)
            return reply.text
        except ValidationError:
            if not_json(reply.text) is not None:
                raise unavailable("The timesheets service is unreachable; retry shortly.") from None
            raise Problem(502, "Bad Gateway", "The timesheets service answered an invalid page.") from None
    if reply.status == 422 and isinstance(reply.body, dict):
        # A bad cursor: the timesheets service names the parameter; pass its problem on (bounded, with
        # its errors_total, as every validation problem).
        errors, total = reply.body.get("errors"), reply.body.get("errors_total")
        raise validation_problem(
            errors if isinstance(errors, list) else [],
            str(reply.body.get("detail") or "The query string has invalid parameters."),
            total=total if isinstance(total, int) else None,
        )
    raise Problem(502, "Bad Gateway", f"The timesheets service answered {reply.status}.")


async def decide(request: Request) -> bytes:
    """Approve or reject someone else's submitted entry; recorded once, applied exactly once: the
    applied decision's JSON. The caller checked the scope."""
    approver = identity_of(request)
    entry_id = path_uuid(request.path_params["id"])
    if entry_id is None:
        raise Problem(404, "Not Found", "No such timesheet entry.")
    body = await read_decision(request)
    workflow: Workflow = request.app.state.workflow
    try:
        result = await workflow.decide(approver, entry_id, body)
    except PeerUnavailable:
        raise unavailable("The timesheets service is unreachable; nothing was recorded.") from None
    if isinstance(result, Refusal):
        if result.existing is not None:
            raise Problem(
                result.status,
                None,
                result.detail,
                decision=decision_of(result.existing).model_dump(mode="json"),
            )
        raise Problem(result.status, None, result.detail)
    if result.state == "applied":
        return decision_json(result.decision, result.entry, result.entry_text)
    if result.state == "void":
        status, detail = VOID_ANSWERS[result.reason]
        raise Problem(status, None, detail)
    if result.voiding:
        # Not "will be applied" (the timesheets service said it never can), and no decision member: a
        # 503 with one says it will be. Voided meanwhile or not, repeating the request tells.
        raise Problem(
            503,
            "Service Unavailable",
            f"The decision is recorded, but it cannot be applied: {VOID_CAUSES[result.voiding]}. It is "
            "being voided; repeat this request to see the outcome.",
            headers=RETRY_AFTER,
        )
    if result.reason == "refused":
        raise Problem(
            502,
            "Bad Gateway",
            "The timesheets service refused the decision unexpectedly; it stays recorded and is retried.",
            decision=decision_of(result.decision).model_dump(mode="json"),
        )
    # Recorded but not applied yet: the reconciler finishes it; repeating the same PUT drives it too.
    raise Problem(
        503,
        "Service Unavailable",
        "The decision is recorded; it is applied as soon as the timesheets service answers (or "
        "voided, if the entry was deleted or decided meanwhile). Repeat this request to see the outcome.",
        headers=RETRY_AFTER,
        decision=decision_of(result.decision).model_dump(mode="json"),
    )
