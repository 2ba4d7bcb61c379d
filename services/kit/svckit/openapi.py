"""Small helpers for the hand-written OpenAPI 3.1 documents each service serves at ``/openapi.json``.

Services describe their own operations; this module supplies the parts every document repeats
(the problem+json error shape, the identity security scheme) and the check tests run: every route
the app serves is documented, and nothing documented is missing from the app.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
METHODS = ("get", "put", "post", "delete", "patch")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Per-field errors (validation problems).",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "description": "dotted path, e.g. entries.3.hours"},
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

IDENTITY_SECURITY_SCHEME: dict[str, Any] = {
    "type": "apiKey",
    "in": "header",
    "name": "X-Identity-Signature",
    "description": (
        "The gateway-signed identity (X-Identity-* headers, HMAC over identity and request line; "
        "see docs/CONTRACTS.md). Requests without a verifying identity get 401."
    ),
}


def problem(description: str) -> dict[str, Any]:
    """A response that is a problem document."""
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def json_body(schema: Mapping[str, Any], description: str = "A JSON document.") -> dict[str, Any]:
    """A request body or response with a JSON document (responses require a description)."""
    return {"description": description, "content": {"application/json": {"schema": dict(schema)}}}


def document(
    *,
    title: str,
    version: str,
    description: str,
    paths: Mapping[str, Any],
    schemas: Mapping[str, Any],
    servers: Iterable[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """An OpenAPI 3.1 document with the shared components added."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "servers": list(servers),
        "security": [{"gatewayIdentity": []}],
        "paths": dict(paths),
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA, **schemas},
            "securitySchemes": {"gatewayIdentity": IDENTITY_SECURITY_SCHEME},
        },
    }


def app_operations(app: Starlette) -> set[tuple[str, str]]:
    """(path template, method) of every route the app serves, operational endpoints excluded."""
    found = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path not in OPERATIONAL_PATHS:
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((route.path, method.lower()))
    return found


def documented_operations(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method) for path, item in doc.get("paths", {}).items() for method in item if method in METHODS
    }


__all__ = [
    "IDENTITY_SECURITY_SCHEME",
    "PROBLEM_SCHEMA",
    "app_operations",
    "document",
    "documented_operations",
    "json_body",
    "problem",
]
