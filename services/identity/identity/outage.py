"""What a person sees when the provider's database is unavailable.

The kit answers every "database unavailable" error with a 503 problem document and ``Retry-After``
(:func:`svckit.app.unavailable_handler`): right for the token, revocation and userinfo endpoints,
which programs call. The sign-in, consent, logout and account pages are opened by a person in a
browser, who was shown that JSON document as raw text in the middle of signing in; they get the
provider's own page instead — same status, same ``Retry-After``, the pages' strict headers.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from svckit.app import unavailable_handler
from svckit.problems import RETRY_AFTER

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


async def unavailable(request: Request, exc: Exception) -> Response:
    """A 503 page for the browser pages, the kit's 503 problem for everything else."""
    if request.url.path not in PAGE_PATHS:
        return await unavailable_handler(request, exc)
    response = render(
        "message.html",
        503,
        title="Temporarily unavailable",
        text="Signing in is not possible for a moment. Please try again shortly.",
    )
    response.headers.update(RETRY_AFTER)
    return response
