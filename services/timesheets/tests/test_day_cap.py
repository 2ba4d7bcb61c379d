"""A person's day holds at most 24 hours: the sum of their entries on one date, checked in the
database under a row lock on the (owner, date)'s bucket, so concurrent creates and uploads cannot pass
it together."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from svckit.contracts.timesheets import DAY_HOURS_LIMIT
from svckit.identity import Identity
from timesheets import daycap

from testkit.client import Reply, SignedApi
from testkit.fixtures import user

from .test_upload import batch_client

ALL = ("read:timesheets", "create:timesheets", "delete:timesheets")
DAY = "2026-11-24"


def person() -> Identity:
    return user(f"cap-{uuid.uuid4().hex[:8]}", *ALL)


def entry(hours: float, date: str = DAY) -> dict[str, Any]:
    return {"date": date, "project": "Cap", "hours": hours}


async def create(api: SignedApi, who: Identity, hours: float, date: str = DAY, **kw: Any) -> Reply:
    return await api.call("POST", "/timesheets", who, json=entry(hours, date), **kw)


async def day_total(db: asyncpg.Connection, who: Identity, date: str = DAY) -> float:
    value = await db.fetchval(
        "SELECT coalesce(sum(hours), 0) FROM entries WHERE owner_issuer = $1 AND owner_subject = $2"
        " AND date = $3 AND deleted_at IS NULL",
        who.issuer,
        who.subject,
        dt.date.fromisoformat(date),
    )
    return float(value)


def assert_over_cap(reply: Reply, recorded: str, field: str = "hours") -> None:
    assert reply.status == 422, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.fields() == {field}
    assert f"{DAY}" in reply.body["detail"]
    assert f"{recorded} hours are already recorded" in reply.body["detail"]
    assert "at most 24 hours" in reply.body["detail"]
    error = next(e for e in reply.body["errors"] if e["field"] == field)
    assert error["type"] == "day_hours_exceeded"
    assert DAY in error["message"]


async def test_four_full_days_in_one_day_are_refused(api: SignedApi, db: asyncpg.Connection) -> None:
    """The reviewer's reproduction: four 24-hour entries for the same person on the same day."""
    alice = person()
    first = await create(api, alice, 24)
    assert first.status == 201, first.text
    for _ in range(3):
        assert_over_cap(await create(api, alice, 24), "24")
    assert await day_total(db, alice) == 24


