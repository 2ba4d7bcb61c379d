"""RFC 9457 problem details: the one error shape every service answers with.

Handlers for Starlette's HTTP errors, request-validation errors and unexpected exceptions live here,
so a 404, 405, 413, 415, 422 or 500 looks the same everywhere and never carries a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .context import request_id_var

PROBLEM_JSON = "application/problem+json"
#: the header of every "unavailable, come back shortly" 503 of the kit: a backing service away
#: (svckit.app), a service not ready (svckit.health). Small: a restart of Postgres or a pod becoming
#: ready takes seconds, and a client told when to look again does not poll in a tight loop.
RETRY_AFTER = {"Retry-After": "2"}

log = logging.getLogger("svckit.problems")


def problem_body(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    *,
    type_: str = "about:blank",
    **extensions: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    body.update(extensions)
    return body


def problem_response(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    type_: str = "about:blank",
    **extensions: Any,
) -> Response:
    body = problem_body(status, title, detail, type_=type_, **extensions)
    return Response(
        json.dumps(body, default=str).encode(),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


class Problem(Exception):
    """Raise anywhere in a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        type_: str = "about:blank",
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.type_ = type_
        self.extensions = extensions

    def response(self) -> Response:
        return problem_response(
            self.status,
            self.title,
            self.detail,
            headers=self.headers,
            type_=self.type_,
            **self.extensions,
        )


#: The most errors one validation problem lists (:func:`validation_problem`); when there were more,
#: ``errors_total`` says how many. Without a bound the answer grew with the input: an 869 KB body of
#: 80,000 unknown members was answered with 80,003 errors, 8.9 MB, in 1.5 s (a 2.3 MB upload with
#: 22.6 MB), an amplification anyone with a token could ask for. 50 is far more than a form or an
#: entry has fields to show (a person fixes a few at a time; a program that sends hundreds of bad rows
#: sends them for one reason, which the first 50 show), and keeps the answer within a few kilobytes
#: (~100 bytes an error, plus the names it echoes: at most twice the body they came in).
MAX_FIELD_ERRORS = 50


def field_errors(
    exc: ValidationError, prefix: Sequence[str | int] = (), limit: int = MAX_FIELD_ERRORS
) -> list[dict[str, Any]]:
    """The first ``limit`` of pydantic's errors as ``{"field": "entries.3.hours", "loc": [...],
    "message": ..., "type": ...}`` (``exc.error_count()`` says how many there are: pass it to
    :func:`validation_problem` as ``total``); the others are never converted."""
    errors = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        loc = [*prefix, *error["loc"]]
        errors.append(
            {
                "field": ".".join(str(part) for part in loc),
                "loc": loc,
                "message": error["msg"].removeprefix("Value error, "),
                "type": error["type"],
            }
        )
    return errors


def model_errors(
    model: type[BaseModel],
    document: object,
    exc: ValidationError,
    prefix: Sequence[str | int] = (),
    limit: int = MAX_FIELD_ERRORS,
) -> list[dict[str, Any]]:
    """``field_errors(exc, prefix, limit)`` for ``exc``, raised by ``model.model_validate(document)``,
    at a cost that does not grow with a flood of unknown members. pydantic converts every error to
    Python at once (``errors()``, ~6 us each: 80,000 took 0.5 s of a 1.2 s refusal) and cannot be
    asked for the first few; its errors are those of the model's fields in their order, then one per
    unknown member in the document's order. So when there are more than ``limit`` and ``document`` is
    an object the model forbids unknown members of, the document is validated again with only the
    first ``limit`` unknown members: the same first ``limit`` errors, for a fixed cost. Only on that
    branch (a refusal listing more than ``limit``); otherwise exactly :func:`field_errors`."""
    if (
        exc.error_count() <= limit
        or not isinstance(document, dict)
        or model.model_config.get("extra") != "forbid"
    ):
        return field_errors(exc, prefix, limit)
    names: set[object] = set()
    for name, field in model.model_fields.items():
        names.update((name, field.alias, field.validation_alias))
    kept: dict[object, object] = {}
    unknown = 0
    for name, value in document.items():
        if name in names:
            kept[name] = value
        elif unknown < limit:
            kept[name] = value
            unknown += 1
    try:
        model.model_validate(kept)
    except ValidationError as first:
        return field_errors(first, prefix, limit)
    return field_errors(exc, prefix, limit)  # not expected: without the rest it is valid


def validation_problem(
    errors: list[dict[str, Any]],
    detail: str = "The request has invalid fields.",
    *,
    total: int | None = None,
) -> Problem:
    """The 422 of every refused field (each service's, the kit's): at most :data:`MAX_FIELD_ERRORS`
    of ``errors``, and, when there were more, ``errors_total``: how many (``total``, when ``errors``
    holds only the first of them; else ``len(errors)``). With fewer, the answer is as it always was."""
    count = len(errors) if total is None else max(total, len(errors))
    if count <= MAX_FIELD_ERRORS:
        return Problem(422, "Unprocessable Content", detail, errors=errors)
    return Problem(422, "Unprocessable Content", detail, errors=errors[:MAX_FIELD_ERRORS], errors_total=count)


def _default_detail(request: Request, status: int) -> str:
    """What the router's own refusals mean (it raises them with the status phrase alone): every
    refusal says what was wrong (docs/CONTRACTS.md), these too."""
    if status == 404:
        return "No route matches this path."
    if status == 405:
        return f"{request.method} is not allowed here."  # as the gateway says it (Allow: which are)
    return f"{HTTPStatus(status).phrase}."


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    return problem_response(
        exc.status_code, None, detail or _default_detail(request, exc.status_code), headers=exc.headers
    )


async def problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return validation_problem(field_errors(exc), total=exc.error_count()).response()


def unexpected_problem(exc: BaseException) -> Response:
    """Log the failure with its traceback, answer without internals."""
    log.error("unhandled error", exc_info=exc)
    return problem_response(500, None, "An unexpected error occurred; it has been logged.")


async def unexpected_handler(request: Request, exc: Exception) -> Response:
    return unexpected_problem(exc)


async def client_gone_handler(request: Request, exc: Exception) -> Response:
    """``ClientDisconnect`` (Starlette's, from ``request.body()``, ``form()``, ``stream()``): the client
    closed the connection, or its body stopped arriving and the HTTP layer answered 408 itself, before
    the route could read the body. Not a failure of the service: no error line, no traceback. The
    answer is never sent (the server drops what follows a disconnect), and the front layer
    (:mod:`svckit.middleware`) counts the request as a client gone, not by this status."""
    return problem_response(400, None, "The client closed the connection before its request body arrived.")


EXCEPTION_HANDLERS = {
    ClientDisconnect: client_gone_handler,
    HTTPException: http_exception_handler,
    Problem: problem_handler,
    ValidationError: validation_handler,
    Exception: unexpected_handler,
}
