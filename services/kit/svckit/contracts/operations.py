"""Every HTTP operation of the platform's services: path, request models, answers, links.

This catalogue is what the OpenAPI documents are generated from: each service's internal
``/openapi.json`` (its own operations, paths as the service routes them) and the gateway's public
``/api/openapi.json`` (the operations ``routes.yaml`` exposes, under ``/api``). It names models and
describes answers; it does not say which scope an operation needs: services declare that next to
their handlers (``requires_scope``) and the gateway in ``routes.yaml``, and a test proves the two
agree route by route (``tests/contracts/test_route_scopes.py``).

Answers every operation can give whatever it does (401, 403, 503, and 400/413/415/422 for a body or
422 for a query) are added by :mod:`svckit.openapi`; only the operation's own answers are listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .approvals import Decision, DecisionIn, QueueQuery
from .audit import (
    CheckpointKeySet,
    CheckpointsPage,
    CheckpointsQuery,
    EventsPage,
    EventsQuery,
    IngestBatch,
    IngestResult,
    ReceiptCheck,
    VerifyQuery,
    VerifyResult,
)
from .timesheets import (
    DAY_HOURS_LIMIT,
    ApplyDecision,
    Entry,
    EntryIn,
    EntryPage,
    ListQuery,
    PendingQuery,
    UploadIn,
    UploadResult,
    UploadRow,
)

IDEMPOTENCY_KEY_PATTERN = "^[\\x21\\x23-\\x7E]{1,255}$"


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: the value of ``parameter`` of ``operation_id`` taken from this answer."""

    operation_id: str
    parameter: str
    expression: str
    description: str = ""


