"""The public routes (through the gateway as ``/api/approvals…``); both need approve:timesheets."""

from __future__ import annotations

import uuid

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from svckit.authz import identity_of, requires_scope
from svckit.body import parse_body
from svckit.contracts.approvals import DecisionIn, QueueQuery
from svckit.contracts.timesheets import EntryPage
from svckit.problems import Problem
from svckit.query import parse_query
from svckit.responses import json_response, model_response

from .peer import PeerUnavailable, Timesheets, not_json
from .representation import decision_of
from .workflow import Refusal, Workflow

APPROVE = "approve:timesheets"
RETRY_AFTER = {"Retry-After": "5"}
# What a decision voided by the timesheets service's verdict means to the client.
VOID_ANSWERS = {
    "entry_gone": (404, "No such timesheet entry."),
    "already_decided": (409, "The entry has already been decided."),
    "own_entry": (403, "Approvers cannot decide their own entries."),
}


def unavailable(detail: str) -> Problem:
    return Problem(503, "Service Unavailable", detail, headers=RETRY_AFTER)


@requires_scope(APPROVE)
async def queue(request: Request) -> Response:
    """Submitted entries of other users, newest date first (served by the timesheets service)."""
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
            return json_response(reply.text)
        except ValidationError:
            if not_json(reply.text) is not None:
                raise unavailable("The timesheets service is unreachable; retry shortly.") from None
            raise Problem(502, "Bad Gateway", "The timesheets service answered an invalid page.") from None
    if reply.status == 422 and isinstance(reply.body, dict):
        # A bad cursor: the timesheets service names the parameter; pass its problem on.
        raise Problem(
            422, "Unprocessable Content", reply.body.get("detail"), errors=reply.body.get("errors", [])
        )
    raise Problem(502, "Bad Gateway", f"The timesheets service answered {reply.status}.")


@requires_scope(APPROVE)
async def decide(request: Request) -> Response:
    """Approve or reject someone else's submitted entry; recorded once, applied exactly once."""
    approver = identity_of(request)
    try:
        entry_id = uuid.UUID(request.path_params["id"])
    except ValueError:
        raise Problem(404, "Not Found", "No such timesheet entry.") from None
    body = await parse_body(request, DecisionIn)
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
        return model_response(decision_of(result.decision, result.entry))
    if result.state == "void":
        status, detail = VOID_ANSWERS[result.reason]
        raise Problem(status, None, detail)
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
        "The decision is recorded and will be applied as soon as the timesheets service answers; "
        "repeat this request to see the outcome.",
        headers=RETRY_AFTER,
        decision=decision_of(result.decision).model_dump(mode="json"),
    )
