"""The bytes a record's hash covers: the fast serialisation is exactly the documented one (sorted
keys, no whitespace, UTF-8), so chains hashed before it verify after it and the other way round."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from audit.chain import GENESIS, HASHED_COLUMNS, canonical, canonical_of, document, record_hash, timestamp
from pydantic import AwareDatetime, TypeAdapter

pytestmark = pytest.mark.unit

AWKWARD = [
    "plain",
    "",
    'quote " backslash \\ slash /',
    "tab\tnewline\n\u2028",
    "ünïcødé ✓ 𝄞",
    "\x01\x1f",
    "{}",
]


def record(text: str, request_id: str | None, when: datetime) -> dict[str, object]:
    return {
        "seq": 42,
        "id": uuid.UUID(int=7),
        "occurred_at": when,
        "recorded_at": when + timedelta(microseconds=1),
        "source": text,
        "actor_issuer": text,
        "actor_subject": text,
        "actor_kind": "user",
        "actor_client_id": text,
        "actor_name": text,
        "action": text,
        "resource_type": text,
        "resource_id": text,
        "outcome": "success",
        "request_id": request_id,
        "details": json.dumps({"note": text}, ensure_ascii=False),
        "prev_hash": GENESIS,
    }


@pytest.mark.parametrize("text", AWKWARD)
@pytest.mark.parametrize("request_id", [None, "r-1"])
@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 1, 2, 3, 4, 5, 6, UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_the_fast_bytes_are_the_documented_bytes(text: str, request_id: str | None, when: datetime) -> None:
    fields = record(text, request_id, when)
    reference = json.dumps(
        document(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert canonical(fields) == reference


def test_a_known_record_keeps_its_hash() -> None:
    """Pinned (computed by the serialisation before the fast path): a change here would break every
    chain already stored."""
    fields = record('plain ✓ "q"', None, datetime(2026, 1, 2, 3, 4, 5, 6, UTC))
    assert record_hash(fields) == "53cd51569068ae35d50a2c3f7626e57c8d0061abb27867aebba9d0ad6b6c7e97"


@pytest.mark.parametrize("text", AWKWARD)
@pytest.mark.parametrize("request_id", [None, "r-1"])
def test_the_walks_bytes_are_the_documented_bytes(text: str, request_id: str | None) -> None:
    """The verification walk hashes the values as read, the timestamps written by Postgres as
    :func:`timestamp` writes them (held to it in test_jsonb_text.py): the same bytes."""
    fields = record(text, request_id, datetime(2026, 1, 2, 3, 4, 5, 6, UTC))
    values: list[Any] = [fields[column] for column in HASHED_COLUMNS]
    values[2:4] = [timestamp(values[2]), timestamp(values[3])]
    assert canonical_of(*values) == canonical(fields)


def _reference_timestamp(value: datetime) -> str:
    """:func:`timestamp`'s definition: the instant in UTC, naive, six fraction digits, ``Z``."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def test_timestamps_are_written_as_defined_whatever_the_offset_and_its_time_zone() -> None:
    parsed = TypeAdapter(AwareDatetime)
    instants = [
        datetime(2026, 12, 3, 19, 55, 52, 123456, UTC),
        datetime(2026, 12, 3, 19, 55, 52, tzinfo=UTC),
        datetime(2026, 12, 3, 19, 55, 52, 7, tzinfo=timezone(timedelta(0), "GMT")),
        datetime(2026, 1, 1, 0, 30, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 23, 30, tzinfo=timezone(-timedelta(hours=14))),
        datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone(timedelta(seconds=30))),
        datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone(-timedelta(microseconds=1))),
        datetime(5, 3, 4, 5, 6, 7, 8, UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        *(
            parsed.validate_json(f'"{text}"')  # pydantic's own time zones, as ingestion reads them
            for text in (
                "2026-12-04T03:14:27.123456Z",
                "2026-12-04T03:14:27+00:00",
                "2026-12-04T03:14:27.5-00:00",
                "2026-12-04T03:14:27.123456+01:00",
                "2026-12-04T00:14:27-05:30",
                "9999-12-31T23:59:59.999999Z",
            )
        ),
    ]
    for instant in instants:
        assert timestamp(instant) == _reference_timestamp(instant), instant
