"""The hash chain: what exactly is hashed, so that ingestion and verification agree byte for byte.

Each record's hash is SHA-256 over a canonical JSON document (sorted keys, no whitespace, UTF-8) of
every stored field plus the previous record's hash. Timestamps are written as UTC with microseconds
(Postgres' own precision) and ``details`` as Postgres' ``jsonb`` text form of the value, so reading a
row back always reproduces the bytes that were hashed at ingestion: any changed column, a removed or
reordered row, shows up as a mismatch at the first record affected.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring as _string  # json.dumps' own, ensure_ascii=False
from typing import Any, Protocol

GENESIS = "0" * 64


class Fields(Protocol):
    """A stored record's columns by name: a dict being built, or an asyncpg row read back."""

    def __getitem__(self, key: str) -> Any: ...


# The columns the hash covers, in the order they are read for verification.
HASHED_COLUMNS = (
    "seq",
    "id",
    "occurred_at",
    "recorded_at",
    "source",
    "actor_issuer",
    "actor_subject",
    "actor_kind",
    "actor_client_id",
    "actor_name",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "request_id",
    "details",
    "prev_hash",
)


_ZERO = timedelta(0)


def timestamp(value: datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling per instant. (A time zone at offset zero other than
    ``UTC``, as pydantic parses ``Z``, is UTC already: its wall time is written without conversion.)

    Every event's ``occurred_at`` is written so at ingestion: at offset zero (what writers send) the
    aware value's own ``isoformat`` ends in ``+00:00`` (no other offset is written with that ending),
    which asks the time zone for its offset once, where making a naive copy to format asked twice."""
    text = value.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    if value.tzinfo is not UTC and value.utcoffset() != _ZERO:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def document(record: Fields) -> dict[str, Any]:
    """What a record's hash covers, as a JSON document: :func:`canonical` is its serialisation with
    sorted keys, no whitespace, UTF-8 (the definition; kept for the tests that hold the fast path
    to it)."""
    return {
        "seq": int(record["seq"]),
        "id": str(record["id"]),
        "occurred_at": timestamp(record["occurred_at"]),
        "recorded_at": timestamp(record["recorded_at"]),
        "source": record["source"],
        "actor": {
            "issuer": record["actor_issuer"],
            "subject": record["actor_subject"],
            "kind": record["actor_kind"],
            "client_id": record["actor_client_id"],
            "name": record["actor_name"],
        },
        "action": record["action"],
        "resource": {"type": record["resource_type"], "id": record["resource_id"]},
        "outcome": record["outcome"],
        "request_id": record["request_id"],
        "details": record["details"],
        "prev_hash": record["prev_hash"],
    }


def canonical(record: Fields) -> bytes:
    """The bytes hashed for a record: :func:`document` as ``json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` writes it, assembled directly in that key order.

    Every record is hashed once at ingestion and once per verification walk, so this is the chain's
    hot path: building the nested dict and sorting its keys cost more than the hash itself. The
    strings go through the same escaping function ``json.dumps`` uses.
    """
    s = _string
    request_id = record["request_id"]
    return (
        f'{{"action":{s(record["action"])},"actor":{{"client_id":{s(record["actor_client_id"])},'
        f'"issuer":{s(record["actor_issuer"])},"kind":{s(record["actor_kind"])},'
        f'"name":{s(record["actor_name"])},"subject":{s(record["actor_subject"])}}},'
        f'"details":{s(record["details"])},"id":"{record["id"]}",'
        f'"occurred_at":"{timestamp(record["occurred_at"])}","outcome":{s(record["outcome"])},'
        f'"prev_hash":{s(record["prev_hash"])},"recorded_at":"{timestamp(record["recorded_at"])}",'
        f'"request_id":{"null" if request_id is None else s(request_id)},'
        f'"resource":{{"id":{s(record["resource_id"])},"type":{s(record["resource_type"])}}},'
        f'"seq":{int(record["seq"])},"source":{s(record["source"])}}}'
    ).encode()


def canonical_of(
    seq: int,
    id: Any,
    occurred_at: str,
    recorded_at: str,
    source: str,
    actor_issuer: str,
    actor_subject: str,
    actor_kind: str,
    actor_client_id: str,
    actor_name: str,
    action: str,
    resource_type: str,
    resource_id: str,
    outcome: str,
    request_id: str | None,
    details: str,
    prev_hash: str,
) -> bytes:
    """:func:`canonical` from the values in :data:`HASHED_COLUMNS` order, the timestamps already
    written as :func:`timestamp` writes them: the verification walk has Postgres format them
    (:data:`UTC_TEXT`), which saves it two datetime objects and their formatting per record. The same
    f-string as :func:`canonical`; ``test_chain_bytes`` holds both to the documented bytes."""
    return canonical_text(
        seq,
        id,
        occurred_at,
        recorded_at,
        source,
        actor_issuer,
        actor_subject,
        actor_kind,
        actor_client_id,
        actor_name,
        action,
        resource_type,
        resource_id,
        outcome,
        request_id,
        details,
        prev_hash,
    ).encode()


def canonical_text(
    seq: int,
    id: Any,
    occurred_at: str,
    recorded_at: str,
    source: str,
    actor_issuer: str,
    actor_subject: str,
    actor_kind: str,
    actor_client_id: str,
    actor_name: str,
    action: str,
    resource_type: str,
    resource_id: str,
    outcome: str,
    request_id: str | None,
    details: str,
    prev_hash: str,
) -> str:
    """:func:`canonical_of` before its UTF-8 encoding: the document ingestion sends to the database
    with its hash (``append_documents``, migration 0009), which stores the columns read from it."""
    s = _string
    return (
        f'{{"action":{s(action)},"actor":{{"client_id":{s(actor_client_id)},'
        f'"issuer":{s(actor_issuer)},"kind":{s(actor_kind)},'
        f'"name":{s(actor_name)},"subject":{s(actor_subject)}}},'
        f'"details":{s(details)},"id":"{id}",'
        f'"occurred_at":"{occurred_at}","outcome":{s(outcome)},'
        f'"prev_hash":{s(prev_hash)},"recorded_at":"{recorded_at}",'
        f'"request_id":{"null" if request_id is None else s(request_id)},'
        f'"resource":{{"id":{s(resource_id)},"type":{s(resource_type)}}},'
        f'"seq":{int(seq)},"source":{s(source)}}}'
    )


#: SQL writing a ``timestamptz`` column as :func:`timestamp` writes what asyncpg reads from it (UTC,
#: microseconds, ``Z``; a 4-digit year, zero-padded like ``isoformat``), for :func:`canonical_of`.
#: asyncpg stores ``datetime.max`` / ``datetime.min`` as ``infinity`` / ``-infinity`` and reads them back
#: so: an event may carry either instant, and its hash was computed from the datetime.
UTC_TEXT = (
    "CASE {column} WHEN 'infinity' THEN '9999-12-31T23:59:59.999999Z'"
    " WHEN '-infinity' THEN '0001-01-01T00:00:00.000000Z'"
    """ ELSE to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END"""
)


def record_hash(record: Fields) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()
