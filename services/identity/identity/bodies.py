"""Reading request bodies: every identity route that reads one reads it through here.

A body in a content coding (``Content-Encoding`` other than ``identity``) is refused before it is read,
with the kit's 415 and ``Accept-Encoding: identity`` (:func:`svckit.body.refuse_coded`, as in every
service): the provider decodes no coding, and reading the bytes as if the label were absent would read
another body than the client sent. The pages' form posts answer the kit's problem document; the OAuth
endpoints answer the same refusal in their own error shape (:func:`coded_refusal`).
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from svckit.body import refuse_coded
from svckit.problems import Problem


def coded_refusal(request: Request) -> Problem | None:
    """The kit's 415 for a body in a content coding, to answer in the route's own shape; else None."""
    try:
        refuse_coded(request)
    except Problem as problem:
        return problem
    return None


async def read_form(request: Request) -> FormData:
    """The request's form; a 415 problem (raised) when the body is in a content coding."""
    refuse_coded(request)
    return await request.form()


async def read_body(request: Request) -> bytes:
    """The request's body as sent; a 415 problem (raised) when it is in a content coding."""
    refuse_coded(request)
    return await request.body()
