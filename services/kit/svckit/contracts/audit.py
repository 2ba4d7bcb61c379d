"""The audit contracts: the event writers send (``POST /internal/events``), the records and chain
verifications auditors read (``GET /audit/events``, ``GET /audit/verify``), and the signed checkpoints
of the chain with their public keys (``GET /audit/checkpoints``, ``GET /audit/checkpoint-keys``).

:class:`AuditEvent` is the one definition of an audit event. Writers build it with
:meth:`AuditEvent.create` (and queue it in their outbox, :mod:`svckit.outbox`); the audit service
validates what arrives with the same model. It is validated on both ends: a writer cannot queue an
event the audit service would refuse (which would wait in the outbox forever).

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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema

from ..context import current_request_id
from .fields import Instant
from .identity import Identity

INGEST_PATH = "/internal/events"
MAX_BATCH = 500
MAX_DETAILS_BYTES = 16 * 1024
MAX_DETAILS_DEPTH = 16
MAX_NAME = 512
OUTCOMES = frozenset({"success", "denied", "failure"})
Outcome = Literal["success", "denied", "failure"]
ActorKind = Literal["user", "client", "service", "anonymous"]
HASH_PATTERN = r"^[0-9a-f]{64}$"
SOURCE_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$"
MAX_ACTION = 100
RESOURCE_TYPE_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
MAX_REQUEST_ID = 128
MAX_SEQ = 2**63 - 1  # seq is a bigint: a position beyond it names no record (and cannot be a parameter)
RECEIPTS_PATH = "/internal/receipts"


def _utc_text(value: datetime) -> str:
    """UTC with ``Z``; microseconds only when there are any (how the audit API has always spelt it).
    A naive value is UTC: asyncpg reads ``infinity`` / ``-infinity`` (what the two ends of the instant
    range are stored as) as naive ``datetime.max`` / ``datetime.min``, never local time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(_utc_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339, UTC, Z."}),
]


class InvalidEvent(ValueError):
    """A writer built an event the audit service would refuse: a bug in the writer, never the
    client's fault (so deliberately not a pydantic ``ValidationError``, which answers 422)."""


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Storable = AfterValidator(_storable)
Name = Annotated[str, Field(max_length=MAX_NAME), Storable]
RequiredName = Annotated[str, Field(min_length=1, max_length=MAX_NAME), Storable]
ClientId = Annotated[str, Field(max_length=256), Storable]
RequestId = Annotated[str, Field(max_length=MAX_REQUEST_ID), Storable]
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


_DETAILS_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # json.dumps' own, made once


def _details_text(value: Mapping[str, Any]) -> str:
    """The JSON text of storable details (:func:`_check_json`) of at most :data:`MAX_DETAILS_BYTES`.
    The size needs the text anyway, and that text shows when the walk cannot find anything: no NaN or
    infinity (``allow_nan=False`` refuses them), no NUL (it would be written ``\\u0000``), no lone
    surrogate (UTF-8 cannot encode one), fewer brackets than the depth limit. Else the walk names the
    problem."""
    try:
        text = _DETAILS_JSON.encode(value)
        size = len(text.encode())
    except ValueError:  # NaN or infinity, or a lone surrogate (UnicodeEncodeError): the walk names it
        _check_json(value)
        raise
    if "\\u0000" in text or text.count("{") + text.count("[") > MAX_DETAILS_DEPTH:
        _check_json(value)
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"must be at most {MAX_DETAILS_BYTES} bytes as JSON")
    return text


def _details(value: dict[str, Any]) -> dict[str, Any]:
    """Storable and small enough (:func:`_details_text`)."""
    _details_text(value)
    return value


