"""Query parameters validated like bodies: a pydantic model, errors naming the parameter.

``?limit=abc`` or ``?from=yesterday`` answer 422 problem+json with ``errors[].field`` set to the
parameter name (``"limit"``), the same shape :func:`svckit.body.parse_body` produces for bodies. A
parameter given twice is refused too: silently taking the first or the last hides client bugs.
Models should set ``extra="forbid"`` so a misspelt parameter (``?stauts=``) is an error, not a no-op.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .problems import field_errors, validation_problem

M = TypeVar("M", bound=BaseModel)


def parse_query(request: Request, model: type[M]) -> M:
    """Validate the request's query string against ``model`` (field aliases are parameter names)."""
    values: dict[str, str] = {}
    repeated: list[dict[str, object]] = []
    for name, value in request.query_params.multi_items():
        if name in values:
            repeated.append(
                {
                    "field": name,
                    "loc": ["query", name],
                    "message": "the parameter is given more than once",
                    "type": "repeated_parameter",
                }
            )
            continue
        values[name] = value
    if repeated:
        raise validation_problem(repeated, "The query string has invalid parameters.")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = field_errors(exc)
        for error in errors:
            error["loc"] = ["query", *error["loc"]]
        raise validation_problem(errors, "The query string has invalid parameters.") from None


__all__ = ["parse_query"]
