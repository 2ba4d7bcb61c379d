"""What a person sees when the provider's database is unavailable.

The kit answers every "database unavailable" error with a 503 problem document and ``Retry-After``
(:func:`svckit.app.unavailable_handler`): right for the token, revocation and userinfo endpoints,
which programs call. The sign-in, consent, logout and account pages are opened by a person in a
browser, who was shown that JSON document as raw text in the middle of signing in; they get the
provider's own page instead — same status, same ``Retry-After``, the pages' strict headers.

The same holds while the provider has no signing key it can use: in the moment after a start before
the keys load (the first start on a fresh database makes the first one), or with keys it cannot
decrypt (a wrong ``IDENTITY_KEY_ENCRYPTION_KEY``). ``/readyz`` names ``signing_keys`` then and keeps
traffic away, but a request that arrives anyway was a 500 (``NoSigningKey``, ``KeyEncryptionError``
out of the token endpoint); it is "not now" like a database outage: :func:`keys_not_loaded`.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from svckit.app import unavailable_handler
from svckit.problems import RETRY_AFTER, problem_response

from .pages import render

#: the routes a browser navigates to (the rest are called by programs)
PAGE_PATHS = frozenset(
    {
        "/authorize",
        "/authorize/decision",
        "/login",
        "/v2/logout",
        "/oidc/logout",
        "/account/consents",
        "/account/consents/revoke",
    }
)

log = logging.getLogger("identity.outage")


def unavailable_page() -> Response:
    response = render(
        "message.html",
        503,
        title="Temporarily unavailable",
        text="Signing in is not possible for a moment. Please try again shortly.",
    )
    response.headers.update(RETRY_AFTER)
    return response


async def unavailable(request: Request, exc: Exception) -> Response:
    """A 503 page for the browser pages, the kit's 503 problem for everything else."""
    if request.url.path not in PAGE_PATHS:
        return await unavailable_handler(request, exc)
    return unavailable_page()


async def keys_not_loaded(request: Request, exc: Exception) -> Response:
    """No signing key to sign with (yet): 503 with ``Retry-After``, a page for the browser pages.
    The reason goes to the log (its type and message: a kid at most, never key material); the
    answer says only that the provider is not ready."""
    log.warning(
        "a request needed a signing key before one could be used; answered 503",
        extra={"error": type(exc).__name__, "reason": str(exc), "path": request.url.path},
    )
    if request.url.path in PAGE_PATHS:
        return unavailable_page()
    return problem_response(
        503,
        "Service Unavailable",
        "The provider is starting and cannot sign tokens yet; retry shortly.",
        headers=RETRY_AFTER,
    )
