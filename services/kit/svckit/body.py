"""Reading JSON request bodies into pydantic models with precise, field-naming errors.

What a body must be (the platform's decision, documented in docs/CONTRACTS.md "Accepted input"): an
I-JSON document (RFC 7493), so that every service reads exactly what the client meant and no input
can reach a code path that fails with a 500:

* UTF-8 (RFC 8259 §8.1), without a byte order mark; ``charset`` other than UTF-8 is a 415;
* as sent: a ``Content-Encoding`` other than ``identity`` (gzip, br, …) is a 415 with
  ``Accept-Encoding: identity`` (RFC 9110 §15.5.16, RFC 7694): no coding is decoded, and a body read
  as if the label were absent would be something else than was sent;
* no duplicate member names: ``{"hours": 1, "hours": 8}`` is ambiguous (parsers keep the first, the
  last, or fail), so it is refused rather than silently read one way;
* numbers a JavaScript client can hold: integers within ±(2^53-1), finite floats (``1e999`` would
  parse as infinity), and no ``NaN`` / ``Infinity`` literals (not JSON, though Python accepts them);
  this also keeps Python's 4,300-digit integer-conversion limit (a ``ValueError``) out of reach;
* strings without lone surrogates (``"\\ud800"`` decodes to a str that cannot be encoded for the
  database or the response);
* at most :data:`MAX_DEPTH` levels of nesting.

A body that is not UTF-8 JSON at all (or nests too deeply) is a 400 whose ``detail`` says why; a value
that breaks a rule is a 422 naming it in ``errors[].field`` (``"hours"``, ``"entries.3.hours"``), like
a document that parses but does not fit the model.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request

from .problems import MAX_FIELD_ERRORS, Problem, model_errors, validation_problem

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32
MAX_ERRORS = MAX_FIELD_ERRORS  # the values the walk names (svckit.problems: why so many)
MAX_SAFE_INTEGER = 2**53 - 1
_MAX_INTEGER_DIGITS = len(str(MAX_SAFE_INTEGER))
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotAccepted(ValueError):
    """Raised by :func:`parse_json` for any document the rules refuse."""


class Refused(NotAccepted):
    """The body is not a JSON document this platform reads (400); the message is the detail."""


class InvalidValues(NotAccepted):
    """The body is JSON but some values break the rules (422); ``errors`` name where, like pydantic's."""

    def __init__(self, errors: list[dict[str, Any]], total: int | None = None) -> None:
        self.total = len(errors) if total is None else total
        super().__init__(f"{self.total} invalid values")
        self.errors = errors


class _Flagged:
    """Stands in for a value the rules refuse, so that the walk can name where it was."""

    __slots__ = ("message", "type")

    def __init__(self, message: str, type_: str) -> None:
        self.message = message
        self.type = type_


_DUPLICATE = _Flagged("the member name appears more than once in the object", "duplicate_member")
_LONE_SURROGATE = _Flagged("must not contain lone UTF-16 surrogates (\\ud800-\\udfff)", "lone_surrogate")


def _integer(text: str) -> int | _Flagged:
    if len(text.lstrip("-")) > _MAX_INTEGER_DIGITS or abs(value := int(text)) > MAX_SAFE_INTEGER:
        return _Flagged("must be an integer within ±(2^53-1)", "integer_out_of_range")
    return value


def _float(text: str) -> float | _Flagged:
    value = float(text)
    if not math.isfinite(value):
        return _Flagged("must be a finite number (this one overflows)", "number_out_of_range")
    return value


def _constant(name: str) -> _Flagged:
    return _Flagged(f"{name} is not a JSON value", "not_a_json_value")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        _mark_duplicates(document, pairs)
    return document


