"""Reading JSON request bodies into pydantic models with precise, field-naming errors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .problems import Problem, field_errors, validation_problem

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request) -> Any:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(
            415,
            "Unsupported Media Type",
            "Send the body as application/json.",
            headers={"Accept": "application/json"},
        )
    raw = await request.body()
    if not raw:
        raise Problem(400, "Bad Request", "The request body is empty; a JSON document is expected.")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, "Bad Request", f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        # Thousands of nested brackets exhaust the parser's recursion limit: refuse, do not crash.
        raise Problem(400, "Bad Request", "The body nests too deeply to be parsed.") from None


async def parse_body(request: Request, model: type[M]) -> M:
    document = await read_json(request)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise validation_problem(field_errors(exc)) from None
