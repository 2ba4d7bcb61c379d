"""The hash chain: what exactly is hashed, so that ingestion and verification agree byte for byte.

Each record's hash is SHA-256 over a canonical JSON document (sorted keys, no whitespace, UTF-8) of
every stored field plus the previous record's hash. Timestamps are written as UTC with microseconds
(Postgres' own precision) and ``details`` as Postgres' ``jsonb`` text form of the value, so reading a
row back always reproduces the bytes that were hashed at ingestion: any changed column, a removed or
reordered row, shows up as a mismatch at the first record affected.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
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


def timestamp(value: datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling per instant."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def canonical(record: Fields) -> bytes:
    """The bytes hashed for a record (``details`` is the jsonb text, the other fields plain values)."""
    document = {
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
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Fields) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()
