"""Reading request bodies: every identity route that reads one reads it through here.

A body in a content coding (``Content-Encoding`` other than ``identity``) is refused before it is read,
with the kit's 415 and ``Accept-Encoding: identity`` (:func:`svckit.body.refuse_coded`, as in every
service): the provider decodes no coding, and reading the bytes as if the label were absent would read
another body than the client sent. The pages' form posts answer the kit's problem document; the OAuth
endpoints answer the same refusal in their own error shape (:func:`coded_refusal`).

A form is read only as ``application/x-www-form-urlencoded``, the one media type OAuth 2.0, OIDC and the
provider's own pages send (:func:`read_form`), and in the charset its Content-Type names: UTF-8 without
one (RFC 6749 Appendix B; browsers send none), else one of :data:`FORM_CHARSETS`, which HTTP libraries
label forms with (Apache HttpClient's ``UrlEncodedFormEntity`` sends ``charset=ISO-8859-1`` by default).
Any other charset is refused (415), never read as UTF-8: a Latin-1 form's "é" (%E9) and "è" (%E8) both
read as U+FFFD, and an ASCII body labelled UTF-16 is not the form its label describes.

Starlette's ``request.form()`` would also parse ``multipart/form-data``, whose parser (python_multipart)
logs a WARNING for every malformed body: anyone could fill the provider's log at will, and the provider
has no use for a multipart part.
"""

from __future__ import annotations

import codecs
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from svckit.body import content_charset, refuse_coded
from svckit.problems import Problem

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
#: The charsets a form is read in (Python's codec names): UTF-8, and the ASCII-compatible ones HTTP
#: libraries label forms with. Not UTF-16 and the like: a urlencoded body is ASCII text.
FORM_CHARSETS = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252"})
#: Starlette's limit on a form's fields (its ``request.form()`` default), kept by the charset path
MAX_FORM_FIELDS = 1000


def _codec(label: str) -> str | None:
    """The codec a charset label names, if it is one a form is read in (:data:`FORM_CHARSETS`)."""
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return name if name in FORM_CHARSETS else None


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
    label = content_charset(request)
    codec = "utf-8" if label is None else _codec(label)
    if codec is None:
        raise Problem(
            415,
            "Unsupported Media Type",
            f"A form is read in UTF-8 (or ASCII, ISO-8859-1, windows-1252), not in charset {label}: "
            "send it in UTF-8 (charset=utf-8 or none).",
            headers={"Accept": FORM_MEDIA_TYPE},
        )
    if codec == "utf-8":
        return await request.form()
    try:
        pairs: list[tuple[str, str | UploadFile]] = list(
            parse_qsl(
                (await request.body()).decode("ascii"),
                keep_blank_values=True,
                encoding=codec,
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        )
    except ValueError:  # raw bytes outside ASCII, a %-escape outside the charset, too many fields
        raise Problem(
            400,
            "Bad Request",
            f"The body is not a form in charset {label} of at most {MAX_FORM_FIELDS} fields.",
        ) from None
    return FormData(pairs)


async def read_body(request: Request) -> bytes:
    """The request's body as sent; a 415 problem (raised) when it is in a content coding."""
    refuse_coded(request)
    return await request.body()