class Actor(BaseModel):
    """Who acted (a snapshot of the caller's :class:`~svckit.identity.Identity`). ``anonymous`` (with
    an empty issuer) is a caller whose token did not verify: the gateway records such denials too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Name
    subject: RequiredName
    kind: ActorKind
    client_id: ClientId = ""
    name: Name = ""

    @classmethod
    def of(cls, identity: Identity) -> Actor:
        # The display name is a snapshot for people; a token may carry a longer one than the trail
        # keeps, and that must not make the event unstorable.
        return cls(
            issuer=identity.issuer,
            subject=identity.subject,
            kind=identity.kind,
            client_id=identity.client_id,
            name=identity.name[:MAX_NAME],
        )

    def to_json(self) -> dict[str, str]:
        return self.model_dump(mode="json")


class Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, Field(pattern=RESOURCE_TYPE_PATTERN)]
    id: Name = ""


class AuditEvent(BaseModel):
    """One audit event, in the wire shape of ``POST /internal/events``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID
    occurred_at: Instant
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]
    actor: Actor
    action: Annotated[str, Field(pattern=ACTION_PATTERN, max_length=MAX_ACTION)]
    resource: Resource
    outcome: Outcome
    request_id: RequestId | None = None
    details: Annotated[dict[str, Any], AfterValidator(_details)] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        action: str,
        resource_type: str,
        resource_id: str,
        outcome: str,
        actor: Identity | Actor,
        source: str,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        occurred_at: datetime | None = None,
        event_id: uuid.UUID | None = None,
    ) -> AuditEvent:
        """A new event: a fresh id, now (UTC), and the current request's id unless given. Raises
        :class:`InvalidEvent` (naming the field) when the audit service would refuse it."""
        if outcome not in OUTCOMES:
            raise InvalidEvent(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
        if occurred_at is not None and occurred_at.tzinfo is None:
            raise InvalidEvent("occurred_at must be timezone-aware")
        try:
            return cls(
                id=event_id or uuid.uuid4(),
                occurred_at=occurred_at or datetime.now(UTC),
                source=source,
                actor=actor if isinstance(actor, Actor) else Actor.of(actor),
                action=action,
                resource=Resource(type=resource_type, id=resource_id),
                outcome=outcome,
                request_id=request_id if request_id is not None else current_request_id(),
                details=dict(details or {}),
            )
        except ValidationError as exc:
            raise InvalidEvent(f"the audit service would refuse this event: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_SOURCE = re.compile(SOURCE_PATTERN)
_ACTION = re.compile(ACTION_PATTERN)
_RESOURCE_TYPE = re.compile(RESOURCE_TYPE_PATTERN)
#: (source, action, resource type) triples already checked against the patterns
_checked_names: set[tuple[str, str, str]] = set()
#: an identity's :class:`Actor` as JSON, validated once (bounded: cleared when full)
_actors: dict[Identity, str] = {}
MAX_CACHED_ACTORS = 4096


def _actor_json(identity: Identity) -> str:
    text = _actors.get(identity)
    if text is None:
        text = Actor.of(identity).model_dump_json()
        if len(_actors) >= MAX_CACHED_ACTORS:
            _actors.clear()
        _actors[identity] = text
    return text


def _text(value: str) -> str:
    return json.encoder.encode_basestring(value)


def outbox_values(
    *,
    action: str,
    resource_type: str,
    resource_id: str,
    outcome: str,
    actor: Identity,
    source: str,
    details: Mapping[str, Any],
    request_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> tuple[uuid.UUID, datetime, str]:
    """``event_parameters(AuditEvent.create(...))`` (:mod:`svckit.outbox`: the outbox row's id,
    occurred_at and JSON payload) for a writer's hot path, without building and serialising the
    three models: ~5 µs instead of ~55. The same checks, each where it costs least: the names against
    the model's patterns once per (source, action, type); the actor through :class:`Actor` once per
    identity (kept as JSON); the resource id, request id and details as the model checks them. Raises
    :class:`InvalidEvent` where :meth:`AuditEvent.create` does; the payload parses to the same
    document (``tests/test_contracts.py`` holds the two to it; the outbox stores it as ``jsonb``).
    ``event_id``: the event's id when the change it records has one of its own (the audit service
    stores an id once: the same change written again is the same record); else a new one."""
    if outcome not in OUTCOMES:
        raise InvalidEvent(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
    names = (source, action, resource_type)
    if names not in _checked_names:
        if (
            _SOURCE.fullmatch(source) is None
            or _ACTION.fullmatch(action) is None
            or len(action) > MAX_ACTION
            or _RESOURCE_TYPE.fullmatch(resource_type) is None
        ):
            raise InvalidEvent(f"the audit service would refuse this event: names {names!r}")
        _checked_names.add(names)
    if request_id is None:  # the current request's, as AuditEvent.create takes it
        request_id = current_request_id()
    try:
        actor_text = _actor_json(actor)
        if len(resource_id) > MAX_NAME:
            raise ValueError(f"resource id: at most {MAX_NAME} characters")
        _storable(resource_id)
        if request_id is not None:
            if len(request_id) > MAX_REQUEST_ID:
                raise ValueError(f"request id: at most {MAX_REQUEST_ID} characters")
            _storable(request_id)
        details_text = _details_text(details)
    except ValueError as exc:  # pydantic's ValidationError too
        raise InvalidEvent(f"the audit service would refuse this event: {exc}") from None
    if event_id is None:
        event_id = uuid.uuid4()
    occurred_at = datetime.now(UTC)
    payload = (
        f'{{"id":"{event_id}","occurred_at":"{occurred_at.isoformat()[:-6]}Z","source":"{source}",'
        f'"actor":{actor_text},"action":"{action}","resource":{{"type":"{resource_type}",'
        f'"id":{_text(resource_id)}}},"outcome":"{outcome}",'
        f'"request_id":{"null" if request_id is None else _text(request_id)},"details":{details_text}}}'
    )
    return event_id, occurred_at, payload


class IngestBatch(BaseModel):
    """``POST /internal/events``: events of the calling service (its name as each ``source``)."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[AuditEvent], Field(min_length=1, max_length=MAX_BATCH)]


class Receipt(BaseModel):
    """Where one event is stored on the chain: what a producer keeps to hold the trail to later
    (``GET /internal/receipts/{id}``; :mod:`svckit.outbox`). The hash vouches for every record
    before it too (each record's hash covers its predecessor's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(description="The event's id.")
    seq: int = Field(ge=1, le=MAX_SEQ, description="The record's position on the chain.")
    hash: Annotated[str, Field(pattern=HASH_PATTERN, description="The record's hash.")]


EXAMPLE_RECEIPT: dict[str, Any] = {
    "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "seq": 1842,
    "hash": "1a2b" + "0" * 60,
}


class IngestResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"accepted": 199, "duplicates": 1, "receipt": EXAMPLE_RECEIPT}]}
    )

    accepted: int = Field(ge=0, description="Events stored now.")
    duplicates: int = Field(ge=0, description="Events already stored (recognised by id).")
    receipt: Receipt | None = Field(
        None,
        description="The batch's event stored at the highest seq, and that record's hash: the producer "
        "keeps it and later asks GET /internal/receipts/{id} whether the trail still holds it (a trail "
        "restored to an earlier point, or cut by someone with the database owner's rights, does not). "
        "Absent when the service could not tell (it lost the database right after the commit), and "
        "from audit services older than receipts.",
    )


class ReceiptCheck(BaseModel):
    """``GET /internal/receipts/{id}``: whether the trail holds the calling service's event, where."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{**EXAMPLE_RECEIPT, "stored": True}, {"id": EXAMPLE_RECEIPT["id"], "stored": False}]
        },
    )

    id: uuid.UUID
    stored: bool = Field(
        description="The trail holds a record of this id from the calling service (false also for another "
        "service's event: a service learns nothing about the others' records)."
    )
    seq: int | None = Field(None, ge=1, le=MAX_SEQ, description="Its position (when stored).")
    hash: Annotated[str, Field(pattern=HASH_PATTERN)] | None = Field(
        None, description="Its hash (when stored)."
    )


# ---- GET /audit/events ---------------------------------------------------------------------------


def _encode_position(tag: str, position: int) -> str:
    """A listing's opaque cursor: ``tag`` (which listing) and the position, base64url without padding."""
    return base64.urlsafe_b64encode(f"{tag}{position}".encode()).rstrip(b"=").decode()


def _decode_position(tag: str, value: str) -> int:
    """The position in a cursor of :func:`_encode_position` with ``tag``; ValueError for anything else
    (another listing's cursor included), which the query models report as a 422."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("is not a cursor returned by this API") from None
    position = chain_position(raw[1:]) if raw.startswith(tag) else None
    if position is None:
        raise ValueError("is not a cursor returned by this API")
    return position


def encode_cursor(seq: int) -> str:
    return _encode_position("s", seq)


_SEQ = re.compile(r"[0-9]{1,19}")


def chain_position(text: str) -> int | None:
    """A ``seq`` written in ASCII digits, within 1..2^63-1 (a Postgres bigint), else None."""
    if not _SEQ.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_SEQ else None


def decode_cursor(value: str) -> int:
    return _decode_position("s", value)


def _valid_cursor(value: str) -> str:
    decode_cursor(value)
    return value


class EventsQuery(BaseModel):
    """Filters of ``GET /audit/events``; every one optional, combined with AND."""

    model_config = ConfigDict(extra="forbid")

    actor: Filter | None = Field(None, description="Actor subject.")
    actor_issuer: RequiredName | None = Field(None, description="Actor issuer (with or without actor).")
    client_id: Filter | None = Field(None, description="Client id of the actor's token.")
    action: Filter | None = Field(None, description="Exact action, e.g. timesheet.created.")
    resource_type: Filter | None = Field(None, description="Resource type, e.g. timesheet.")
    resource_id: Filter | None = Field(None, description="Resource id.")
    outcome: Outcome | None = Field(None, description="Outcome.")
    source: Filter | None = Field(None, description="Producing service.")
    from_: Instant | None = Field(
        None, alias="from", description="occurred_at ≥ from (RFC 3339 with an offset)."
    )
    to: Instant | None = Field(
        None, description="occurred_at < to (RFC 3339 with an offset); later than from."
    )
    limit: int = Field(50, ge=1, le=100, description="Page size.")
    cursor: (
        Annotated[
            str,
            Field(max_length=64),
            AfterValidator(_valid_cursor),
            WithJsonSchema(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": "^[A-Za-z0-9_-]+$",
                    "description": "The next_cursor of the previous page, unchanged (opaque).",
                }
            ),
        ]
        | None
    ) = None

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


EXAMPLE_RECORD: dict[str, Any] = {
    "seq": 1842,
    "id": "3c9a7e52-1b0d-4f6e-a8c2-5d4e3f2a1b0c",
    "occurred_at": "2026-11-23T17:02:11.204518Z",
    "recorded_at": "2026-11-23T17:02:11.391204Z",
    "source": "timesheets",
    "actor": {
        "issuer": "https://login.abc.example/",
        "subject": "local|alice",
        "kind": "user",
        "client_id": "timesheets-spa",
        "name": "Alice Example",
    },
    "action": "timesheet.created",
    "resource": {"type": "timesheet", "id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f"},
    "outcome": "success",
    "request_id": "5f0c6d0e8b3f4a0f9d1e2c3b4a5f6e7d",
    "details": {"date": "2026-11-23", "project": "Store rollout", "hours": 7.5},
    "prev_hash": "9f2b5c1d7e3a8f4b6c0d2e1f3a5b7c9d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
    "hash": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
}


class AuditRecord(BaseModel):
    """A stored record: the ingested event plus its place in the chain."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_RECORD]})

    seq: int = Field(ge=1, description="Chain position: 1, 2, 3, … without gaps.")
    id: uuid.UUID
    occurred_at: Timestamp
    recorded_at: Timestamp
    source: str
    actor: Actor
    action: str
    resource: Resource
    outcome: Outcome
    request_id: str | None
    details: dict[str, Any]
    prev_hash: Annotated[str, Field(pattern=HASH_PATTERN)]
    hash: Annotated[str, Field(pattern=HASH_PATTERN)]


class EventsPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [EXAMPLE_RECORD], "next_cursor": None}]}
    )

    items: list[AuditRecord]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null at the end."
    )


