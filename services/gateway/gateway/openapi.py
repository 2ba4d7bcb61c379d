"""The client-facing OpenAPI document, served by the gateway at ``GET /api/openapi.json`` (public).

Generated, never written by hand: the operations ``routes.yaml`` exposes (paths under ``/api``,
scopes from the route table, the only place the gateway enforces them), described by the contracts
the services validate with (:mod:`svckit.contracts.operations`), plus what the gateway itself
answers (401/403 with ``WWW-Authenticate``, 429, 413, 502-504). Security is an OAuth 2.0 access
token, as a bearer token (RFC 6750) or sender-constrained with DPoP (RFC 9449). The services'
internal signed-identity headers are deliberately absent: clients never send them, the gateway
strips them.

``python -m gateway.openapi [routes.yaml]`` prints the document (the SPA's TypeScript types are
generated from it: ``npm run gen:api --prefix spa``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from svckit.contracts.operations import SERVICES, Answer, Operation, find, problem_answer
from svckit.openapi import Placement, build

from .routes import API_PREFIX, Route, RouteTable, load_routes

TITLE = "Timesheets API"
VERSION = "1.0.0"
DESCRIPTION = """\
ABC Inc.'s timesheets: entries people record, approvals managers give, and the tamper-evident audit \
trail auditors read. Every operation needs an OAuth 2.0 access token for this API (audience \
OIDC_AUDIENCE) from the deployment's authorization server, carrying the scopes the operation lists \
(in `scope`, or Auth0-style in `permissions`).

Errors are RFC 9457 problem documents (`application/problem+json`); invalid input names each bad \
field in `errors[]`. Every answer carries `X-Request-Id`."""

WWW_AUTHENTICATE = {
    "description": "An RFC 6750 challenge: error invalid_token or insufficient_scope (with scope).",
    "schema": {"type": "string"},
}
RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "Authorization: Bearer <access token> (RFC 6750): a JWT access token (RFC 9068) issued for "
            "this API by the deployment's authorization server. The scopes listed per operation must "
            "be granted."
        ),
    },
    "dpop": {
        "type": "http",
        "scheme": "dpop",
        "description": (
            "Authorization: DPoP <access token> (RFC 9449): a sender-constrained access token, sent "
            "with a fresh proof in the DPoP header (see dpopProof). The scopes listed per operation "
            "must be granted."
        ),
    },
    "dpopProof": {
        "type": "apiKey",
        "in": "header",
        "name": "DPoP",
        "description": (
            "The DPoP proof (RFC 9449 section 4): a JWT signed with the key the access token is bound "
            "to, naming this request's method (htm) and URL (htu), fresh (iat, jti), with ath, the "
            "hash of the access token."
        ),
    },
}

GATEWAY_ANSWERS = (
    problem_answer(
        400,
        "Bad Request",
        "Malformed: the request target (encoded separators, dot segments, characters beyond printable "
        "ASCII), a header, or the JSON body.",
        "The path contains encoded separators or dot segments.",
    ),
    Answer(
        401,
        "No access token, or one that does not verify (expired, wrong audience or issuer, bad "
        "signature, revoked).",
        problem={
            "type": "about:blank",
            "title": "Unauthorized",
            "status": 401,
            "detail": "This API needs a bearer access token.",
            "reason": "missing_token",
        },
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    ),
    Answer(
        403,
        "The token lacks a scope the operation needs.",
        problem={
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": "This route needs the scope read:timesheets.",
            "reason": "insufficient_scope",
            "required_scope": "read:timesheets",
        },
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    ),
    Answer(
        429,
        "Too many requests for this subject or client, or too many of the subject's to one service in"
        " progress at once;"
        " retry after Retry-After seconds.",
        problem={
            "type": "about:blank",
            "title": "Too Many Requests",
            "status": 429,
            "detail": "Too many requests for this subject; retry in 12 s.",
            "reason": "rate_limit_subject",
        },
        headers={"Retry-After": RETRY_AFTER},
    ),
    problem_answer(
        502,
        "Bad Gateway",
        "The service behind the gateway failed; retry after Retry-After seconds. For a write, outcome "
        "says whether it can have taken effect: unknown (repeat it with the same Idempotency-Key, or "
        "look the resource up) or not_stored.",
        "The service is unreachable.",
    ),
    Answer(
        503,
        "A service, its database or the token issuer is unavailable; retry after Retry-After seconds. "
        "For a write, outcome not_stored says nothing was changed, unknown that it may have been.",
        problem={
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "A backing service is unreachable; retry shortly.",
        },
        headers={"Retry-After": RETRY_AFTER},
    ),
    problem_answer(
        504,
        "Gateway Timeout",
        "The service did not answer in time; for a write, outcome unknown: it may have taken effect.",
        "The service timed out.",
    ),
)

TAGS = (
    {
        "name": "timesheets",
        "description": "Entries: a user's own hours, and batch upload by machine clients.",
    },
    {"name": "approvals", "description": "Managers decide other people's submitted entries."},
    {"name": "audit", "description": "The append-only, hash-chained audit trail."},
)


def _security(route: Route) -> list[dict[str, list[str]]]:
    """Either scheme (DPoP only on a ``dpop: required`` route), with the route's scopes (each alone
    when any of them will do)."""
    scopes = sorted(route.scopes)
    groups = [[scope] for scope in scopes] if route.require == "any" and len(scopes) > 1 else [scopes]
    requirements: list[dict[str, list[str]]] = []
    for group in groups:
        if not route.dpop_required:
            requirements.append({"bearer": group})
        requirements.append({"dpop": group, "dpopProof": []})
    return requirements


def _uncatalogued(route: Route, path: str) -> Operation:
    """A route the table forwards that the contracts do not describe (a deployment's own addition)."""
    name = "".join(part.capitalize() for part in path.replace("{", "").replace("}", "").split("/") if part)
    return Operation(
        f"{route.method.lower()}{name}",
        route.upstream,
        route.method,
        path,
        f"Forwarded to the {route.upstream} service",
        (Answer(200, "The service's answer."),),
    )


def placements(table: RouteTable) -> list[Placement]:
    """One per declared route (the implicit HEAD of each GET is not listed), in table order."""
    found = []
    for route in table.routes:
        path = route.template[len(API_PREFIX) :]
        operation = find(route.upstream, route.method, path) or _uncatalogued(route, path)
        scopes = " ".join(sorted(route.scopes))
        found.append(
            Placement(
                operation,
                route.template,
                _security(route),
                GATEWAY_ANSWERS,
                {"x-required-scopes": scopes} if scopes else {},
            )
        )
    return found


def document(table: RouteTable) -> dict[str, Any]:
    return build(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        placements=placements(table),
        security_schemes=SECURITY_SCHEMES,
        servers=[{"url": "/", "description": "this gateway"}],
        tags=TAGS,
    )


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path(__file__).parent / "routes.yaml"
    table = load_routes(path, frozenset(SERVICES))
    sys.stdout.write(json.dumps(document(table), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
