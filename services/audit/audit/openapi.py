"""The audit service's OpenAPI 3.1 document (served at ``/openapi.json``), generated from the
contracts (:mod:`svckit.contracts.operations`) and the scopes the handlers declare.

Public routes are reached through the gateway under /api (GET /api/audit/events → GET /audit/events).
"""

from __future__ import annotations

from typing import Any

from svckit.openapi import service_document

from .api import routes


def build_document() -> dict[str, Any]:
    return service_document(
        "audit",
        routes,
        title="Timesheets platform — audit service",
        description=(
            "The append-only, hash-chained audit trail. Public routes are reached through the gateway "
            "under /api (GET /api/audit/events → GET /audit/events). Every request must carry the "
            "gateway-signed identity headers (X-Identity-*, see docs/CONTRACTS.md); /internal routes "
            "are not routed by the gateway and answer service principals only."
        ),
    )
