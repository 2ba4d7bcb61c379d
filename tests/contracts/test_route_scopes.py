"""Route scopes have two declarations that must agree: the gateway's ``routes.yaml`` (enforced at the
edge) and each handler's ``requires_scope`` (enforced again in the service, defence in depth). This
compares them route by route, in both directions, and proves the comparison can fail."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import gateway
import pytest
from approvals.app import ROUTES as APPROVALS_ROUTES
from audit.api import routes as AUDIT_ROUTES  # noqa: N812 - named like the other two
from gateway.routes import API_PREFIX, Route, RouteTable, load_routes
from starlette.routing import BaseRoute
from starlette.routing import Route as ServiceRoute
from svckit.contracts.operations import SERVICES
from timesheets.app import ROUTES as TIMESHEETS_ROUTES

pytestmark = pytest.mark.unit

ROUTES_FILE = Path(gateway.__file__).parent / "routes.yaml"
SERVICE_ROUTES: dict[str, Sequence[BaseRoute]] = {
    "timesheets": TIMESHEETS_ROUTES,
    "approvals": APPROVALS_ROUTES,
    "audit": AUDIT_ROUTES,
}


def served(routes: Sequence[BaseRoute]) -> dict[tuple[str, str], ServiceRoute]:
    return {
        (method, route.path): route
        for route in routes
        if isinstance(route, ServiceRoute)
        for method in (route.methods or ())
        if method != "HEAD"
    }


def scope_mismatches(table: RouteTable, services: Mapping[str, Sequence[BaseRoute]]) -> list[str]:
    """Every disagreement between the route table and the services' handlers, one line each."""
    problems: list[str] = []
    exposed: set[tuple[str, str, str]] = set()
    for route in table.routes:
        path = route.template[len(API_PREFIX) :]
        exposed.add((route.upstream, route.method, path))
        handler = served(services[route.upstream]).get((route.method, path))
        where = f"{route.method} {route.template} → {route.upstream} {path}"
        if handler is None:
            problems.append(f"{where}: the service serves no such route")
            continue
        required = getattr(handler.endpoint, "required_scope", None)
        if required is None:
            problems.append(f"{where}: the handler declares no scope (requires_scope)")
        elif route.scopes != {required} or route.require != "all":
            problems.append(f"{where}: routes.yaml says {sorted(route.scopes)}, the handler {required!r}")
    for service, routes in services.items():
        for (method, path), handler in served(routes).items():
            if path.startswith("/internal/"):
                if getattr(handler.endpoint, "required_scope", None) is not None:
                    problems.append(f"{service} {method} {path}: internal routes take service principals")
                continue
            if (service, method, path) not in exposed:
                problems.append(f"{service} {method} {path}: public, but routes.yaml does not route it")
    return problems


def test_routes_yaml_and_the_handlers_agree_route_by_route() -> None:
    table = load_routes(ROUTES_FILE, frozenset(SERVICES))
    assert scope_mismatches(table, SERVICE_ROUTES) == []
    assert len(table.routes) == 11  # every public operation, none of the internal ones


def test_the_comparison_fails_when_they_do_not_agree() -> None:
    table = load_routes(ROUTES_FILE, frozenset(SERVICES))
    # A scope changed in the table only:
    wrong = [
        dataclasses.replace(r, scopes=frozenset({"read:audit"}))
        if (r.method, r.template) == ("GET", "/api/timesheets")
        else r
        for r in table.routes
    ]
    found = scope_mismatches(RouteTable(wrong, table.upstreams), SERVICE_ROUTES)
    assert found == [
        "GET /api/timesheets → timesheets /timesheets: routes.yaml says ['read:audit'], "
        "the handler 'read:timesheets'"
    ]
    # A public route the table forgot, and a route to nowhere:
    missing = [r for r in table.routes if r.template != "/api/audit/verify"]
    stray = Route(
        "GET", "/api/audit/nowhere", "audit", frozenset({"read:audit"}), "all", ("audit", "nowhere")
    )
    found = scope_mismatches(RouteTable([*missing, stray], table.upstreams), SERVICE_ROUTES)
    assert "audit GET /audit/verify: public, but routes.yaml does not route it" in found
    assert "GET /api/audit/nowhere → audit /audit/nowhere: the service serves no such route" in found
    # An internal route exposed by mistake is caught as a handler without a scope:
    internal = Route(
        "GET", "/api/internal/timesheets/pending", "timesheets", frozenset({"read:timesheets"}), "all", ()
    )
    found = scope_mismatches(RouteTable([*table.routes, internal], table.upstreams), SERVICE_ROUTES)
    assert found == [
        "GET /api/internal/timesheets/pending → timesheets /internal/timesheets/pending: "
        "the handler declares no scope (requires_scope)"
    ]
