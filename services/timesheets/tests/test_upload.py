"""Batch upload: a machine client stores up to 1,000 rows in one transaction, all or nothing."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import asyncpg
import pytest
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user


def batch_client() -> Identity:
    return Identity(
        "http://localhost:9000/",
        f"batch-{uuid.uuid4().hex[:6]}",
        "client",
        "timesheets-batch",
        frozenset({"batch:upload"}),
        "",
    )


def rows(n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` rows for 7 users, on a date of their own each (a user's day holds at most 24 hours)."""
    return [
        {
            "user": f"{prefix}-{i % 7}",
            "date": (dt.date(2026, 11, 1) - dt.timedelta(days=i)).isoformat(),
            "project": "Bulk",
            "hours": 0.25 * (1 + i % 32),
        }
        for i in range(n)
    ]


async def stored(db: asyncpg.Connection, prefix: str) -> int:
    value: int = await db.fetchval("SELECT count(*) FROM entries WHERE owner_subject LIKE $1", prefix + "-%")
    return value


async def test_thousand_rows_in_one_transaction(api: SignedApi, db: asyncpg.Connection) -> None:
    client, prefix = batch_client(), uuid.uuid4().hex[:8]
    started = time.perf_counter()
    reply = await api.call("POST", "/timesheets/upload", client, json={"entries": rows(1000, prefix)})
    elapsed = time.perf_counter() - started
    assert reply.status == 201, reply.text[:500]
    assert reply.body["count"] == 1000
    assert len(reply.body["items"]) == 1000
    assert elapsed < 5, f"1,000-row upload took {elapsed:.2f}s"
    first = reply.body["items"][0]
    assert first["owner"] == {"issuer": client.issuer, "subject": f"{prefix}-0", "name": None}
    assert first["status"] == "submitted"
    assert await stored(db, prefix) == 1000
    # One audit event for the batch; the entries carry its id.
    event = await db.fetchrow(
        "SELECT payload FROM outbox WHERE payload->>'action' = 'timesheet.uploaded' "
        "AND payload->'resource'->>'id' = $1",
        reply.body["upload_id"],
    )
    assert event is not None
    # The uploaded entries are their users' own entries.
    owner = user(f"{prefix}-0", "read:timesheets")
    listing = await api.call("GET", "/timesheets", owner, params={"limit": "100"})
    assert len(listing.body["items"]) == 100
    assert listing.body["next_cursor"] is not None


async def test_one_bad_row_refuses_the_batch(api: SignedApi, db: asyncpg.Connection) -> None:
    prefix = uuid.uuid4().hex[:8]
    batch = rows(300, prefix)
    batch[17]["hours"] = 25
    batch[250]["date"] = "2026-02-31"
    del batch[251]["project"]
    batch[252]["owner"] = "someone"
    reply = await api.call("POST", "/timesheets/upload", batch_client(), json={"entries": batch})
    assert reply.status == 422
    assert reply.fields() == {
        "entries.17.hours",
        "entries.250.date",
        "entries.251.project",
        "entries.252.owner",
    }
    assert "4 of 300 rows" in reply.body["detail"]
    assert await stored(db, prefix) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"entries": []}, "entries"),
        ({"entries": rows(1001, "too-many")}, "entries"),
        ({"entries": "all"}, "entries"),
        ({}, "entries"),
        ({"entries": [1]}, "entries.0"),
        ({"entries": [{"user": "", "date": "2026-11-01", "project": "P", "hours": 1}]}, "entries.0.user"),
    ],
)
async def test_bad_batches(api: SignedApi, body: dict[str, Any], field: str) -> None:
    reply = await api.call("POST", "/timesheets/upload", batch_client(), json=body)
    assert reply.status == 422
    assert field in reply.fields()


async def test_users_cannot_upload_even_with_the_scope(api: SignedApi) -> None:
    someone = user("mallory", "batch:upload", "create:timesheets")
    reply = await api.call("POST", "/timesheets/upload", someone, json={"entries": rows(1, "m")})
    assert reply.status == 403


async def test_upload_retry_with_key_is_replayed(api: SignedApi, db: asyncpg.Connection) -> None:
    client, prefix = batch_client(), uuid.uuid4().hex[:8]
    key = {"Idempotency-Key": f"nightly-{prefix}"}
    body = {"entries": rows(20, prefix)}
    first = await api.call("POST", "/timesheets/upload", client, json=body, headers=key)
    second = await api.call("POST", "/timesheets/upload", client, json=body, headers=key)
    assert first.status == second.status == 201
    assert second.body["upload_id"] == first.body["upload_id"]
    assert await stored(db, prefix) == 20
