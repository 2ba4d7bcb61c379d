"""The timesheets contracts: entries as clients send and receive them, and the internal routes'
bodies that the approvals service exchanges with the timesheets service.

The owner of an entry is never part of a request (``extra="forbid"`` turns an ``"owner"`` field into
a 422 naming it); it always comes from the verified identity.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict
from pydantic.json_schema import WithJsonSchema

from .fields import UUID_SCHEMA, CursorText, Instant, IsoDate, NameText, OptionalText, Timestamp, WorkDate
from .identity import Person

STATUSES = ("submitted", "approved", "rejected")
Status = Literal["submitted", "approved", "rejected"]
Verdict = Literal["approved", "rejected"]
MAX_UPLOAD_ENTRIES = 1000
# The largest upload body (the timesheets service's and the gateway's MAX_BODY_BYTES default): the
# most rows at their longest (user 255, project 100, notes 2,000 characters) in any script of the
# Basic Multilingual Plane even written as \uXXXX escapes (6 bytes a character, what json.dumps
# writes by default) is ~14.2 MB; as UTF-8, at most 4 bytes a character, ~9.5 MB.
MAX_UPLOAD_BYTES = 16 << 20
MAX_PAGE = 100
DEFAULT_PAGE = 50
MAX_CURSOR = 512

#: a person's entries on one date add up to at most this many hours (timesheets/daycap.py)
DAY_HOURS_LIMIT = 24

HOURS_SCHEMA: dict[str, Any] = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": 24,
    "multipleOf": 0.25,
    "description": (
        "Hours worked, in quarter hours: more than 0, at most 24; a person's entries on one date add up "
        "to at most 24 (422 day_hours_exceeded)."
    ),
}


def _quarter_hours(value: float) -> float:
    if value * 4 != round(value * 4):
        raise ValueError("must be in quarter hours (a multiple of 0.25)")
    return value


Hours = Annotated[
    float, Strict(), Field(gt=0, le=24), AfterValidator(_quarter_hours), WithJsonSchema(HOURS_SCHEMA)
]
Project = Annotated[str, NameText(100, "The project the hours were spent on.", nfc=True)]
Notes = Annotated[str | None, OptionalText(2000, "Free-text notes.")]
# A subject as the gateway forwards it: printable, bounded.
Subject = Annotated[
    str, NameText(255, "The subject (sub) of the user the entry is for, within the uploader's issuer.")
]
Cursor = Annotated[str, CursorText(MAX_CURSOR)]

EXAMPLE_ID = "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f"
EXAMPLE_OWNER = {"issuer": "https://login.abc.example/", "subject": "local|alice", "name": "Alice Example"}
EXAMPLE_ENTRY: dict[str, Any] = {
    "id": EXAMPLE_ID,
    "owner": EXAMPLE_OWNER,
    "date": "2026-11-23",
    "project": "Store rollout",
    "hours": 7.5,
    "notes": "Pairing on the data migration",
    "status": "submitted",
    "decision": None,
    "created_at": "2026-11-23T17:02:11.204518Z",
    "updated_at": "2026-11-23T17:02:11.204518Z",
}


# ---- requests ------------------------------------------------------------------------------------


class EntryIn(BaseModel):
    """``POST /timesheets``: a new entry, owned by the caller."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {"date": "2026-11-23", "project": "Store rollout", "hours": 7.5, "notes": "Data migration"}
            ]
        },
    )

    date: WorkDate
    project: Project
    hours: Hours
    notes: Notes = None

    def canonical(self) -> dict[str, Any]:
        """The normalised request (7.5 and 7.50 alike) that idempotency fingerprints hash."""
        return {
            "date": self.date.isoformat(),
            "project": self.project,
            "hours": self.hours,
            "notes": self.notes,
        }