async def test_the_day_fills_up_to_exactly_24_hours(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = person()
    for hours in (8, 8, 7.75):
        assert (await create(api, alice, hours)).status == 201
    refused = await create(api, alice, 0.5)
    assert_over_cap(refused, "23.75")
    assert "at most 0.25 more" in refused.body["detail"]
    assert (await create(api, alice, 0.25)).status == 201
    assert await day_total(db, alice) == 24
    # Other days, other people: their own 24 hours.
    assert (await create(api, alice, 24, "2026-11-25")).status == 201
    assert (await create(api, person(), 24)).status == 201


async def test_deleted_entries_free_their_hours_rejected_ones_do_not(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    alice = person()
    made = await create(api, alice, 20)
    assert (await api.call("DELETE", f"/timesheets/{made.body['id']}", alice)).status == 204
    kept = await create(api, alice, 20)
    assert kept.status == 201, kept.text
    # A rejected entry stays on the person's record (listed, until they delete it): it still counts.
    await db.execute(
        "UPDATE entries SET status = 'rejected', decision_id = $2, decided_by_issuer = 'i',"
        " decided_by_subject = 'boss', decided_at = now() WHERE id = $1",
        uuid.UUID(kept.body["id"]),
        uuid.uuid4(),
    )
    assert_over_cap(await create(api, alice, 8), "20")


async def test_with_an_idempotency_key_too(api: SignedApi, db: asyncpg.Connection) -> None:
    alice = person()
    assert (await create(api, alice, 20)).status == 201
    key = {"Idempotency-Key": f"cap-{uuid.uuid4()}"}
    assert_over_cap(await create(api, alice, 8, headers=key), "20")
    # The refusal is not kept for the key: once there is room, the same request succeeds.
    await db.execute("UPDATE entries SET deleted_at = now() WHERE owner_subject = $1", alice.subject)
    again = await create(api, alice, 8, headers=key)
    assert again.status == 201, again.text
    assert await day_total(db, alice) == 8


async def test_concurrent_creates_cannot_both_pass(api: SignedApi, db: asyncpg.Connection) -> None:
    """Two creates of 20 hours on one day at the same time: exactly one is stored."""
    for _ in range(5):
        alice = person()
        replies = await asyncio.gather(create(api, alice, 20), create(api, alice, 20))
        assert sorted(reply.status for reply in replies) == [201, 422], [r.text for r in replies]
        assert await day_total(db, alice) == 20


async def test_a_create_waits_for_an_uncommitted_one_of_the_same_day(
    api: SignedApi, timesheets_database: str, db: asyncpg.Connection
) -> None:
    """The check is made under a lock held until the other writer's transaction ends, and then sees
    what it committed: not a read of the day before the other's commit (a race in Python would let
    both through)."""
    alice = person()
    other = await asyncpg.connect(timesheets_database, server_settings={"search_path": "timesheets"})
    try:
        async with other.transaction():
            await other.execute(
                "SELECT day_hours_locked($1, $2, $3)", alice.issuer, alice.subject, dt.date.fromisoformat(DAY)
            )
            await other.execute(
                "INSERT INTO entries (id, owner_issuer, owner_subject, date, project, hours, source)"
                " VALUES ($1, $2, $3, $4, 'Other', 20, 'api')",
                uuid.uuid4(),
                alice.issuer,
                alice.subject,
                dt.date.fromisoformat(DAY),
            )
            racing = asyncio.ensure_future(create(api, alice, 20))
            await asyncio.sleep(0.5)
            assert not racing.done(), racing.result().text
        assert_over_cap(await racing, "20")
    finally:
        await other.close()
    assert await day_total(db, alice) == 20


async def test_days_already_over_the_cap_are_read_and_deleted_as_before(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    """Data from before the cap (an upgrade) stays readable and deletable; only new writes are checked."""
    alice = person()
    ids = [uuid.uuid4() for _ in range(4)]
    await db.executemany(
        "INSERT INTO entries (id, owner_issuer, owner_subject, date, project, hours, source)"
        " VALUES ($1, $2, $3, $4, 'Old', 24, 'api')",
        [(entry_id, alice.issuer, alice.subject, dt.date.fromisoformat(DAY)) for entry_id in ids],
    )
    listing = await api.call("GET", "/timesheets", alice)
    assert listing.status == 200
    assert len(listing.body["items"]) == 4
    assert (await api.call("GET", f"/timesheets/{ids[0]}", alice)).status == 200
    assert (await api.call("DELETE", f"/timesheets/{ids[0]}", alice)).status == 204
    refused = await create(api, alice, 0.25)
    assert_over_cap(refused, "72")
    assert "no more" in refused.body["detail"]


# ---- batch upload ------------------------------------------------------------------------------


def row(subject: str, hours: float, date: str = DAY) -> dict[str, Any]:
    return {"user": subject, "date": date, "project": "Bulk", "hours": hours}


async def stored(db: asyncpg.Connection, subject: str) -> int:
    value: int = await db.fetchval("SELECT count(*) FROM entries WHERE owner_subject = $1", subject)
    return value


async def test_upload_rows_over_the_cap_refuse_the_batch(api: SignedApi, db: asyncpg.Connection) -> None:
    client = batch_client()
    alice, bob, carol = (f"up-{uuid.uuid4().hex[:8]}" for _ in range(3))
    # Alice has 20 hours recorded already (through the API: owner issuer is the client's, as uploads).
    await db.execute(
        "INSERT INTO entries (id, owner_issuer, owner_subject, date, project, hours, source)"
        " VALUES ($1, $2, $3, $4, 'Before', 20, 'api')",
        uuid.uuid4(),
        client.issuer,
        alice,
        dt.date.fromisoformat(DAY),
    )
    batch = [
        row(alice, 4),  # 0: fits (20 + 4)
        row(bob, 16),  # 1: fits
        row(alice, 1),  # 2: 25: over
        row(bob, 8),  # 3: 24: fits
        row(bob, 0.25),  # 4: over, within the batch alone
        row(carol, 24, "2026-11-25"),  # 5: another day
        row(carol, 24),  # 6: fits
    ]
    reply = await api.call("POST", "/timesheets/upload", client, json={"entries": batch})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"entries.2.hours", "entries.4.hours"}
    errors = {e["field"]: e for e in reply.body["errors"]}
    assert errors["entries.2.hours"]["type"] == "day_hours_exceeded"
    assert errors["entries.2.hours"]["loc"] == ["entries", 2, "hours"]
    assert "20 already recorded" in errors["entries.2.hours"]["message"]
    assert "4 in rows before it" in errors["entries.2.hours"]["message"]
    assert "0 already recorded, 24 in rows before it" in errors["entries.4.hours"]["message"]
    assert "2 of 7 rows" in reply.body["detail"]
    assert [await stored(db, s) for s in (alice, bob, carol)] == [1, 0, 0]
    # Without the rows over it, the batch goes in.
    fine = [r for i, r in enumerate(batch) if i not in (2, 4)]
    reply = await api.call("POST", "/timesheets/upload", client, json={"entries": fine})
    assert reply.status == 201, reply.text
    assert [await stored(db, s) for s in (alice, bob, carol)] == [2, 2, 2]


async def test_an_upload_waits_for_an_uncommitted_create_of_the_same_day(
    api: SignedApi, timesheets_database: str, db: asyncpg.Connection
) -> None:
    client = batch_client()
    alice = f"up-{uuid.uuid4().hex[:8]}"
    other = await asyncpg.connect(timesheets_database, server_settings={"search_path": "timesheets"})
    try:
        async with other.transaction():
            await other.execute(
                "SELECT day_hours_locked($1, $2, $3)", client.issuer, alice, dt.date.fromisoformat(DAY)
            )
            await other.execute(
                "INSERT INTO entries (id, owner_issuer, owner_subject, date, project, hours, source)"
                " VALUES ($1, $2, $3, $4, 'Other', 20, 'api')",
                uuid.uuid4(),
                client.issuer,
                alice,
                dt.date.fromisoformat(DAY),
            )
            racing = asyncio.ensure_future(
                api.call("POST", "/timesheets/upload", client, json={"entries": [row(alice, 8)]})
            )
            await asyncio.sleep(0.5)
            assert not racing.done(), racing.result().text
        reply = await racing
    finally:
        await other.close()
    assert reply.status == 422, reply.text
    assert reply.fields() == {"entries.0.hours"}
    assert await stored(db, alice) == 1


async def test_concurrent_uploads_cannot_both_pass(api: SignedApi, db: asyncpg.Connection) -> None:
    client = batch_client()
    alice, bob = (f"up-{uuid.uuid4().hex[:8]}" for _ in range(2))
    # Both batches touch both people, in opposite orders: locks taken in one order, no deadlock.
    one = {"entries": [row(alice, 20), row(bob, 20)]}
    two = {"entries": [row(bob, 20), row(alice, 20)]}
    replies = await asyncio.gather(
        api.call("POST", "/timesheets/upload", client, json=one),
        api.call("POST", "/timesheets/upload", client, json=two),
    )
    assert sorted(reply.status for reply in replies) == [201, 422], [r.text for r in replies]
    assert [await stored(db, s) for s in (alice, bob)] == [1, 1]


async def test_an_uploads_day_locks_take_no_room_in_the_servers_lock_table(db: asyncpg.Connection) -> None:
    """A 1,000-row upload on 1,000 distinct days: its day locks are rows of 128 buckets, not an
    advisory lock per day (those live in the server's shared lock table, 4 to 8 thousand entries: a few
    such uploads at once made every session of every service fail with "out of shared memory")."""
    from timesheets import store

    days = sorted(
        (f"many-{uuid.uuid4().hex[:6]}-{i % 10}", dt.date(2001, 1, 1) + dt.timedelta(days=i))
        for i in range(1000)
    )
    async with db.transaction():
        totals = await store.day_totals(db, "http://localhost:9000/", days)  # type: ignore[arg-type]  # a plain connection, as the pool hands out
        held = await db.fetchval("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()")
        assert held < 50, held  # the transaction's own, the relation locks: no lock per day
        buckets = await db.fetchval(
            "SELECT count(DISTINCT day_bucket($1, k.s, k.d)) FROM unnest($2::text[], $3::date[]) AS k(s, d)",
            "http://localhost:9000/",
            [subject for subject, _ in days],
            [date for _, date in days],
        )
    assert set(totals.values()) == {0}
    # at most 128 rows however many days; 1,000 random days miss one of the 128 buckets about one run
    # in twenty ((127/128)^1000 per bucket), so "every bucket" was a flake: at least 120 says spread
    assert 120 <= buckets <= 128, buckets


# ---- one number, counted refusals --------------------------------------------------------------


def refusals(source: str) -> float:
    labels = {"reason": "day_hours_exceeded", "source": source}
    return REGISTRY.get_sample_value("timesheets_refusals_total", labels) or 0.0


async def test_day_limit_refusals_are_counted_by_reason_and_source(api: SignedApi) -> None:
    """Operators see how often the cap refuses work (a client that keeps sending days past it, a
    payroll import with a unit error) without reading logs: one count per refused request."""
    alice = person()
    assert (await create(api, alice, 24)).status == 201
    api_before, upload_before = refusals("api"), refusals("upload")
    assert_over_cap(await create(api, alice, 1), "24")
    assert (refusals("api"), refusals("upload")) == (api_before + 1, upload_before)
    client = batch_client()
    subject = f"up-{uuid.uuid4().hex[:8]}"
    over = {"entries": [row(subject, 20), row(subject, 8), row(subject, 8)]}  # two rows over: one request
    reply = await api.call("POST", "/timesheets/upload", client, json=over)
    assert reply.status == 422, reply.text
    assert (refusals("api"), refusals("upload")) == (api_before + 1, upload_before + 1)


async def test_the_contracts_number_is_the_only_one_the_service_enforces(
    api: SignedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is written once (``svckit.contracts.timesheets.DAY_HOURS_LIMIT``, what the API
    documents): the database's check on a create takes it from the service rather than holding a
    copy of its own, so a change of the number cannot leave the two paths (a create checked in
    SQL, an upload in Python) enforcing different days."""
    monkeypatch.setattr(daycap, "LIMIT", Decimal(8))
    alice = person()
    assert (await create(api, alice, 8)).status == 201
    refused = await create(api, alice, 0.25)
    assert refused.status == 422, refused.text
    assert "at most 8 hours" in refused.body["detail"]
    upload = {"entries": [row(person().subject, 8.25)]}
    reply = await api.call("POST", "/timesheets/upload", batch_client(), json=upload)
    assert reply.status == 422, reply.text
    assert "past 8 hours" in reply.body["detail"]


async def test_the_first_releases_day_check_still_agrees_with_the_contract(db: asyncpg.Connection) -> None:
    """Migration 0005's ``admit_day_hours(text, text, date, numeric)`` held the number itself; no
    code calls it since 0006 (the limit is an argument now), but while it stays in the schema it must
    not disagree with the contract."""
    who, day = f"legacy-{uuid.uuid4().hex[:8]}", dt.date.fromisoformat(DAY)
    legacy = "SELECT admit_day_hours('i', $1, $2, $3::numeric)"
    async with db.transaction():
        assert await db.fetchval(legacy, who, day, DAY_HOURS_LIMIT) == DAY_HOURS_LIMIT
        with pytest.raises(asyncpg.CheckViolationError):
            await db.fetchval(legacy, who, day, Decimal(DAY_HOURS_LIMIT) + Decimal("0.25"))
