"""What clients may send: request bodies and query strings, validated with field-naming errors.

The owner of an entry is never part of a body (``extra="forbid"`` turns an ``"owner"`` field into a
422 naming it); it always comes from the verified identity.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)
from svckit.values import Instant

STATUSES = ("submitted", "approved", "rejected")
Status = Literal["submitted", "approved", "rejected"]
MAX_UPLOAD_ENTRIES = 1000
FIRST_WORK_DATE = dt.date(2000, 1, 1)
LAST_WORK_DATE = dt.date(2099, 12, 31)

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _iso_date_text(value: Any) -> Any:
    """Only ``YYYY-MM-DD`` strings: pydantic alone would also take numbers (as Unix times)."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


def _quarter_hours(value: float) -> float:
    if value * 4 != round(value * 4):
        raise ValueError("must be in quarter hours (a multiple of 0.25)")
    return value


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _blank_is_none(value: str | None) -> str | None:
    return value if value else None


def _work_date(value: dt.date) -> dt.date:
    if not FIRST_WORK_DATE <= value <= LAST_WORK_DATE:
        raise ValueError(f"must be a work date from {FIRST_WORK_DATE} to {LAST_WORK_DATE}")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_text)]
# What an entry may be dated (docs/CONTRACTS.md "Accepted input"): 0001-01-01 or 9999-12-31 are typos or
# probes, not work. Filters (``from``/``to``) take any date: they only bound a range.
WorkDate = Annotated[IsoDate, AfterValidator(_work_date)]
Hours = Annotated[float, Strict(), Field(gt=0, le=24), AfterValidator(_quarter_hours)]
Project = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_no_control_chars),
]
Notes = Annotated[
    str | None,
    Field(default=None, max_length=2000),
    AfterValidator(lambda v: _blank_is_none(_no_control_chars(v) if v else v)),
]
# A subject as the gateway forwards it: printable, bounded.
Subject = Annotated[
    str,
    Strict(),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_no_control_chars),
]


class EntryIn(BaseModel):
    """``POST /timesheets``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    user: Subject

    def canonical(self) -> dict[str, Any]:
        return {"user": self.user, **super().canonical()}


class UploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_UPLOAD_ENTRIES)


class ListQuery(BaseModel):
    """``GET /timesheets`` query string."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    from_: IsoDate | None = Field(default=None, alias="from")
    to: IsoDate | None = None
    status: Status | None = None
    project: Project | None = None
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, min_length=1, max_length=512)


class PendingQuery(BaseModel):
    """``GET /internal/timesheets/pending`` query string (the approvals service's queue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude_issuer: str = Field(min_length=1, max_length=1000)
    exclude_subject: str = Field(min_length=1, max_length=1000)
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, min_length=1, max_length=512)


class Approver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1, max_length=1000)
    subject: str = Field(min_length=1, max_length=1000)
    name: str | None = Field(default=None, max_length=1000)
    client_id: str = Field(default="", max_length=1000)


class DecisionIn(BaseModel):
    """``POST /internal/timesheets/{id}/decision``: a decision recorded by the approvals service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision_id: uuid.UUID
    decision: Literal["approved", "rejected"]
    comment: str | None = Field(default=None, max_length=2000)
    by: Approver
    at: Instant
