"""Query parameters validated like bodies: a pydantic model, errors naming the parameter.

``?limit=abc`` or ``?from=yesterday`` answer 422 problem+json with ``errors[].field`` set to the
parameter name (``"limit"``), the same shape :func:`svckit.body.parse_body` produces for bodies. A
parameter given twice is refused too: silently taking the first or the last hides client bugs.
Models should set ``extra="forbid"`` so a misspelt parameter (``?stauts=``) is an error, not a no-op.
An integer parameter is written in decimal digits (``-`` before them at most): pydantic's lax reading
of a string would take ``1_0``, `` 10``, ``+10`` and ``10.0`` as 10, spellings no client means and that
the published document's ``integer`` does not offer; they answer 422 like ``abc``.

A query string that is not well-formed is a 400 before any of that: a ``%`` not followed by two hex
digits (``%zz``), or escapes that decode to bytes that are not UTF-8 (``%FF``, or ``%ED%A0%80``, a
surrogate). Starlette would pass ``%zz`` through literally and replace bad bytes with U+FFFD, so the
handler would search for something the client never sent.

An operation that takes no query parameters (``GET``/``DELETE /timesheets/{id}``, ``PUT
/approvals/{id}``, ``POST /timesheets``…) refuses any it is given the same way, 422 naming each
(:class:`NoQuery`, installed by :func:`svckit.app.create_service_app` from the service's OpenAPI
document), before the handler runs: ``DELETE /timesheets/{id}?dry_run=true`` deleted the entry, and
``PUT /approvals/{id}?decision=rejected`` beside a body that approves was approved.

The same query strings come back all the time (``limit=20``, an approver's queue): a model that is
``frozen`` is made once per raw query string and handed out again (:data:`MAX_CACHED`; what is
refused is refused each time, never kept). Its validation depends on nothing but the string.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, Union, get_args, get_origin
from urllib.parse import parse_qsl, unquote_to_bytes

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import Problem, model_errors, validation_problem

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DECIMAL = re.compile(r"-?[0-9]+")

M = TypeVar("M", bound=BaseModel)

#: query strings kept with their (frozen) model; the dict is emptied when it is full
MAX_CACHED = 4096
_parsed: dict[tuple[type[BaseModel], bytes], BaseModel] = {}
_integer_names: dict[type[BaseModel], frozenset[str]] = {}


def integer_parameters(model: type[BaseModel]) -> frozenset[str]:
    """The parameter names (aliases and field names) of ``model``'s integer fields (``int``, or
    ``int | None``), found once per model."""
    known = _integer_names.get(model)
    if known is None:
        names: set[str] = set()
        for name, field in model.model_fields.items():
            annotation = field.annotation
            optional = get_origin(annotation) in (Union, types.UnionType)
            if annotation is int or (optional and set(get_args(annotation)) == {int, type(None)}):
                names.update((name, field.alias or name))
        known = _integer_names[model] = frozenset(names)
    return known


def check_query_string(raw: bytes) -> None:
    """400 unless every percent-escape is well-formed and every name and value decodes as UTF-8."""
    if _BAD_ESCAPE.search(raw):
        raise Problem(
            400, "Bad Request", "The query string has a malformed percent-escape (% + two hex digits)."
        )
    for pair in raw.split(b"&"):
        try:
            unquote_to_bytes(pair.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(400, "Bad Request", "The query string does not decode as UTF-8.") from None


def parse_query(request: Request, model: type[M]) -> M:
    """Validate the request's query string against ``model`` (field aliases are parameter names)."""
    raw: bytes = request.scope.get("query_string", b"")
    known = _parsed.get((model, raw))
    if known is not None:
        return known  # type: ignore[return-value]
    parsed = _parse_query(request, raw, model)
    if model.model_config.get("frozen"):
        if len(_parsed) >= MAX_CACHED:
            _parsed.clear()
        _parsed[(model, raw)] = parsed
    return parsed


def _parse_query(request: Request, raw: bytes, model: type[M]) -> M:
    check_query_string(raw)
    values: dict[str, str] = {}
    refused: list[dict[str, object]] = []
    integers = integer_parameters(model)
    for name, value in request.query_params.multi_items():
        if name in values:
            refused.append(
                {
                    "field": name,
                    "loc": ["query", name],
                    "message": "the parameter is given more than once",
                    "type": "repeated_parameter",
                }
            )
            continue
        if name in integers and _DECIMAL.fullmatch(value) is None:
            refused.append(
                {
                    "field": name,
                    "loc": ["query", name],
                    "message": "must be an integer written in decimal digits",
                    "type": "int_parsing",
                }
            )
        values[name] = value
    if refused:
        raise validation_problem(refused, "The query string has invalid parameters.")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = model_errors(model, values, exc)
        for error in errors:
            error["loc"] = ["query", *error["loc"]]
        raise validation_problem(
            errors, "The query string has invalid parameters.", total=exc.error_count()
        ) from None


def refuse_any_query(raw: bytes) -> None:
    """A 400 for a query string that is not well-formed, else a 422 naming each parameter in it;
    nothing when it names none (``?`` or ``?&&``, as the listings take them)."""
    check_query_string(raw)
    names = dict.fromkeys(name for name, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
    if names:
        raise validation_problem(
            [
                {
                    "field": name,
                    "loc": ["query", name],
                    "message": "this operation takes no query parameters",
                    "type": "extra_forbidden",
                }
                for name in names
            ],
            "The query string has invalid parameters.",
        )


class NoQuery:
    """A route's ASGI app that refuses a query string for ``methods`` (those whose operation
    documents no query parameter) before the app sees the request."""

    def __init__(self, app: ASGIApp, methods: frozenset[str]) -> None:
        self.app = app
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: bytes = scope.get("query_string", b"")
        if raw and scope["method"] in self.methods:
            refuse_any_query(raw)
        await self.app(scope, receive, send)


def refuse_undocumented_queries(routes: Iterable[BaseRoute], document: Mapping[str, Any]) -> None:
    """Wrap each route's app in :class:`NoQuery` for the methods whose operation in ``document`` (the
    service's OpenAPI document) has no query parameter. Routes the document does not describe are
    left as they are. Done again on the same routes (an app built twice), the wrapper is replaced."""
    paths: Mapping[str, Any] = document.get("paths", {})
    for route in routes:
        if not isinstance(route, Route) or not route.methods or route.path not in paths:
            continue
        operations = paths[route.path]
        methods = set()
        for method in route.methods:
            operation = operations.get("get" if method == "HEAD" else method.lower())
            if operation is not None and not any(
                parameter.get("in") == "query" for parameter in operation.get("parameters", ())
            ):
                methods.add(method)
        inner = route.app.app if isinstance(route.app, NoQuery) else route.app
        route.app = NoQuery(inner, frozenset(methods)) if methods else inner


__all__ = ["NoQuery", "parse_query", "refuse_any_query", "refuse_undocumented_queries"]
