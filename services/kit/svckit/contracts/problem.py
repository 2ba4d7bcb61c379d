"""RFC 9457 problem details: the one error shape of every service and of the gateway.

:mod:`svckit.problems` builds the bodies; this model describes them for the OpenAPI documents and for
clients (and tests) that read them. Extensions beyond the members below are allowed: a 409 from the
approvals service carries the existing ``decision``, a 403 from a service the ``required_scope``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..problems import MAX_FIELD_ERRORS


class FieldError(BaseModel):
    """One invalid input, named so a client can show it next to the right field."""

    model_config = ConfigDict(extra="allow")

    field: str = Field(description="Dotted path of the field or parameter, e.g. entries.3.hours or limit.")
    loc: list[str | int] = Field(
        description="The same path as a list; query and header names start with 'query' or 'header'."
    )
    message: str = Field(description="What is wrong, for people.")
    type: str = Field(description="What is wrong, for programs (e.g. missing, range, invalid_cursor).")


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "The request has invalid fields.",
                    "request_id": "5f0c6d0e8b3f4a0f9d1e2c3b4a5f6e7d",
                    "errors": [
                        {
                            "field": "hours",
                            "loc": ["hours"],
                            "message": "must be in quarter hours (a multiple of 0.25)",
                            "type": "value_error",
                        }
                    ],
                }
            ]
        },
    )

    type: str = Field("about:blank", description="A URI naming the problem type; about:blank by default.")
    title: str = Field(description="The HTTP status phrase or a short summary.")
    status: int = Field(ge=100, le=599, description="The HTTP status code, repeated.")
    detail: str | None = Field(None, description="What happened, for people.")
    request_id: str | None = Field(None, description="The X-Request-Id of the request, for support.")
    errors: list[FieldError] | None = Field(
        None,
        description=f"Per-field errors (400 and 422): at most {MAX_FIELD_ERRORS}; errors_total says how "
        "many there were when there were more.",
        max_length=MAX_FIELD_ERRORS,
    )
    errors_total: int | None = Field(
        None,
        gt=MAX_FIELD_ERRORS,
        description=f"Only when errors was cut at {MAX_FIELD_ERRORS}: how many errors there were in all.",
    )


__all__ = ["FieldError", "Problem"]