def _mark_duplicates(document: dict[str, Any], pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            document[name] = _DUPLICATE
        seen.add(name)


#: A lone surrogate reaches a document only as an escape (UTF-8 text cannot carry one): \uD800-\uDFFF.
#: Matching an escaped backslash followed by such letters is harmless: the full walk then runs.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_deep(document: Any) -> bool:
    """Whether a container sits :data:`MAX_DEPTH` levels down: the walk visits containers only."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            return True
        members = value.values() if isinstance(value, dict) else value
        stack.extend((member, depth + 1) for member in members if isinstance(member, dict | list))
    return False


def _error(path: list[str | int], flagged: _Flagged) -> dict[str, Any]:
    return {
        "field": ".".join(str(part) for part in path) or "(body)",
        "loc": path,
        "message": flagged.message,
        "type": flagged.type,
    }


def _check_tree(document: Any) -> None:
    """Depth, flagged values and lone surrogates, in one walk without recursion."""
    errors: list[dict[str, Any]] = []
    total = 0  # all of them are counted (the problem's errors_total), the first MAX_ERRORS named
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                total += 1
                if total <= MAX_ERRORS:
                    errors.append(_error(path, _LONE_SURROGATE))
        elif isinstance(value, _Flagged):
            total += 1
            if total <= MAX_ERRORS:
                errors.append(_error(path, value))
        elif isinstance(value, dict | list):
            if len(path) >= MAX_DEPTH:
                raise Refused(f"The body nests deeper than {MAX_DEPTH} levels.")
            if isinstance(value, dict):
                for name, member in value.items():
                    if _SURROGATE.search(name):
                        total += 1
                        if total <= MAX_ERRORS:
                            printable = name.encode("utf-8", "replace").decode()
                            errors.append(_error([*path, printable], _LONE_SURROGATE))
                    else:
                        stack.append((member, [*path, name]))
            else:
                stack.extend((item, [*path, index]) for index, item in enumerate(value))
    if errors:
        errors.sort(key=lambda error: [str(part) for part in error["loc"]])
        raise InvalidValues(errors, total)


def parse_json(raw: bytes) -> Any:
    """The document in ``raw`` under the rules above: :class:`Refused` when it is not a UTF-8 JSON
    document at all (or nests too deeply), :class:`InvalidValues` naming each refused value."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"The body is not UTF-8 (invalid byte at offset {exc.start}).") from None
    if text.startswith("\ufeff"):
        raise Refused("The body starts with a byte order mark; send UTF-8 without one.")
    flagged = False  # a value the rules refuse was met (the hooks see every object and number)

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal flagged
        document = dict(pairs)
        if len(document) != len(pairs):
            flagged = True
            _mark_duplicates(document, pairs)
        return document

    def integer(literal: str) -> int | _Flagged:
        nonlocal flagged
        value = _integer(literal)
        flagged = flagged or isinstance(value, _Flagged)
        return value

    def number(literal: str) -> float | _Flagged:
        nonlocal flagged
        value = _float(literal)
        flagged = flagged or isinstance(value, _Flagged)
        return value

    def constant(name: str) -> _Flagged:
        nonlocal flagged
        flagged = True
        return _constant(name)

    try:
        document = json.loads(
            text,
            object_pairs_hook=members,
            parse_int=integer,
            parse_float=number,
            parse_constant=constant,
        )
    except json.JSONDecodeError as exc:
        raise Refused(f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        # Thousands of nested brackets exhaust the parser's recursion limit: refuse, do not crash.
        raise Refused(f"The body nests deeper than {MAX_DEPTH} levels.") from None
    if flagged or ("\\u" in text and _SURROGATE_ESCAPE.search(text) is not None):
        _check_tree(document)  # something may be refused: the walk that names each value
    elif (
        isinstance(document, dict | list)
        and text.count("{") + text.count("[") > MAX_DEPTH  # fewer brackets cannot nest deeper
        and _too_deep(document)
    ):  # nothing to name, only the depth to check
        raise Refused(f"The body nests deeper than {MAX_DEPTH} levels.")
    return document


def _media_type(request: Request) -> tuple[str, str | None]:
    content_type = request.headers.get("content-type", "")
    media_type, _, parameters = content_type.partition(";")
    charset = None
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media_type.strip().lower(), charset


def content_charset(request: Request) -> str | None:
    """The ``charset`` parameter of the request's Content-Type, lower case and unquoted; None without
    one."""
    return _media_type(request)[1]


def coded(headers: Headers) -> str | None:
    """The first content coding other than ``identity`` that ``Content-Encoding`` names, if any."""
    for value in headers.getlist("content-encoding"):
        for coding in value.split(","):
            coding = coding.strip().lower()
            if coding and coding != "identity":
                return coding
    return None


def refuse_coded(request: Request) -> None:
    """A 415 for a body in a content coding (:func:`coded`): read as identity it is another body."""
    if coded(request.headers) is not None:
        raise Problem(
            415,
            "Unsupported Media Type",
            "The body is in a content coding (Content-Encoding); send it without one (identity).",
            headers={"Accept-Encoding": "identity"},
        )


async def read_json(request: Request) -> Any:
    refuse_coded(request)
    media_type, charset = _media_type(request)
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(
            415,
            "Unsupported Media Type",
            "Send the body as application/json.",
            headers={"Accept": "application/json"},
        )
    if charset is not None and charset not in ("utf-8", "utf8"):
        raise Problem(
            415,
            "Unsupported Media Type",
            "JSON bodies are UTF-8 (RFC 8259); send charset=utf-8 or no charset.",
            headers={"Accept": "application/json"},
        )
    raw = await request.body()
    if not raw:
        raise Problem(400, "Bad Request", "The request body is empty; a JSON document is expected.")
    try:
        return parse_json(raw)
    except Refused as exc:
        raise Problem(400, "Bad Request", str(exc)) from None
    except InvalidValues as exc:
        raise validation_problem(exc.errors, total=exc.total) from None


async def parse_body(request: Request, model: type[M]) -> M:
    document = await read_json(request)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_problem(model_errors(model, document, exc), total=exc.error_count()) from None
