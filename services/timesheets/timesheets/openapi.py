"""The timesheets service's OpenAPI 3.1 document (served at ``/openapi.json``).

Paths are as the service receives them; through the gateway they are prefixed with ``/api``.
Request schemas come from the pydantic models that validate them, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from svckit.openapi import document as base_document
from svckit.openapi import json_body, problem

from .models import MAX_UPLOAD_ENTRIES, STATUSES, Approver, DecisionIn, EntryIn, UploadRow

REF = "#/components/schemas/{model}"

PERSON = {
    "type": "object",
    "required": ["issuer", "subject", "name"],
    "properties": {
        "issuer": {"type": "string"},
        "subject": {"type": "string"},
        "name": {"type": ["string", "null"]},
    },
}

ENTRY = {
    "type": "object",
    "required": [
        "id",
        "owner",
        "date",
        "project",
        "hours",
        "notes",
        "status",
        "decision",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "owner": {"$ref": "#/components/schemas/Person"},
        "date": {"type": "string", "format": "date"},
        "project": {"type": "string", "minLength": 1, "maxLength": 100},
        "hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 24, "multipleOf": 0.25},
        "notes": {"type": ["string", "null"], "maxLength": 2000},
        "status": {"type": "string", "enum": ["submitted", "approved", "rejected"]},
        "decision": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["decision", "by", "at", "comment"],
                    "properties": {
                        "decision": {"type": "string", "enum": ["approved", "rejected"]},
                        "by": {"$ref": "#/components/schemas/Person"},
                        "at": {"type": "string", "format": "date-time"},
                        "comment": {"type": ["string", "null"]},
                    },
                },
            ]
        },
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

PAGE = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Entry"}},
        "next_cursor": {
            "type": ["string", "null"],
            "description": "Opaque; pass as ?cursor= for the next page. null on the last page.",
        },
    },
}

UPLOAD_IN = {
    "type": "object",
    "required": ["entries"],
    "additionalProperties": False,
    "properties": {
        "entries": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_UPLOAD_ENTRIES,
            "items": {"$ref": "#/components/schemas/UploadRow"},
        }
    },
}

UPLOAD_OUT = {
    "type": "object",
    "required": ["upload_id", "count", "items"],
    "properties": {
        "upload_id": {"type": "string", "format": "uuid"},
        "count": {"type": "integer"},
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Entry"}},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": (
        "A retry with the same key and body replays the first response (header Idempotent-Replayed: "
        "true) and creates nothing; the same key with a different body answers 422. Keys are per "
        "caller and remembered for IDEMPOTENCY_TTL_HOURS (24 h)."
    ),
}
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}, "Page size.")
CURSOR = _query("cursor", {"type": "string"}, "next_cursor of the previous page.")

UNAUTHORIZED = problem("No verifying gateway-signed identity.")
BAD_INPUT = problem("Invalid parameters or body; errors[] names each field.")


def _operation(summary: str, scope: str | None, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, **extra}
    all_responses = {**responses, "401": UNAUTHORIZED}
    if scope is not None:
        operation["x-required-scope"] = scope
        all_responses.setdefault("403", problem(f"The identity lacks the scope {scope}."))
    else:
        operation["x-required-principal"] = "service:approvals"
        all_responses.setdefault("403", problem("The caller is not the approvals service."))
    operation["responses"] = all_responses
    return operation


PATHS: dict[str, Any] = {
    "/timesheets": {
        "get": _operation(
            "The caller's own entries, newest date first",
            "read:timesheets",
            {"200": json_body(_ref("EntryPage"), "One page."), "422": BAD_INPUT},
            parameters=[
                _query("from", {"type": "string", "format": "date"}, "Earliest date (inclusive)."),
                _query("to", {"type": "string", "format": "date"}, "Latest date (inclusive)."),
                _query("status", {"type": "string", "enum": list(STATUSES)}, "Status."),
                _query("project", {"type": "string"}, "Exact project name."),
                LIMIT,
                CURSOR,
            ],
        ),
        "post": _operation(
            "Create an entry owned by the caller (status submitted)",
            "create:timesheets",
            {
                "201": {
                    **json_body(_ref("Entry"), "Created (or replayed for a retried Idempotency-Key)."),
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
                "400": problem("Malformed JSON or Idempotency-Key."),
                "415": problem("Not application/json."),
                "422": BAD_INPUT,
            },
            parameters=[IDEMPOTENCY_KEY],
            requestBody={"required": True, **json_body(_ref("EntryIn"))},
        ),
    },
    "/timesheets/upload": {
        "post": _operation(
            "Batch upload by a machine client: up to 1,000 entries for named users, all or nothing",
            "batch:upload",
            {
                "201": json_body(_ref("UploadResult"), "All rows stored."),
                "400": problem("Malformed JSON or Idempotency-Key."),
                "413": problem("Body too large."),
                "415": problem("Not application/json."),
                "422": problem("Nothing stored; errors[] names every bad field as entries.N.field."),
            },
            parameters=[IDEMPOTENCY_KEY],
            requestBody={"required": True, **json_body(_ref("UploadIn"))},
        ),
    },
    "/timesheets/{id}": {
        "parameters": [ID_PARAM],
        "get": _operation(
            "The caller's entry, or a submitted entry of someone else when the caller approves",
            "read:timesheets",
            {"200": json_body(_ref("Entry")), "404": problem("Unknown, deleted, or not visible.")},
        ),
        "delete": _operation(
            "Delete the caller's own entry unless approved",
            "delete:timesheets",
            {
                "204": {"description": "Deleted."},
                "404": problem("Unknown, deleted, or not the caller's."),
                "409": problem("The entry is approved."),
            },
        ),
    },
    "/internal/timesheets/pending": {
        "get": _operation(
            "Internal (approvals only): submitted entries of everyone but one approver",
            None,
            {"200": json_body(_ref("EntryPage")), "422": BAD_INPUT},
            parameters=[
                _query("exclude_issuer", {"type": "string"}, "The approver's issuer.", True),
                _query("exclude_subject", {"type": "string"}, "The approver's subject.", True),
                LIMIT,
                CURSOR,
            ],
        ),
    },
    "/internal/timesheets/{id}": {
        "parameters": [ID_PARAM],
        "get": _operation(
            "Internal (approvals only): any live entry",
            None,
            {"200": json_body(_ref("Entry")), "404": problem("Unknown or deleted.")},
        ),
    },
    "/internal/timesheets/{id}/decision": {
        "parameters": [ID_PARAM],
        "post": _operation(
            "Internal (approvals only): apply a decision; idempotent by decision_id",
            None,
            {
                "200": json_body(_ref("Entry"), "Applied now or earlier (a replay of the same decision_id)."),
                "403": problem("The approver owns the entry."),
                "404": problem("Unknown or deleted."),
                "409": problem("Already decided by another decision (the body carries the entry)."),
                "422": BAD_INPUT,
            },
            requestBody={"required": True, **json_body(_ref("DecisionIn"))},
        ),
    },
}


def _model_schema(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    return schema


def document() -> dict[str, Any]:
    return base_document(
        title="Timesheets service",
        version="1.0.0",
        description=(
            "Timesheet entries owned by their users. Reached through the gateway under /api "
            "(/api/timesheets → /timesheets); /internal/… routes are never routed by the gateway and "
            "answer only the approvals service principal."
        ),
        paths=PATHS,
        schemas={
            "Person": PERSON,
            "Entry": ENTRY,
            "EntryPage": PAGE,
            "EntryIn": _model_schema(EntryIn),
            "UploadRow": _model_schema(UploadRow),
            "UploadIn": UPLOAD_IN,
            "UploadResult": UPLOAD_OUT,
            "DecisionIn": _model_schema(DecisionIn),
            "Approver": _model_schema(Approver),
        },
    )