# ---- GET /audit/verify -------------------------------------------------------------------------

ANCHOR_PATTERN = r"^[1-9][0-9]*:[0-9a-f]{64}$"


class Anchor(BaseModel):
    seq: int
    hash: str


def _anchor(value: str) -> str:
    seq, _, digest = value.partition(":")
    if chain_position(seq) is None or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError("must be '<seq>:<hash>' as seen earlier in a record's seq and hash")
    return value


#: ``from_checkpoint=latest``: the newest checkpoint in the database
LATEST = "latest"
_SEQ_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}


def _position(value: str) -> str:
    if chain_position(value) is None:
        raise ValueError(f"must be a record's seq: a whole number from 1 to {MAX_SEQ}, in ASCII digits")
    return value


def _checkpoint_reference(value: str) -> str:
    if value != LATEST and chain_position(value) is None:
        raise ValueError("must be a checkpoint's number (1, 2, 3, …) or 'latest'")
    return value


#: a chain position as a query parameter: ASCII digits only, checked as the cursor's and the anchor's
SeqParameter = Annotated[str, Field(max_length=20), AfterValidator(_position)]


class VerifyQuery(BaseModel):
    """Without parameters: the whole chain. ``anchor=<seq>:<hash>``: a record seen earlier (say, the
    newest one from ``GET /audit/events?limit=1``, saved somewhere the database's owner cannot write).
    The chain must still hold it, unchanged: that catches truncation and wholesale re-hashed rewrites,
    which the chain alone cannot.

    A **range** (``from_checkpoint``, ``since``, ``until``) is walked from a signed checkpoint, whose
    record must still carry the head that was signed, so that the answer says "the chain from
    checkpoint N (signed by key K at T) to the head is intact", not merely "these rows hash
    together"; a trail too long to walk on request whole is verified this way (``from_checkpoint=
    latest``)."""

    model_config = ConfigDict(extra="forbid")

    anchor: (
        Annotated[
            str,
            Field(max_length=100),
            AfterValidator(_anchor),
            WithJsonSchema(
                {
                    "type": "string",
                    "maxLength": 100,
                    "pattern": ANCHOR_PATTERN,
                    "description": "'<seq>:<hash>' of a record seen earlier (e.g. the newest from "
                    "GET /audit/events?limit=1, kept outside the database): the chain must still "
                    "hold it unchanged, which catches truncation and re-hashed rewrites. In a range, "
                    "its seq must lie within the range.",
                }
            ),
        ]
        | None
    ) = None
    from_checkpoint: (
        Annotated[
            str,
            Field(max_length=20),
            AfterValidator(_checkpoint_reference),
            WithJsonSchema(
                {
                    "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_SEQ}, {"const": LATEST}],
                    "description": "Verify from this signed checkpoint (its number, or 'latest' for the "
                    "newest) to the head: its signature must verify with a known key and its record "
                    "must still carry the head it signed. Not with since.",
                }
            ),
        ]
        | None
    ) = None
    since: (
        Annotated[
            SeqParameter,
            WithJsonSchema(
                {
                    **_SEQ_SCHEMA,
                    "description": "Verify from the newest signed checkpoint at or before this seq (the "
                    "chain's start when there is none) to the head: the range covers since. Not with "
                    "from_checkpoint.",
                }
            ),
        ]
        | None
    ) = None
    until: (
        Annotated[
            SeqParameter,
            WithJsonSchema(
                {
                    **_SEQ_SCHEMA,
                    "description": "End the range at this seq instead of the head (at most the head; "
                    "not before the range's start).",
                }
            ),
        ]
        | None
    ) = None

    @property
    def anchor_point(self) -> Anchor | None:
        if self.anchor is None:
            return None
        seq, _, digest = self.anchor.partition(":")
        return Anchor(seq=int(seq), hash=digest)

    @property
    def ranged(self) -> bool:
        """A range was asked for (else the whole chain, as without parameters)."""
        return self.from_checkpoint is not None or self.since is not None or self.until is not None

    @property
    def checkpoint(self) -> int | Literal["latest"] | None:
        if self.from_checkpoint is None:
            return None
        if self.from_checkpoint == LATEST:
            return "latest"
        return int(self.from_checkpoint)

    @property
    def since_seq(self) -> int | None:
        return int(self.since) if self.since is not None else None

    @property
    def until_seq(self) -> int | None:
        return int(self.until) if self.until is not None else None


