"""The OpenAPI 3.1 document of the audit service, served at ``/openapi.json``.

Schemas are generated from the same pydantic models that validate requests (and that the tests
check real responses against), so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .models import (
    MAX_BATCH,
    AuditRecord,
    EventsPage,
    IngestBatch,
    IngestResult,
    ProblemDetails,
    VerifyResult,
)

REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [
        (IngestBatch, "validation"),
        (IngestResult, "serialization"),
        (AuditRecord, "serialization"),
        (EventsPage, "serialization"),
        (VerifyResult, "serialization"),
        (ProblemDetails, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=REF)
    return dict(top.get("$defs", {}))


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="ProblemDetails")}}},
    }


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


COMMON_ERRORS = {
    "401": _problem("No gateway-signed identity, or it does not verify."),
    "403": _problem("The identity lacks the scope (or is not a service principal)."),
    "503": _problem("The database is unreachable; retry after Retry-After seconds."),
}


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Timesheets platform — audit service",
            "version": "1.0.0",
            "description": (
                "The append-only, hash-chained audit trail. Public routes are reached through the "
                "gateway under /api (GET /api/audit/events → GET /audit/events). Every request must "
                "carry the gateway-signed identity headers (X-Identity-*, see docs/CONTRACTS.md); "
                "/internal routes are not routed by the gateway and answer service principals only."
            ),
        },
        "servers": [{"url": "/", "description": "the service itself (through the gateway: /api)"}],
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "gatewayIdentity": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Identity-Signature",
                    "description": "HMAC over the X-Identity-* headers and the request line.",
                }
            },
        },
        "security": [{"gatewayIdentity": []}],
        "paths": {
            "/internal/events": {
                "post": {
                    "operationId": "ingestEvents",
                    "summary": "Record audit events (platform services only; idempotent by event id)",
                    "description": (
                        f"Up to {MAX_BATCH} events. An event whose id is already recorded is counted "
                        "as a duplicate and not stored again. Each event's source must be the calling "
                        "service's own name."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": REF.format(model="IngestBatch")}}
                        },
                    },
                    "responses": {
                        "200": _json("IngestResult", "Stored (accepted) or already stored (duplicates)."),
                        "400": _problem("The body is not JSON."),
                        "413": _problem("The body is too large."),
                        "415": _problem("The body is not application/json."),
                        "422": _problem("Invalid events; errors[].field names each one."),
                        **COMMON_ERRORS,
                    },
                }
            },
            "/audit/events": {
                "get": {
                    "operationId": "listEvents",
                    "summary": "Audit records, newest first (read:audit)",
                    "parameters": [
                        _query("actor", "Actor subject."),
                        _query("actor_issuer", "Actor issuer."),
                        _query("client_id", "Client id of the actor's token."),
                        _query("action", "Exact action, e.g. timesheet.created."),
                        _query("resource_type", "Resource type, e.g. timesheet."),
                        _query("resource_id", "Resource id."),
                        _query(
                            "outcome",
                            "Outcome.",
                            {"type": "string", "enum": ["success", "denied", "failure"]},
                        ),
                        _query("source", "Producing service."),
                        _query(
                            "from",
                            "occurred_at ≥ from (RFC 3339).",
                            {"type": "string", "format": "date-time"},
                        ),
                        _query(
                            "to", "occurred_at < to (RFC 3339).", {"type": "string", "format": "date-time"}
                        ),
                        _query(
                            "limit",
                            "Page size.",
                            {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                        ),
                        _query("cursor", "next_cursor of the previous page."),
                    ],
                    "responses": {
                        "200": _json("EventsPage", "One page of records."),
                        "422": _problem("A bad query parameter; errors[].field names it."),
                        **COMMON_ERRORS,
                    },
                }
            },
            "/audit/verify": {
                "get": {
                    "operationId": "verifyChain",
                    "summary": "Recompute the hash chain (read:audit)",
                    "parameters": [
                        _query(
                            "anchor",
                            "'<seq>:<hash>' of a record seen earlier (e.g. the newest from "
                            "GET /audit/events?limit=1, kept outside the database): the chain must "
                            "still hold it unchanged, which catches truncation and re-hashed rewrites.",
                            {"type": "string", "pattern": "^[1-9][0-9]*:[0-9a-f]{64}$"},
                        )
                    ],
                    "responses": {
                        "200": _json("VerifyResult", "Whether the chain is intact, and where it breaks."),
                        "422": _problem("A malformed anchor."),
                        **COMMON_ERRORS,
                    },
                }
            },
        },
    }
