"""The approvals service's OpenAPI 3.1 document (served at ``/openapi.json``).

Paths are as the service receives them; through the gateway they are prefixed with ``/api``.
"""

from __future__ import annotations

from typing import Any

from svckit.openapi import document as base_document
from svckit.openapi import json_body, problem

from .models import DecisionIn

REF = "#/components/schemas/{model}"
ENTRY_DOC = "The entry as the timesheets service documents it (its /openapi.json, schema Entry)."

DECISION = {
    "type": "object",
    "required": ["id", "entry_id", "decision", "comment", "by", "at", "state", "entry"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "entry_id": {"type": "string", "format": "uuid"},
        "decision": {"type": "string", "enum": ["approved", "rejected"]},
        "comment": {"type": ["string", "null"]},
        "by": {
            "type": "object",
            "properties": {
                "issuer": {"type": "string"},
                "subject": {"type": "string"},
                "name": {"type": ["string", "null"]},
            },
        },
        "at": {"type": "string", "format": "date-time"},
        "state": {
            "type": "string",
            "enum": ["pending", "applied", "void"],
            "description": "applied: the entry carries the decision; pending: being applied.",
        },
        "entry": {"type": ["object", "null"], "description": ENTRY_DOC},
    },
}

QUEUE = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": {"type": "object", "description": ENTRY_DOC}},
        "next_cursor": {"type": ["string", "null"]},
    },
}

SCOPE = "approve:timesheets"
COMMON = {
    "401": problem("No verifying gateway-signed identity."),
    "403": problem("The identity lacks approve:timesheets (or, for PUT, the entry is the caller's own)."),
    "503": problem("The timesheets service is unreachable (Retry-After)."),
}

PATHS: dict[str, Any] = {
    "/approvals": {
        "get": {
            "summary": "Submitted entries of other users awaiting a decision, newest date first",
            "x-required-scope": SCOPE,
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                },
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": json_body({"$ref": "#/components/schemas/Queue"}, "One page."),
                "422": problem("Bad limit or cursor (errors[] names it)."),
                **COMMON,
            },
        }
    },
    "/approvals/{id}": {
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        ],
        "put": {
            "summary": "Approve or reject someone else's submitted entry (recorded once per entry)",
            "x-required-scope": SCOPE,
            "requestBody": {"required": True, **json_body({"$ref": "#/components/schemas/DecisionIn"})},
            "responses": {
                "200": json_body(
                    {"$ref": "#/components/schemas/Decision"}, "Applied; the entry is in entry."
                ),
                "400": problem("Malformed JSON."),
                "404": problem("Unknown or deleted entry."),
                "409": problem("The entry already has a decision (decision carries it, when known)."),
                "415": problem("Not application/json."),
                "422": problem("Bad decision value or comment."),
                "502": problem("The timesheets service refused the decision unexpectedly; it is retried."),
                **COMMON,
            },
        },
    },
}


def document() -> dict[str, Any]:
    schema = DecisionIn.model_json_schema(ref_template=REF)
    return base_document(
        title="Approvals service",
        version="1.0.0",
        description=(
            "Approvers decide other users' submitted entries. Reached through the gateway under /api "
            "(/api/approvals → /approvals). A decision is recorded here, applied at the timesheets "
            "service idempotently, and reconciled after failures (docs/approvals-consistency.md)."
        ),
        paths=PATHS,
        schemas={"Decision": DECISION, "Queue": QUEUE, "DecisionIn": schema},
    )