class CheckpointSummary(BaseModel):
    """Which signed checkpoint is the newest: what the chain was held to last."""

    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=1, description="Checkpoint number (1, 2, 3, …).")
    seq: int = Field(ge=0, description="The chain position it signs.")
    signed_at: Timestamp
    key_id: str = Field(description="The kid of the key that signed it (GET /audit/checkpoint-keys).")


class CheckpointStatus(BaseModel):
    """The chain against its signed checkpoints (present when the service signs checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    checked: int = Field(ge=0, description="Checkpoints examined.")
    verified: int = Field(ge=0, description="Checkpoints whose signature verified with a published key.")
    latest: CheckpointSummary | None = Field(
        None, description="The newest checkpoint; absent before the first."
    )
    signatures_valid: bool = Field(
        description="Every checkpoint is signed by a published key, or chained to one that is."
    )
    chain_matches: bool = Field(description="The records still hold every signed head, in place.")
    problem: str | None = Field(None, description="The first thing wrong with the checkpoints (when any).")


class RangeAnchor(BaseModel):
    """What a ranged verification starts from: a signed checkpoint whose signature verified with a
    known key (its record must carry that hash), or the chain's start (record 1 links to 64 zeros)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["checkpoint", "start"]
    seq: int = Field(ge=0, description="The record it vouches for (the checkpoint's seq; 0 for the start).")
    hash: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="The head hash the checkpoint signed (64 zeros for the start: record 1's prev_hash).",
    )
    number: int | None = Field(None, ge=1, description="The checkpoint's number (a checkpoint only).")
    key_id: str | None = Field(None, description="The kid of the key its signature verified with.")
    signed_at: Timestamp | None = Field(None, description="When it was signed.")


