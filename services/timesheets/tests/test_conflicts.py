"""A write Postgres rolls back for a conflict (SQLSTATE 40001 serialization_failure, 40P01
deadlock_detected) is run again by the service, and answered 503 ``database_conflict`` only when it
keeps conflicting — never an entry stored twice, never an Idempotency-Key left claimed by a write
that was rolled back.

The routes take their locks in one order (``test_day_cap.py::test_concurrent_uploads_cannot_both_
pass``: crossed uploads, no deadlock), so no real concurrency makes them conflict; the conflicts here
are raised by the real server from a trigger on ``entries`` (for one project of the test's own), the
first ``times`` inserts only (a sequence counts them: it is not rolled back with them). The kit's
tests (services/kit/tests/test_database_conflicts.py) provoke real deadlocks and write skews."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from svckit.db import CONFLICT_ATTEMPTS, transaction_conflicts, transaction_retries

from testkit.client import SignedApi
from testkit.fixtures import user

from .test_upload import batch_client

WHO = user(f"conflict-{uuid.uuid4().hex[:6]}", "read:timesheets", "create:timesheets", "delete:timesheets")


def _counts(reason: str) -> tuple[float, float]:
    return transaction_conflicts.labels(reason)._value.get(), transaction_retries.labels(reason)._value.get()


@asynccontextmanager
async def conflicting(
    db: asyncpg.Connection, times: int, errcode: str, on: str = "INSERT", name: str = ""
) -> AsyncIterator[str]:
    """A project whose first ``times`` inserts into ``entries`` (``on="UPDATE"``: updates of its
    entries) the server rolls back with ``errcode``; its name (``name``, or a fresh one) is yielded."""
    name = name or f"conflict_{uuid.uuid4().hex[:8]}"
    await db.execute(
        f"""CREATE SEQUENCE {name}_n;
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
          SET search_path = timesheets, pg_temp AS $$
        BEGIN
          IF nextval('{name}_n') <= {times} THEN
            RAISE EXCEPTION 'conflict raised by the test' USING ERRCODE = '{errcode}';
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER {name} BEFORE {on} ON entries
          FOR EACH ROW WHEN (NEW.project = '{name}') EXECUTE FUNCTION {name}();"""
    )
    try:
        yield name
    finally:
        await db.execute(f"DROP TRIGGER {name} ON entries; DROP FUNCTION {name}(); DROP SEQUENCE {name}_n")


async def _stored(db: asyncpg.Connection, project: str) -> int:
    value: int = await db.fetchval("SELECT count(*) FROM entries WHERE project = $1", project)
    return value


def _entry(project: str) -> dict[str, Any]:
    return {"date": "2026-10-05", "project": project, "hours": 1}


@pytest.mark.parametrize("keyed", [False, True], ids=["write_once", "with_key"])
async def test_a_create_rolled_back_by_a_deadlock_is_run_again(
    api: SignedApi, db: asyncpg.Connection, keyed: bool
) -> None:
    conflicts, retries = _counts("deadlock")
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"} if keyed else None
    async with conflicting(db, 2, "deadlock_detected") as project:
        reply = await api.call("POST", "/timesheets", WHO, json=_entry(project), headers=headers)
        assert reply.status == 201, reply.text
        assert await _stored(db, project) == 1
        assert _counts("deadlock") == (conflicts + 2, retries + 2)
        if keyed:
            again = await api.call("POST", "/timesheets", WHO, json=_entry(project), headers=headers)
            assert again.status == 201, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.body == reply.body
            assert await _stored(db, project) == 1


async def test_a_delete_rolled_back_by_a_deadlock_is_run_again(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    """A deletion (a locked read, then the update with its audit event: a transaction of several
    statements) rolled back by a deadlock is run again: 204, the entry gone, its one deletion event
    queued. Before it ran on ``Database.transaction`` and answered 503 ``database_conflict`` at the
    first deadlock."""
    conflicts, retries = _counts("deadlock")
    project = f"conflict_{uuid.uuid4().hex[:8]}"
    created = await api.call("POST", "/timesheets", WHO, json=_entry(project))
    assert created.status == 201, created.text
    entry_id = uuid.UUID(created.body["id"])
    async with conflicting(db, 2, "deadlock_detected", on="UPDATE", name=project):
        reply = await api.call("DELETE", f"/timesheets/{entry_id}", WHO)
        assert reply.status == 204, reply.text
    assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM entries WHERE id = $1", entry_id)
    actions = await db.fetch(
        """SELECT payload->>'action' AS action FROM outbox
           WHERE payload->'resource'->>'id' = $1 ORDER BY position""",
        str(entry_id),
    )
    assert [row["action"] for row in actions] == ["timesheet.created", "timesheet.deleted"]
    assert _counts("deadlock") == (conflicts + 2, retries + 2)
    gone = await api.call("GET", f"/timesheets/{entry_id}", WHO)
    assert gone.status == 404, gone.text


async def test_an_upload_rolled_back_by_a_serialization_failure_is_run_again(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    client = batch_client()
    conflicts, retries = _counts("serialization")
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    async with conflicting(db, 1, "serialization_failure") as project:
        body = {"entries": [{**_entry(project), "user": f"up-{uuid.uuid4().hex[:6]}"} for _ in range(2)]}
        reply = await api.call("POST", "/timesheets/upload", client, json=body, headers=headers)
        assert reply.status == 201, reply.text
        assert reply.body["count"] == 2
        assert await _stored(db, project) == 2
        assert _counts("serialization") == (conflicts + 1, retries + 1)
        again = await api.call("POST", "/timesheets/upload", client, json=body, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.body == reply.body
        assert await _stored(db, project) == 2


async def test_a_write_that_keeps_conflicting_is_a_503_that_says_so_and_keeps_no_claim(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    client = batch_client()
    conflicts, retries = _counts("serialization")
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    async with conflicting(db, 1_000_000, "serialization_failure") as project:
        upload = {"entries": [{**_entry(project), "user": f"up-{uuid.uuid4().hex[:6]}"}]}
        for path, who, body, keyed in (
            ("/timesheets", WHO, _entry(project), None),  # write_once
            ("/timesheets", WHO, _entry(project), {"Idempotency-Key": f"k-{uuid.uuid4()}"}),
            ("/timesheets/upload", client, upload, headers),
        ):
            reply = await api.call("POST", path, who, json=body, headers=keyed)
            assert reply.status == 503, reply.text
            assert reply.headers["content-type"] == "application/problem+json"
            assert reply.headers["retry-after"]
            assert reply.body["reason"] == "database_conflict", reply.body
        assert await _stored(db, project) == 0
        assert _counts("serialization") == (
            conflicts + 3 * CONFLICT_ATTEMPTS,
            retries + 3 * (CONFLICT_ATTEMPTS - 1),
        )
    # the conflicts over: the same key stores the upload (its claim was rolled back with the 503's write)
    reply = await api.call("POST", "/timesheets/upload", client, json=upload, headers=headers)
    assert reply.status == 201, reply.text
    assert "idempotent-replayed" not in reply.headers


async def test_concurrent_creates_and_uploads_on_shared_days_never_conflict(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    """The honest check that the routes need no retry today: many uploads touching the same people's
    days in shuffled orders, and creates on those days, at once (with and without Idempotency-Keys).
    Their day locks are taken in bucket order (migration 0005), so the server rolls none of them back:
    every answer a 201 or a 422 (a day full), no conflict counted. Fails if a change takes the locks
    in another order (the retries would hide most deadlocks from the answers, not from the counter):
    ``lock_days`` made to lock in the rows' order, 16 such uploads had 14-22 deadlocks, 1-5 of them
    answered 503 ``database_conflict`` after 3 attempts."""
    client = batch_client()
    people = [f"race-{uuid.uuid4().hex[:6]}" for _ in range(4)]
    days = ["2026-09-01", "2026-09-02"]
    before = [_counts(reason) for reason in ("serialization", "deadlock")]

    def upload() -> dict[str, Any]:
        cells = random.sample([(p, d) for p in people for d in days], random.randint(2, 5))
        return {"entries": [{"user": p, "date": d, "project": "Race", "hours": 3} for p, d in cells]}

    calls = []
    for n in range(48):
        headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"} if n % 2 else None
        if n % 3:
            calls.append(api.call("POST", "/timesheets/upload", client, json=upload(), headers=headers))
        else:
            body = {"date": random.choice(days), "project": "Race", "hours": 3}
            calls.append(api.call("POST", "/timesheets", WHO, json=body, headers=headers))
    replies = await asyncio.gather(*calls)
    assert {reply.status for reply in replies} <= {201, 422}, [r.text for r in replies if r.status >= 500]
    assert [_counts(reason) for reason in ("serialization", "deadlock")] == before
    for person in people:
        for day in days:
            total = await db.fetchval(
                "SELECT coalesce(sum(hours), 0) FROM entries WHERE owner_subject = $1 AND date = $2",
                person,
                dt.date.fromisoformat(day),
            )
            assert total <= 24
