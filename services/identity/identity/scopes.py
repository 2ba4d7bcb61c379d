"""The scope catalogue: what each scope means in plain words and which roles allow it.

Granting follows Auth0's RBAC: the scopes in a user's token are the scopes requested, narrowed to
those the client may ask for, narrowed again to those the user's roles allow. OpenID Connect scopes
(``openid``, ``profile``, ``email``) concern the user's own identity and are not role-gated.
"""

from __future__ import annotations

from collections.abc import Iterable

OIDC_SCOPES: dict[str, str] = {
    "openid": "Confirm who you are",
    "profile": "See your name and user name",
    "email": "See your e-mail address",
    "offline_access": "Stay signed in while you are away",
}

API_SCOPES: dict[str, str] = {
    "read:timesheets": "Read your timesheet entries",
    "create:timesheets": "Create timesheet entries for you",
    "delete:timesheets": "Delete your timesheet entries that are not approved",
    "approve:timesheets": "Approve or reject other people's timesheet entries",
    "read:audit": "Read and verify the audit trail",
    "batch:upload": "Upload timesheet entries for named users (machine clients only)",
}

ALL_SCOPES: dict[str, str] = {**OIDC_SCOPES, **API_SCOPES}

_EMPLOYEE = ("read:timesheets", "create:timesheets", "delete:timesheets")

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "employee": frozenset(_EMPLOYEE),
    "manager": frozenset((*_EMPLOYEE, "approve:timesheets")),
    "auditor": frozenset(("read:audit", "read:timesheets")),
}

KNOWN_ROLES = frozenset(ROLE_SCOPES)


def split_scope(scope: str | None) -> list[str]:
    """Space-delimited scope string to an ordered list without duplicates (RFC 6749 §3.3)."""
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


def join_scope(scopes: Iterable[str]) -> str:
    return " ".join(scopes)


def role_scopes(roles: Iterable[str]) -> frozenset[str]:
    """Union of the API scopes allowed by every role the user has; unknown roles allow nothing."""
    allowed: set[str] = set()
    for role in roles:
        allowed |= ROLE_SCOPES.get(role, frozenset())
    return frozenset(allowed)


def grant_for_user(requested: Iterable[str], roles: Iterable[str]) -> list[str]:
    """Requested scopes the user may hold: OIDC scopes always, API scopes only through a role."""
    allowed = role_scopes(roles)
    return [s for s in requested if s in OIDC_SCOPES or s in allowed]


def api_scopes(scopes: Iterable[str]) -> list[str]:
    """The API permissions among ``scopes`` (what Auth0 puts into the ``permissions`` claim)."""
    return [s for s in scopes if s in API_SCOPES]


def describe(scopes: Iterable[str]) -> list[tuple[str, str]]:
    """(scope, plain-words description) pairs for the consent page."""
    return [(s, ALL_SCOPES.get(s, s)) for s in scopes]