class VerifiedRange(BaseModel):
    """The range a verification covered, and what anchored it (only when a range was asked for)."""

    model_config = ConfigDict(extra="forbid")

    from_seq: int = Field(ge=1, description="The first record walked: the anchor's (1 from the start).")
    to_seq: int = Field(ge=1, description="The last record of the range: until, or the head.")
    to_head: bool = Field(description="to_seq was the chain's head when the walk began.")
    signed_through: int | None = Field(
        None,
        ge=1,
        description="The last record of the range that a verified checkpoint signs: up to it the records "
        "are those that were signed; after it (appended since the newest checkpoint) the chain alone "
        "holds them. Absent when no checkpoint covers any of the range, and when ok is false.",
    )
    anchor: RangeAnchor


class VerifyResult(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "ok": True,
                    "checked": 1842,
                    "checkpoints": {
                        "checked": 17,
                        "verified": 17,
                        "latest": {
                            "number": 17,
                            "seq": 1842,
                            "signed_at": "2026-11-23T17:05:00Z",
                            "key_id": "ck-2026-11",
                        },
                        "signatures_valid": True,
                        "chain_matches": True,
                    },
                },
                {
                    "ok": True,
                    "checked": 43,
                    "checkpoints": {
                        "checked": 2,
                        "verified": 2,
                        "latest": {
                            "number": 17,
                            "seq": 1842,
                            "signed_at": "2026-11-23T17:05:00Z",
                            "key_id": "ck-2026-11",
                        },
                        "signatures_valid": True,
                        "chain_matches": True,
                    },
                    "range": {
                        "from_seq": 1800,
                        "to_seq": 1842,
                        "to_head": True,
                        "signed_through": 1842,
                        "anchor": {
                            "kind": "checkpoint",
                            "number": 16,
                            "seq": 1800,
                            "hash": "3f5e" + "0" * 60,
                            "key_id": "ck-2026-11",
                            "signed_at": "2026-11-23T17:04:00Z",
                        },
                    },
                },
                {
                    "ok": False,
                    "checked": 977,
                    "first_bad": 977,
                    "reason": "hash does not match the record's content",
                },
                {
                    "ok": False,
                    "checked": 1842,
                    "first_bad": 1801,
                    "reason": "records 1801 to 1842 differ from signed checkpoint 17: the history was "
                    "rewritten and the chain recomputed after it was signed",
                },
            ]
        },
    )

    ok: bool
    checked: int = Field(ge=0, description="Records examined.")
    first_bad: int | None = Field(
        None,
        ge=1,
        description="The first seq that is missing, altered or unlinked, or — when the records no longer "
        "match a signed checkpoint — the first one after the last checkpoint that still matches (only when "
        "ok is false and records are at fault). In a range: the anchor's own record when it no longer "
        "carries the head its checkpoint signed (the history up to it was rewritten).",
    )
    reason: str | None = Field(None, description="What is wrong (only when ok is false).")
    checkpoints: CheckpointStatus | None = Field(
        None, description="The chain against its signed checkpoints (absent when checkpoints are off)."
    )
    range: VerifiedRange | None = Field(
        None,
        description="What was verified, from what anchor (only when a range was asked for, and its anchor "
        "held: an anchor that does not verify anchors nothing, and ok is false).",
    )