@dataclass(frozen=True)
class Answer:
    """One documented response. ``model`` set: an ``application/json`` body of that model; ``problem``
    set: an RFC 9457 problem with that example body; neither: no body."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    problem: Mapping[str, Any] | None = None
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    links: Mapping[str, Link] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    operation_id: str
    service: str
    method: str
    path: str
    summary: str
    answers: tuple[Answer, ...]
    description: str = ""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    # models the body's schema refers to by name without pydantic knowing (see UploadIn)
    also: tuple[type[BaseModel], ...] = ()
    idempotency_key: bool = False
    internal: bool = False
    tag: str = ""


def problem_example(status: int, title: str, detail: str, **extensions: Any) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, **extensions}


#: the header of a 503 that says when to come back
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
}


def problem_answer(status: int, title: str, description: str, detail: str, **extensions: Any) -> Answer:
    return Answer(status, description, problem=problem_example(status, title, detail, **extensions))


NOT_FOUND_ENTRY = problem_answer(
    404,
    "Not Found",
    "No such entry (unknown, deleted, or not visible to the caller).",
    "No such timesheet entry.",
)
ENTRY_ID_LINKS = {
    "GetEntry": Link("getEntry", "id", "$response.body#/id", "Read the entry just answered."),
    "DeleteEntry": Link("deleteEntry", "id", "$response.body#/id", "Delete the entry just answered."),
}
IDEMPOTENCY_HEADERS = {
    "Location": {
        "description": "The entry's URL, relative to the request's (timesheets/{id}).",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "true when this is the stored answer to an earlier request with the same key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
#: a person's day is full (timesheets/daycap.py): the create's 422
DAY_HOURS_EXCEEDED = problem_answer(
    422,
    "Unprocessable Content",
    "Invalid fields (errors[] names each one), an Idempotency-Key reused with a different body (type "
    "idempotency_key_reused), or the entry would take the caller's entries on its date past "
    f"{DAY_HOURS_LIMIT} hours (type day_hours_exceeded on hours: the detail says the day, the hours "
    "already recorded and how many more fit; deleted entries do not count, rejected ones do until "
    "deleted). Checked under a lock per person and day: of concurrent creates that together pass the "
    "limit, the later ones get this answer. Not kept for an Idempotency-Key: the same request may be "
    "repeated once the day has room.",
    f"A day holds at most {DAY_HOURS_LIMIT} hours: 20 hours are already recorded on 2026-11-23, so at "
    "most 4 more can be added.",
    errors=[
        {
            "field": "hours",
            "loc": ["hours"],
            "message": (
                f"would bring 2026-11-23 to 28 hours; 20 already recorded, at most {DAY_HOURS_LIMIT} a day"
            ),
            "type": "day_hours_exceeded",
        }
    ],
)
#: the upload's 422: bad rows, a reused key, or rows past a day's limit
UPLOAD_REFUSED = problem_answer(
    422,
    "Unprocessable Content",
    "Nothing was stored. Invalid fields (errors[] names each one as entries.N.field), an "
    "Idempotency-Key reused with a different body (type idempotency_key_reused), or rows that would "
    f"take a user's day past {DAY_HOURS_LIMIT} hours (type day_hours_exceeded, entries.N.hours, "
    "counting the hours already recorded and the batch's earlier rows that fit; reported once every "
    "row is valid).",
    f"2 of 7 rows would take a day past {DAY_HOURS_LIMIT} hours; nothing was stored.",
    errors=[
        {
            "field": "entries.2.hours",
            "loc": ["entries", 2, "hours"],
            "message": f"would bring 2026-11-23 to 25 hours for local|alice: 20 already recorded, 4 in rows "
            f"before it; at most {DAY_HOURS_LIMIT} a day",
            "type": "day_hours_exceeded",
        }
    ],
)

OPERATIONS: tuple[Operation, ...] = (
    # ---- timesheets ------------------------------------------------------------------------------
    Operation(
        "listEntries",
        "timesheets",
        "GET",
        "/timesheets",
        "The caller's own entries, newest date first",
        (
            Answer(
                200,
                "One page; next_cursor leads to the next.",
                EntryPage,
                links={"GetFirstEntry": Link("getEntry", "id", "$response.body#/items/0/id")},
            ),
        ),
        query=ListQuery,
        tag="timesheets",
    ),
    Operation(
        "createEntry",
        "timesheets",
        "POST",
        "/timesheets",
        "Create an entry owned by the caller (status submitted)",
        (
            Answer(
                201,
                "Created, or the stored answer to a retry with the same Idempotency-Key and body.",
                Entry,
                headers=IDEMPOTENCY_HEADERS,
                links=ENTRY_ID_LINKS,
            ),
            DAY_HOURS_EXCEEDED,
            Answer(
                503,
                "Unavailable; with outcome unknown, the database went away while the entry was being "
                "committed: look it up at Location, or repeat with the same Idempotency-Key.",
                problem=problem_example(
                    503,
                    "Service Unavailable",
                    "The database went away while the entry was being committed; whether it was stored "
                    "is not known yet. Look it up at the Location given, or repeat with the same "
                    "Idempotency-Key.",
                    outcome="unknown",
                ),
                headers={
                    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
                    "Location": {
                        "description": "Where the entry is if it was stored (outcome unknown only).",
                        "schema": {"type": "string"},
                    },
                },
            ),
        ),
        body=EntryIn,
        idempotency_key=True,
        tag="timesheets",
    ),
    Operation(
        "uploadEntries",
        "timesheets",
        "POST",
        "/timesheets/upload",
        "Batch upload by a machine client: up to 1,000 entries for named users, all or nothing",
        (
            Answer(201, "All rows stored.", UploadResult),
            problem_answer(
                403,
                "Forbidden",
                "The caller lacks the scope, or is not a machine client acting as itself.",
                "Batch upload is for machine clients acting as themselves.",
            ),
            UPLOAD_REFUSED,
        ),
        description=(
            "Any bad row refuses the whole batch; errors[] names every bad field as entries.N.field. A "
            f"user's entries on one date add up to at most {DAY_HOURS_LIMIT} hours: rows past that are "
            "refused the same way (entries.N.hours, day_hours_exceeded)."
        ),
        body=UploadIn,
        also=(UploadRow,),
        idempotency_key=True,
        tag="timesheets",
    ),
    Operation(
        "getEntry",
        "timesheets",
        "GET",
        "/timesheets/{id}",
        "The caller's entry, or a submitted entry of someone else when the caller approves",
        (Answer(200, "The entry.", Entry, links=ENTRY_ID_LINKS), NOT_FOUND_ENTRY),
        tag="timesheets",
    ),
    Operation(
        "deleteEntry",
        "timesheets",
        "DELETE",
        "/timesheets/{id}",
        "Delete the caller's own entry unless it is approved",
        (
            Answer(204, "Deleted."),
            NOT_FOUND_ENTRY,
            problem_answer(
                409,
                "Conflict",
                "The entry is approved and stays.",
                "An approved entry cannot be deleted.",
                status_text="approved",
            ),
        ),
        tag="timesheets",
    ),
    Operation(
        "pendingEntries",
        "timesheets",
        "GET",
        "/internal/timesheets/pending",
        "Internal (approvals only): submitted entries of everyone but one approver",
        (Answer(200, "One page.", EntryPage),),
        query=PendingQuery,
        internal=True,
        tag="internal",
    ),
    Operation(
        "entryForPeer",
        "timesheets",
        "GET",
        "/internal/timesheets/{id}",
        "Internal (approvals only): any live entry",
        (Answer(200, "The entry.", Entry), NOT_FOUND_ENTRY),
        internal=True,
        tag="internal",
    ),
    Operation(
        "applyDecision",
        "timesheets",
        "POST",
        "/internal/timesheets/{id}/decision",
        "Internal (approvals only): apply a decision; idempotent by decision_id",
        (
            Answer(200, "Applied now or earlier (a replay of the same decision_id).", Entry),
            problem_answer(
                403, "Forbidden", "The approver owns the entry.", "Approvers cannot decide their own entries."
            ),
            NOT_FOUND_ENTRY,
            problem_answer(
                409,
                "Conflict",
                "Already decided by another decision (entry carries the entry).",
                "The entry has already been decided.",
            ),
        ),
        body=ApplyDecision,
        internal=True,
        tag="internal",
    ),
    # ---- approvals -------------------------------------------------------------------------------
    Operation(
        "approvalQueue",
        "approvals",
        "GET",
        "/approvals",
        "Submitted entries of other users awaiting a decision, newest date first",
        (
            Answer(
                200,
                "One page.",
                EntryPage,
                links={
                    "ApproveFirst": Link("decide", "id", "$response.body#/items/0/id", "Decide the first."),
                },
            ),
            problem_answer(
                502,
                "Bad Gateway",
                "The timesheets service answered something unexpected.",
                "The timesheets service answered 500.",
            ),
        ),
        query=QueueQuery,
        tag="approvals",
    ),
    Operation(
        "decide",
        "approvals",
        "PUT",
        "/approvals/{id}",
        "Approve or reject someone else's submitted entry (recorded once per entry)",
        (
            Answer(200, "Applied; entry holds the decided entry.", Decision),
            problem_answer(
                403,
                "Forbidden",
                "The caller lacks the scope, or the entry is the caller's own.",
                "Approvers cannot decide their own entries.",
            ),
            NOT_FOUND_ENTRY,
            problem_answer(
                409,
                "Conflict",
                "The entry already has a decision (decision carries it, when known).",
                "The entry already has a decision.",
            ),
            problem_answer(
                502,
                "Bad Gateway",
                "The timesheets service refused the decision unexpectedly; it stays recorded and is retried.",
                "The timesheets service refused the decision unexpectedly; it stays recorded and is retried.",
            ),
        ),
        description=(
            "A decision is recorded, applied at the timesheets service idempotently, and reconciled "
            "after failures: a 503 with decision set means it is recorded and will be applied; repeating "
            "the same request shows the outcome."
        ),
        body=DecisionIn,
        tag="approvals",
    ),
    # ---- audit -----------------------------------------------------------------------------------
    Operation(
        "ingestEvents",
        "audit",
        "POST",
        "/internal/events",
        "Record audit events (platform services only; idempotent by event id)",
        (Answer(200, "Stored (accepted) or already stored (duplicates).", IngestResult),),
        description=(
            "Up to 500 events. An event whose id is already recorded is counted as a duplicate and not "
            "stored again. Each event's source must be the calling service's own name."
        ),
        body=IngestBatch,
        internal=True,
        tag="internal",
    ),
    Operation(
        "checkReceipt",
        "audit",
        "GET",
        "/internal/receipts/{id}",
        "Internal (platform services only): whether the trail still holds one of the caller's events",
        (
            Answer(200, "Stored (with its seq and hash) or not stored.", ReceiptCheck),
            problem_answer(404, "Not Found", "The id is not a UUID.", "No such receipt."),
        ),
        description=(
            "A producer's outbox relay holds the trail to the receipt the ingest answered for the newest "
            "event it delivered (svckit.outbox): the record must still be there, at the same seq and "
            "with the same hash. Only the calling service's own events are found."
        ),
        internal=True,
        tag="internal",
    ),
    Operation(
        "listEvents",
        "audit",
        "GET",
        "/audit/events",
        "Audit records, newest first",
        (
            Answer(200, "One page of records.", EventsPage),
            problem_answer(
                422,
                "Unprocessable Content",
                "A query parameter is invalid, unknown or repeated (errors[] names it), or the listing "
                "selects too much to list within the read timeout (AUDIT_READ_TIMEOUT_SECONDS): "
                "errors[0].type query_too_broad; narrow the from/to window or filter more. A retry "
                "costs the same again.",
                "The listing took longer than 5 s and was stopped. Narrow it: a shorter from/to window, "
                "or a filter that selects fewer records (actor, resource_id, client_id).",
                errors=[
                    {
                        "field": "query",
                        "loc": ["query"],
                        "message": "selects too much to list within 5 s",
                        "type": "query_too_broad",
                    }
                ],
            ),
            Answer(
                503,
                "The database is unreachable, or every listing turn (AUDIT_READ_CONCURRENCY, shared with "
                "GET /audit/checkpoints and /audit/verify) stayed taken for the read timeout; retry after "
                "Retry-After seconds.",
                problem=problem_example(
                    503,
                    "Service Unavailable",
                    "The listing was not started: every listing turn (4) is taken; retry after 2 s.",
                ),
                headers=RETRY_AFTER,
            ),
        ),
        query=EventsQuery,
        tag="audit",
    ),
    Operation(
        "verifyChain",
        "audit",
        "GET",
        "/audit/verify",
        "Recompute the hash chain (or a range of it) and hold it to its signed checkpoints",
        (
            Answer(
                200,
                "Whether the chain (or the range, with what anchored it) is intact, and where it breaks.",
                VerifyResult,
            ),
            problem_answer(
                422,
                "Unprocessable Content",
                "A query parameter is invalid, unknown or repeated (errors[] names it); a range that names "
                "nothing on this chain (since or until beyond the head, until before the range's start, "
                "no such checkpoint, since with from_checkpoint, a checkpoint signed by a key the service "
                "no longer knows, checkpoints off: errors[] names the parameter, type bad_range); or the "
                "walk ran into the verification time limit (AUDIT_VERIFY_TIMEOUT_SECONDS) and was "
                "stopped: errors[0].type chain_too_long. Nothing is known about the chain from such an "
                "answer (audit_chain_ok is the background verifier's verdict); a retry is stopped again: "
                "verify a range (from_checkpoint=latest), or from outside with python -m audit verify.",
                "Verifying the chain took longer than 25 s and was stopped: the trail is too long to "
                "verify on request, and nothing is known about it from this one. The service verifies it "
                "in the background (audit_chain_ok); verify it yourself from outside with `python -m "
                "audit verify`, or verify a range on request instead: ?from_checkpoint=latest (from the "
                "newest signed checkpoint to the head) or ?since=<seq> (from the newest checkpoint at or "
                "before that record).",
                errors=[
                    {
                        "field": "query",
                        "loc": ["query"],
                        "message": "the chain cannot be walked within 25 s",
                        "type": "chain_too_long",
                    }
                ],
            ),
            Answer(
                503,
                "The database is unreachable, or AUDIT_VERIFY_CONCURRENCY walks are running already (the "
                "request is refused at once, not queued), or no listing turn (AUDIT_READ_CONCURRENCY) "
                "came within the read timeout; retry after Retry-After seconds (when the running walk "
                "must have ended).",
                problem=problem_example(
                    503,
                    "Service Unavailable",
                    "The verification was not started: every verification turn (1) is taken; retry "
                    "after 18 s.",
                ),
                headers=RETRY_AFTER,
            ),
        ),
        description=(
            "Walks every record, recomputing each hash and link, and requires the record at each signed "
            "checkpoint's position to still carry the head hash that was signed: a history rewritten and "
            "re-hashed with full database access is reported, with first_bad the first record after the "
            "last checkpoint that still matches. The checkpoints themselves are checked too: signatures, "
            "numbering and the chain of prev digests. A walk on request is bounded: within "
            "AUDIT_VERIFY_TIMEOUT_SECONDS (422 chain_too_long past it), at most AUDIT_VERIFY_CONCURRENCY "
            "at once (503 beyond); requests without parameters that arrive during a walk without any "
            "share its result instead of starting another. A range (from_checkpoint=<n>|latest, or "
            "since=<seq>: the newest checkpoint at or before it; optionally until=<seq>) is walked from a "
            "signed checkpoint whose signature must verify with a known key and whose record must still "
            "carry the head it signed (or from the chain's start when no checkpoint lies that early), "
            "then on to the head or until, holding the records to every later checkpoint: the answer's "
            "range says what was verified and what anchored it. A checkpoint that does not verify "
            "anchors nothing (ok false, checked 0). The same bounds apply; a range is cheap when it is "
            "short. audit_chain_ok is set to 0 by a broken range, left alone by an intact one."
        ),
        query=VerifyQuery,
        tag="audit",
    ),
    Operation(
        "listCheckpoints",
        "audit",
        "GET",
        "/audit/checkpoints",
        "Signed checkpoints of the chain, newest first",
        (
            Answer(200, "One page of checkpoints.", CheckpointsPage),
            Answer(
                503,
                "The database is unreachable or slow (a page, at most 100 checkpoints read by key, ran "
                "into the read timeout, AUDIT_READ_TIMEOUT_SECONDS), or every listing turn "
                "(AUDIT_READ_CONCURRENCY) stayed taken; retry after Retry-After seconds.",
                problem=problem_example(
                    503,
                    "Service Unavailable",
                    "The page of checkpoints took longer than 5 s and was stopped; retry shortly.",
                ),
                headers=RETRY_AFTER,
            ),
        ),
        description=(
            "Each checkpoint signs the chain's head (seq and hash) at a moment, with a key kept outside "
            "the database, and chains to the one before (prev). Keep copies outside the platform: "
            "verifying against them (python -m audit verify --checkpoints FILE) also detects checkpoints "
            "deleted or re-signed later."
        ),
        query=CheckpointsQuery,
        tag="audit",
    ),
    Operation(
        "checkpointKeys",
        "audit",
        "GET",
        "/audit/checkpoint-keys",
        "The public keys checkpoints are signed with (a JWKS)",
        (Answer(200, "The current signing key first, then keys that only verify.", CheckpointKeySet),),
        description=(
            "Ed25519 keys as JWKs (RFC 8037). Pin them where checkpoints are verified: keys fetched from "
            "the platform being audited are only as trustworthy as the platform."
        ),
        tag="audit",
    ),
)

SERVICES = ("timesheets", "approvals", "audit")


def operations_of(service: str) -> list[Operation]:
    return [op for op in OPERATIONS if op.service == service]


def find(service: str, method: str, path: str) -> Operation | None:
    """The operation a service serves at ``method path`` (path as the service routes it)."""
    for op in OPERATIONS:
        if (op.service, op.method, op.path) == (service, method.upper(), path):
            return op
    return None


__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "OPERATIONS",
    "SERVICES",
    "Answer",
    "Link",
    "Operation",
    "find",
    "operations_of",
    "problem_answer",
    "problem_example",
]
