"""Request bodies and query strings of the approvals API."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _no_control_chars(value: str | None) -> str | None:
    if value is not None and _CONTROL.search(value):
        raise ValueError("must not contain control characters (line breaks are fine)")
    return value or None


Comment = Annotated[str | None, Field(default=None, max_length=2000), AfterValidator(_no_control_chars)]


class DecisionIn(BaseModel):
    """``PUT /approvals/{id}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision: Literal["approved", "rejected"]
    comment: Comment = None


class QueueQuery(BaseModel):
    """``GET /approvals`` query string (the cursor is the timesheets service's, passed through)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, min_length=1, max_length=512)
