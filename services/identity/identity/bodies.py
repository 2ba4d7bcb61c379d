"""Reading request bodies: every identity route that reads one reads it through here.

A body in a content coding (``Content-Encoding`` other than ``identity``) is refused before it is read,
with the kit's 415 and ``Accept-Encoding: identity`` (:func:`svckit.body.refuse_coded`, as in every
service): the provider decodes no coding, and reading the bytes as if the label were absent would read
another body than the client sent. The pages' form posts answer the kit's problem document; the OAuth
endpoints answer the same refusal in their own error shape (:func:`coded_refusal`).

A form is read only as ``application/x-www-form-urlencoded``, the one media type OAuth 2.0, OIDC and the
provider's own pages send (:func:`read_form`). Starlette's ``request.form()`` would also parse
``multipart/form-data``, whose parser (python_multipart) logs a WARNING for every malformed body: anyone
could fill the provider's log at will, and the provider has no use for a multipart part.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from svckit.body import refuse_coded
from svckit.problems import Problem

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


def coded_refusal(request: Request) -> Problem | None:
    """The kit's 415 for a body in a content coding, to answer in the route's own shape; else None."""
    try:
        refuse_coded(request)
    except Problem as problem:
        return problem
    return None


def media_type(request: Request) -> str:
    """The request's media type, lower case, without its parameters (``""`` without a Content-Type)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _bodiless(request: Request) -> bool:
    """True for a request that sends no body bytes at all (whatever its Content-Type says)."""
    headers = request.headers
    return "transfer-encoding" not in headers and headers.get("content-length", "0").strip() == "0"


async def read_form(request: Request) -> FormData:
    """The request's form. Raised as the kit's 415 problem: a body in a content coding, or any body
    but ``application/x-www-form-urlencoded`` (never parsed). A request without a body (none, or of
    length 0) is an empty form: there is nothing to parse, and an RP-initiated logout POST may carry
    no parameter."""
    refuse_coded(request)
    if _bodiless(request):
        return FormData()
    if media_type(request) != FORM_MEDIA_TYPE:
        raise Problem(
            415,
            "Unsupported Media Type",
            f"Send the form as {FORM_MEDIA_TYPE}.",
            headers={"Accept": FORM_MEDIA_TYPE},
        )
    return await request.form()


async def read_body(request: Request) -> bytes:
    """The request's body as sent; a 415 problem (raised) when it is in a content coding."""
    refuse_coded(request)
    return await request.body()
