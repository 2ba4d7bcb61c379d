"""Defence in depth behind the gateway: each route states the scope (or service principal) it needs.

The gateway already enforces scopes per route, but a service must not trust that alone: a request
that reaches it with a valid identity lacking the route's scope (a gateway misconfiguration, a new
route the gateway does not know yet, a peer service calling the wrong route) is refused with 403.
Handlers declare the requirement next to their definition with :func:`requires_scope` /
:func:`requires_service`; both record it on the endpoint (``endpoint.required_scope`` /
``endpoint.required_service``) so tests and OpenAPI checks can read it back.

Each such 403 is a denial on the audit trail: counted towards an aggregated ``access.denied`` record
naming the (verified) caller, reason ``insufficient_scope`` or ``service_only``, when the app records
denials (``app.state.denials``, a :class:`svckit.denials.DenialRecorder`; a dict update here).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .denials import INSUFFICIENT_SCOPE, SERVICE_ONLY
from .identity import Identity
from .problems import Problem

Endpoint = Callable[[Request], Awaitable[Response]]


def identity_of(request: Request) -> Identity:
    """The verified caller (set by the identity middleware); 401 if a route was left open by mistake."""
    # straight from the scope: ``request.state`` builds a State object on every access
    identity = request.scope.get("state", {}).get("identity")
    if not isinstance(identity, Identity):
        raise Problem(401, "Unauthorized", "The request carries no gateway-signed identity.")
    return identity


def _deny(request: Request, reason: str, identity: Identity) -> None:
    """Count a 403 towards the trail, when the app records denials."""
    denials = getattr(getattr(request.scope.get("app"), "state", None), "denials", None)
    if denials is not None:
        denials.deny(request.scope, 403, reason, identity)


def require_scope(request: Request, scope: str) -> Identity:
    """The caller, if their identity holds ``scope``; otherwise a 403 problem naming the scope."""
    identity = identity_of(request)
    if not identity.has(scope):
        _deny(request, INSUFFICIENT_SCOPE, identity)
        raise Problem(
            403,
            "Forbidden",
            f"This operation needs the scope {scope!r}.",
            required_scope=scope,
        )
    return identity


def require_service(request: Request, allowed: frozenset[str] = frozenset()) -> Identity:
    """The caller, if it is a platform service principal (one of ``allowed`` when given); else 403."""
    identity = identity_of(request)
    if identity.kind != "service" or (allowed and identity.subject not in allowed):
        _deny(request, SERVICE_ONLY, identity)
        raise Problem(403, "Forbidden", "This internal route only answers platform services.")
    return identity


def requires_scope(scope: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint so it refuses (403) callers without ``scope`` before it runs."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            require_scope(request, scope)
            return await endpoint(request)

        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded

    return decorate


def requires_service(*allowed: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate an internal endpoint so only service principals (optionally: these ones) reach it."""
    names = frozenset(allowed)

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            require_service(request, names)
            return await endpoint(request)

        guarded.required_service = names or True  # type: ignore[attr-defined]
        return guarded

    return decorate


__all__ = [
    "identity_of",
    "require_scope",
    "require_service",
    "requires_scope",
    "requires_service",
]
