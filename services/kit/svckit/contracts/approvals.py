"""The approvals contracts: an approver's decision as sent and as returned, and the queue query."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .fields import CursorText, OptionalText, Timestamp
from .identity import Person
from .timesheets import DEFAULT_PAGE, EXAMPLE_ENTRY, EXAMPLE_ID, MAX_CURSOR, MAX_PAGE, Entry, Verdict

DecisionState = Literal["pending", "applied", "void"]
Comment = Annotated[str | None, OptionalText(2000, "Why, for the entry's owner.")]


class DecisionIn(BaseModel):
    """``PUT /approvals/{id}``: approve or reject someone else's submitted entry."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {"decision": "approved"},
                {"decision": "rejected", "comment": "Please split the hours by project."},
            ]
        },
    )

    decision: Verdict
    comment: Comment = None


class QueueQuery(BaseModel):
    """``GET /approvals`` query string (the cursor is the timesheets service's, passed through)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="Page size.")
    cursor: Annotated[str, CursorText(MAX_CURSOR)] | None = None


EXAMPLE_DECISION: dict[str, Any] = {
    "id": "7d1e5b0a-2c4f-4e8a-9b6d-3f2a1c0e9d8b",
    "entry_id": EXAMPLE_ID,
    "decision": "approved",
    "comment": None,
    "by": {"issuer": "https://login.abc.example/", "subject": "local|bob", "name": "Bob Example"},
    "at": "2026-11-24T09:12:40.118220Z",
    "state": "applied",
    "entry": {
        **EXAMPLE_ENTRY,
        "status": "approved",
        "decision": {
            "decision": "approved",
            "by": {"issuer": "https://login.abc.example/", "subject": "local|bob", "name": "Bob Example"},
            "at": "2026-11-24T09:12:40.118220Z",
            "comment": None,
        },
        "updated_at": "2026-11-24T09:12:40.301554Z",
    },
}


class Decision(BaseModel):
    """A decision: ``applied`` once the entry carries it, ``pending`` while it is being applied (the
    reconciler finishes it), ``void`` if the timesheets service refused it for good."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_DECISION]})

    id: uuid.UUID
    entry_id: uuid.UUID
    decision: Verdict
    comment: str | None
    by: Person
    at: Timestamp
    state: DecisionState
    entry: Entry | None = Field(description="The decided entry (when the timesheets service returned it).")


__all__ = ["Comment", "Decision", "DecisionIn", "DecisionState", "QueueQuery"]