class UploadRow(EntryIn):
    """One row of ``POST /timesheets/upload``: an entry for the named user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"user": "local|alice", "date": "2026-11-23", "project": "Store rollout", "hours": 8}
            ]
        },
    )

    user: Subject

    def canonical(self) -> dict[str, Any]:
        return {"user": self.user, **super().canonical()}


class UploadIn(BaseModel):
    """``POST /timesheets/upload``: rows are validated one by one (so that every bad row is named,
    as ``entries.N.field``), hence ``dict`` here and :class:`UploadRow` in the published schema."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "entries": [
                        {"user": "local|alice", "date": "2026-11-23", "project": "Store rollout", "hours": 8},
                        {"user": "local|bob", "date": "2026-11-23", "project": "Support", "hours": 4.25},
                    ]
                }
            ]
        },
    )

    entries: Annotated[
        list[dict[str, Any]],
        Field(min_length=1, max_length=MAX_UPLOAD_ENTRIES),
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_UPLOAD_ENTRIES,
                "items": {"$ref": "#/components/schemas/UploadRow"},
                "description": f"1 to {MAX_UPLOAD_ENTRIES} entries, stored all or nothing.",
            }
        ),
    ]


Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description="Page size.")]


class ListQuery(BaseModel):
    """``GET /timesheets`` query string."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_: IsoDate | None = Field(default=None, alias="from", description="Earliest date (inclusive).")
    to: IsoDate | None = Field(default=None, description="Latest date (inclusive); not before from.")
    status: Status | None = Field(default=None, description="Only entries in this status.")
    project: Project | None = Field(default=None, description="Only entries of this project (exact).")
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor | None = None


class PendingQuery(BaseModel):
    """``GET /internal/timesheets/pending`` query string (the approvals service's queue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude_issuer: str = Field(min_length=1, max_length=1000, description="The approver's issuer.")
    exclude_subject: str = Field(min_length=1, max_length=1000, description="The approver's subject.")
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor | None = None


class Approver(BaseModel):
    """Who decided, as the approvals service relays it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, max_length=1000)
    subject: str = Field(min_length=1, max_length=1000)
    name: str | None = Field(default=None, max_length=1000)
    client_id: str = Field(default="", max_length=1000)
    #: who the approver is (a person, or a machine client holding ``approve:timesheets``): the
    #: decision's audit events name it so. Sent only when not ``user`` (``approvals.peer``), so a
    #: person's decision is the body the previous release sends and accepts (docs/upgrades.md)
    kind: Literal["user", "client", "service"] = "user"


class ApplyDecision(BaseModel):
    """``POST /internal/timesheets/{id}/decision``: a decision the approvals service recorded,
    applied to the entry (idempotent by ``decision_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: uuid.UUID
    decision: Verdict
    comment: str | None = Field(default=None, max_length=2000)
    by: Approver
    at: Instant


# ---- responses -----------------------------------------------------------------------------------


class EntryDecision(BaseModel):
    """The decision an entry carries once approved or rejected."""

    decision: Verdict
    by: Person
    at: Timestamp
    comment: str | None


class Entry(BaseModel):
    """A timesheet entry as every route returns it."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_ENTRY]})

    id: Annotated[uuid.UUID, WithJsonSchema(UUID_SCHEMA)]
    owner: Person
    date: Annotated[dt.date, WithJsonSchema({"type": "string", "format": "date"})]
    project: Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 100})]
    hours: Annotated[float, WithJsonSchema(HOURS_SCHEMA)]
    notes: Annotated[str | None, WithJsonSchema({"type": ["string", "null"], "maxLength": 2000})]
    status: Status
    decision: EntryDecision | None = Field(description="Present once the entry is approved or rejected.")
    created_at: Timestamp
    updated_at: Timestamp


class EntryPage(BaseModel):
    """One page of entries, newest date first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [EXAMPLE_ENTRY], "next_cursor": None}]}
    )

    items: list[Entry]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page (opaque)."
    )


class UploadResult(BaseModel):
    """What a batch upload stored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "upload_id": "5d2c1b0a-9e8f-4a7b-b6c5-d4e3f2a1b0c9",
                    "count": 1,
                    "items": [{**EXAMPLE_ENTRY, "owner": {**EXAMPLE_OWNER, "name": None}, "notes": None}],
                }
            ]
        }
    )

    upload_id: uuid.UUID
    count: int = Field(ge=1)
    items: list[Entry]


__all__ = [
    "MAX_UPLOAD_ENTRIES",
    "STATUSES",
    "ApplyDecision",
    "Approver",
    "Entry",
    "EntryDecision",
    "EntryIn",
    "EntryPage",
    "ListQuery",
    "PendingQuery",
    "Status",
    "UploadIn",
    "UploadResult",
    "UploadRow",
]
