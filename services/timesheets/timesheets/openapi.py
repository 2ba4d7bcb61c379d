"""The timesheets service's OpenAPI 3.1 document (served at ``/openapi.json``), generated from the
contracts (:mod:`svckit.contracts.operations`) and the scopes the handlers declare.

Paths are as the service receives them; through the gateway they are prefixed with ``/api``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute
from svckit.openapi import service_document


def document(routes: Sequence[BaseRoute] | None = None) -> dict[str, Any]:
    if routes is None:
        from .app import ROUTES

        routes = ROUTES
    return service_document(
        "timesheets",
        routes,
        title="Timesheets service",
        description=(
            "Timesheet entries owned by their users. Reached through the gateway under /api "
            "(/api/timesheets → /timesheets); /internal/… routes are never routed by the gateway and "
            "answer only the approvals service principal."
        ),
    )
