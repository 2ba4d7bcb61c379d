"""Request shapes of the audit API, validated strictly so that bad input is a 422 naming the field.

Everything here must also be storable: Postgres text cannot hold NUL characters, ``jsonb`` refuses
NaN and infinities, and strings must be valid UTF-8. Such values are refused at the door rather than
failing later inside the chain lock.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from svckit.values import Instant

MAX_BATCH = 500
MAX_DETAILS_BYTES = 16 * 1024
MAX_DETAILS_DEPTH = 16


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Storable = AfterValidator(_storable)
Name = Annotated[str, Field(max_length=512), Storable]
RequiredName = Annotated[str, Field(min_length=1, max_length=512), Storable]
ClientId = Annotated[str, Field(max_length=256), Storable]
RequestId = Annotated[str, Field(max_length=128), Storable]
Filter = Annotated[str, Field(min_length=1, max_length=512), Storable]


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"nests deeper than {MAX_DETAILS_DEPTH} levels")
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _details(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_DETAILS_BYTES:
        raise ValueError(f"must be at most {MAX_DETAILS_BYTES} bytes as JSON")
    return value


class Actor(BaseModel):
    """Who acted. ``anonymous`` (with an empty issuer) is a caller whose token did not verify: the
    gateway records such denials too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Name
    subject: RequiredName
    kind: Literal["user", "client", "service", "anonymous"]
    client_id: ClientId = ""
    name: Name = ""


class Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    id: Name = ""


class IngestEvent(BaseModel):
    """One event as a writer service sends it (the shape of ``svckit.outbox.AuditEvent.to_json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID
    occurred_at: Instant
    source: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
    actor: Actor
    action: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$", max_length=100)]
    resource: Resource
    outcome: Literal["success", "denied", "failure"]
    request_id: RequestId | None = None
    details: Annotated[dict[str, Any], AfterValidator(_details)] = Field(default_factory=dict)


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[IngestEvent], Field(min_length=1, max_length=MAX_BATCH)]


class IngestResult(BaseModel):
    accepted: int
    duplicates: int


# ---- GET /audit/events ---------------------------------------------------------------------------

MAX_SEQ = 2**63 - 1  # seq is a bigint: a position beyond it names no record (and cannot be a parameter)
_SEQ = re.compile(r"[0-9]{1,19}")


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).rstrip(b"=").decode()


def chain_position(text: str) -> int | None:
    """A ``seq`` written in ASCII digits, within 1..2^63-1 (a Postgres bigint), else None."""
    if not _SEQ.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_SEQ else None


def decode_cursor(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("is not a cursor returned by this API") from None
    seq = chain_position(raw[1:]) if raw.startswith("s") else None
    if seq is None:
        raise ValueError("is not a cursor returned by this API")
    return seq


def _valid_cursor(value: str) -> str:
    decode_cursor(value)
    return value


class EventsQuery(BaseModel):
    """Filters of ``GET /audit/events``; every one optional, combined with AND."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    actor: Filter | None = Field(None, description="Actor subject.")
    actor_issuer: RequiredName | None = Field(None, description="Actor issuer (with or without actor).")
    client_id: Filter | None = None
    action: Filter | None = None
    resource_type: Filter | None = None
    resource_id: Filter | None = None
    outcome: Literal["success", "denied", "failure"] | None = None
    source: Filter | None = None
    from_: Instant | None = Field(None, alias="from", description="occurred_at ≥ from")
    to: Instant | None = Field(None, description="occurred_at < to")
    limit: int = Field(50, ge=1, le=100)
    cursor: Annotated[str, Field(max_length=64), AfterValidator(_valid_cursor)] | None = None

    @field_validator("to")
    @classmethod
    def _after_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("from_")
        if value is not None and start is not None and value <= start:
            raise ValueError("must be later than 'from'")
        return value

    @property
    def before_seq(self) -> int | None:
        return decode_cursor(self.cursor) if self.cursor else None


# ---- GET /audit/verify -------------------------------------------------------------------------


class Anchor(BaseModel):
    seq: int
    hash: str


def _anchor(value: str) -> str:
    seq, _, digest = value.partition(":")
    if chain_position(seq) is None or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError("must be '<seq>:<hash>' as seen earlier in a record's seq and hash")
    return value


class VerifyQuery(BaseModel):
    """``anchor=<seq>:<hash>``: a record seen earlier (say, the newest one from ``GET /audit/events
    ?limit=1``, saved somewhere the database's owner cannot write). The chain must still hold it,
    unchanged: that catches truncation and wholesale re-hashed rewrites, which the chain alone cannot."""

    model_config = ConfigDict(extra="forbid")

    anchor: Annotated[str, Field(max_length=100), AfterValidator(_anchor)] | None = None

    @property
    def anchor_point(self) -> Anchor | None:
        if self.anchor is None:
            return None
        seq, _, digest = self.anchor.partition(":")
        return Anchor(seq=int(seq), hash=digest)


# ---- responses (documented in the OpenAPI document; tests validate real answers against them) -----


class AuditRecord(BaseModel):
    """A stored record: the ingested event plus its place in the chain."""

    seq: int = Field(ge=1, description="Chain position: 1, 2, 3, … without gaps.")
    id: uuid.UUID
    occurred_at: datetime
    recorded_at: datetime
    source: str
    actor: Actor
    action: str
    resource: Resource
    outcome: Literal["success", "denied", "failure"]
    request_id: str | None
    details: dict[str, Any]
    prev_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class EventsPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null at the end."
    )


class VerifyResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    checked: int = Field(ge=0, description="Records examined.")
    first_bad: int | None = Field(
        None, ge=1, description="The first seq that is missing, altered or unlinked (only when ok is false)."
    )
    reason: str | None = Field(None, description="What is wrong at first_bad (only when ok is false).")


class FieldError(BaseModel):
    field: str
    loc: list[str | int]
    message: str
    type: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as every error of every service is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None