# ---- GET /audit/checkpoints, GET /audit/checkpoint-keys ------------------------------------------

EXAMPLE_JWS = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImNrLTIwMjYtMTEiLCJ0eXAiOiJ0c3AtYXVkaXQtY2hlY2twb2ludCtqd3MifQ"
    ".eyJjb3VudCI6MTg0MiwiaGVhZCI6IjFhMmIuLi4iLCJuIjoxNywicHJldiI6IjdjOWQuLi4iLCJzZXEiOjE4NDJ9"
    ".c2lnbmF0dXJl"
)
JWS_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"


def encode_checkpoint_cursor(number: int) -> str:
    return _encode_position("c", number)


def decode_checkpoint_cursor(value: str) -> int:
    return _decode_position("c", value)


def _valid_checkpoint_cursor(value: str) -> str:
    decode_checkpoint_cursor(value)
    return value


class CheckpointsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=100, description="Page size.")
    cursor: (
        Annotated[
            str,
            Field(max_length=64),
            AfterValidator(_valid_checkpoint_cursor),
            WithJsonSchema(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": "^[A-Za-z0-9_-]+$",
                    "description": "The next_cursor of the previous page, unchanged (opaque).",
                }
            ),
        ]
        | None
    ) = None

    @property
    def before_number(self) -> int | None:
        return decode_checkpoint_cursor(self.cursor) if self.cursor else None


EXAMPLE_CHECKPOINT: dict[str, Any] = {
    "number": 17,
    "seq": 1842,
    "head": EXAMPLE_RECORD["hash"],
    "count": 1842,
    "signed_at": "2026-11-23T17:05:00Z",
    "prev": EXAMPLE_RECORD["prev_hash"],
    "key_id": "ck-2026-11",
    "jws": EXAMPLE_JWS,
}


class CheckpointRecord(BaseModel):
    """A signed checkpoint: ``jws`` is the checkpoint itself (RFC 7515 compact, EdDSA, verifiable with
    GET /audit/checkpoint-keys); the other fields repeat what it signs, for reading."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_CHECKPOINT]})

    number: int = Field(ge=1, description="1, 2, 3, … without gaps.")
    seq: int = Field(ge=0, description="The chain position signed (its head).")
    head: Annotated[str, Field(pattern=HASH_PATTERN, description="The hash of record seq.")]
    count: int = Field(ge=0, description="Records in the chain up to seq (equal to seq: no gaps).")
    signed_at: Timestamp
    prev: Annotated[
        str,
        Field(pattern=HASH_PATTERN, description="SHA-256 of the previous checkpoint's jws (zeros for 1)."),
    ]
    key_id: str
    jws: Annotated[str, Field(pattern=JWS_PATTERN)]


class CheckpointsPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [EXAMPLE_CHECKPOINT], "next_cursor": "YzE3"}]}
    )

    items: list[CheckpointRecord]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null at the end."
    )


class CheckpointKey(BaseModel):
    """An Ed25519 public key as a JWK (RFC 8037)."""

    model_config = ConfigDict(extra="forbid")

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    kid: str
    use: Literal["sig"]
    alg: Literal["EdDSA"]


class CheckpointKeySet(BaseModel):
    """A JWKS (RFC 7517): the keys checkpoints are signed with, the current signing key first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "keys": [
                        {
                            "kty": "OKP",
                            "crv": "Ed25519",
                            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                            "kid": "ck-2026-11",
                            "use": "sig",
                            "alg": "EdDSA",
                        }
                    ]
                }
            ]
        }
    )

    keys: list[CheckpointKey]


__all__ = [
    "INGEST_PATH",
    "MAX_BATCH",
    "OUTCOMES",
    "RECEIPTS_PATH",
    "Actor",
    "Anchor",
    "AuditEvent",
    "AuditRecord",
    "CheckpointKey",
    "CheckpointKeySet",
    "CheckpointRecord",
    "CheckpointStatus",
    "CheckpointSummary",
    "CheckpointsPage",
    "CheckpointsQuery",
    "EventsPage",
    "EventsQuery",
    "IngestBatch",
    "IngestResult",
    "InvalidEvent",
    "RangeAnchor",
    "Receipt",
    "ReceiptCheck",
    "Resource",
    "VerifiedRange",
    "VerifyQuery",
    "VerifyResult",
    "decode_cursor",
    "encode_cursor",
    "outbox_values",
]
