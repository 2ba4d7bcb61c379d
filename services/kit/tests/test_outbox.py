"""The outbox and its relay against real Postgres and a real HTTP receiver on loopback.

The receiver is a small service built with the kit's own app factory, so it verifies the signed
service identity exactly as the audit service does, and it can be told to refuse or to be absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.context import request_id_var
from svckit.db import Database
from svckit.http import HttpClient, SignedClient
from svckit.identity import Identity, IdentitySigner, IdentityVerifier
from svckit.migrations import migrate
from svckit.outbox import (
    AuditEvent,
    OutboxRelay,
    backoff_delay,
    enqueue,
)
from svckit.settings import ServiceSettings, load_settings

from testkit.clock import FakeClock
from testkit.fixtures import free_port, serve_app, user

ALICE = user("alice", "create:timesheets", name="Alice")


@dataclass
class Receiver:
    """What the fake-free receiver saw, and how it should answer."""

    received: list[str] = field(default_factory=list)
    callers: set[tuple[str, str]] = field(default_factory=set)
    status: int = 200
    refuse_poison: bool = False

    def counts(self) -> Counter[str]:
        return Counter(self.received)


#: The receiver's pair key with each writer: a writer's key may assert only that writer (the kit's
#: principal binding), and test writers have names of their own (their metrics stay apart).
_PAIR_SECRET = secrets.token_bytes(32)


def writer_keys(writer: str) -> dict[str, bytes]:
    return {f"{writer}-1": hashlib.sha256(_PAIR_SECRET + writer.encode()).digest()}


def receiver_app(state: Receiver, writer: str) -> Starlette:
    async def ingest(request: Request) -> Response:
        identity: Identity = request.state.identity
        if identity.kind != "service":
            return JSONResponse({"title": "service principals only"}, status_code=403)
        body = await request.json()
        events = body["events"]
        if state.status != 200:
            return JSONResponse({"title": "unavailable"}, status_code=state.status)
        if state.refuse_poison and any(e["details"].get("poison") for e in events):
            return JSONResponse({"title": "bad event"}, status_code=422)
        state.callers.add((identity.kind, identity.subject))
        fresh = [e["id"] for e in events if e["id"] not in state.received]
        state.received.extend(e["id"] for e in events)
        return JSONResponse({"accepted": len(fresh), "duplicates": len(events) - len(fresh)})

    settings = load_settings(ServiceSettings)
    verifier = IdentityVerifier({writer: writer_keys(writer)}, settings.identity_max_skew_seconds)
    return create_service_app(
        settings, [Route("/internal/events", ingest, methods=["POST"])], verifier=verifier
    )


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    name = f"outbox_{secrets.token_hex(4)}"
    await migrate(database_url, name, None, kit=["outbox"])  # the kit's one definition of the table
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def database(database_url: str, schema: str) -> AsyncIterator[Database]:
    db = Database(database_url, schema=schema, application_name="outbox-test")
    await db.wait_connected(10)
    yield db
    await db.close()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(total_timeout=5)
    yield client
    await client.close()


def signed(http: HttpClient, url: str, writer: str) -> SignedClient:
    return SignedClient(http, url, IdentitySigner(writer_keys(writer)))


def event(source: str = "writer", **details: Any) -> AuditEvent:
    return AuditEvent.create(
        action="timesheet.created",
        resource_type="timesheet",
        resource_id=str(uuid.uuid4()),
        outcome="success",
        actor=ALICE,
        source=source,
        details=details,
    )


async def enqueue_committed(database: Database, events: list[AuditEvent]) -> None:
    async with database.transaction() as conn:
        for item in events:
            await enqueue(conn, item)


async def enqueue_then_fail(database: Database, item: AuditEvent) -> None:
    """A change whose transaction fails after the event was enqueued."""
    async with database.transaction() as conn:
        await enqueue(conn, item)
        raise RuntimeError("rolled back")


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> float:
    """Wait until ``check`` holds; return how long it took."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def outbox_rows(database: Database, schema: str) -> list[asyncpg.Record]:
    async with database.connection() as conn:
        return list(await conn.fetch(f"SELECT * FROM {schema}.outbox ORDER BY position"))


def metric(name: str, service: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": service}) or 0.0


# ---- AuditEvent ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_event_carries_the_wire_shape_and_the_current_request_id() -> None:
    token = request_id_var.set("req-0123456789")
    try:
        item = AuditEvent.create(
            action="approval.decided",
            resource_type="timesheet",
            resource_id="42",
            outcome="success",
            actor=ALICE,
            source="approvals",
            details={"decision": "approved"},
        )
    finally:
        request_id_var.reset(token)
    wire = item.to_json()
    assert wire["request_id"] == "req-0123456789"
    assert wire["actor"] == {
        "issuer": ALICE.issuer,
        "subject": "alice",
        "kind": "user",
        "client_id": "timesheets-spa",
        "name": "Alice",
    }
    assert wire["resource"] == {"type": "timesheet", "id": "42"}
    assert wire["source"] == "approvals"
    assert wire["outcome"] == "success"
    assert uuid.UUID(wire["id"]) == item.id
    assert datetime.fromisoformat(wire["occurred_at"]).tzinfo is not None


@pytest.mark.unit
def test_event_refuses_unknown_outcome_and_naive_time() -> None:
    with pytest.raises(ValueError, match="outcome"):
        AuditEvent.create(
            action="x", resource_type="t", resource_id="1", outcome="ok", actor=ALICE, source="s"
        )
    with pytest.raises(ValueError, match="timezone"):
        AuditEvent.create(
            action="x",
            resource_type="t",
            resource_id="1",
            outcome="success",
            actor=ALICE,
            source="s",
            occurred_at=datetime(2026, 1, 1),  # naive on purpose
        )


@pytest.mark.unit
def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(attempt, 0.5, 8.0) for attempt in range(1, 40)]
    assert all(0 < d <= 8.0 for d in delays)
    assert 0.25 <= backoff_delay(1, 0.5, 8.0) <= 0.5
    assert len({round(backoff_delay(10, 0.5, 8.0), 6) for _ in range(20)}) > 1


# ---- enqueue ---------------------------------------------------------------------------------------


async def test_enqueue_refuses_to_run_outside_a_transaction(database: Database) -> None:
    async with database.connection() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await enqueue(conn, event())


async def test_rolled_back_change_leaves_no_event(database: Database, schema: str) -> None:
    with pytest.raises(RuntimeError, match="rolled back"):
        await enqueue_then_fail(database, event())
    assert await outbox_rows(database, schema) == []


async def test_recording_the_same_events_again_adds_nothing(
    database: Database, schema: str, http: HttpClient
) -> None:
    """``OutboxRelay.record`` written again with the same events — the denial sink's retry after a
    ``COMMIT`` whose answer was lost — adds nothing and raises nothing (it failed on the duplicate id,
    and kept failing on every retry until the first copy was relayed)."""
    relay = OutboxRelay(database, schema, "writer", signed(http, "http://127.0.0.1:9", "writer"))
    items = [event(), event()]
    await relay.record(items)
    await relay.record([items[1], event()])
    assert len(await outbox_rows(database, schema)) == 3


async def test_the_same_event_recorded_at_once_is_one_row(
    database: Database, schema: str, http: HttpClient
) -> None:
    """Writers of the same event at the same moment (the approvals service refusing one request twice:
    the gateway's retry overtaking the first): the second waits for the first's row and adds none; both
    succeed."""
    relay = OutboxRelay(database, schema, "writer", signed(http, "http://127.0.0.1:9", "writer"))
    item = event()
    await asyncio.gather(*(relay.record([item]) for _ in range(4)))
    assert [row["id"] for row in await outbox_rows(database, schema)] == [item.id]


# ---- relay -----------------------------------------------------------------------------------------


async def test_committed_events_arrive_promptly_through_notify(
    database: Database, schema: str, http: HttpClient
) -> None:
    state = Receiver()
    async with serve_app(receiver_app(state, "writer")) as url:
        # Polling is slowed to a minute, so only LISTEN/NOTIFY can explain a prompt delivery.
        relay = OutboxRelay(database, schema, "writer", signed(http, url, "writer"), poll_interval=60)
        relay.start()
        try:
            await asyncio.sleep(0.3)  # let the relay connect and LISTEN
            lost = event()
            with pytest.raises(RuntimeError, match="rolled back"):
                await enqueue_then_fail(database, lost)
            sent = [event() for _ in range(3)]
            await enqueue_committed(database, sent)
            took = await eventually(lambda: len(state.received) >= 3, timeout=5)
        finally:
            await relay.stop()
    assert took < 2.0, f"delivery took {took:.2f}s"
    assert state.received == [str(e.id) for e in sent]
    assert str(lost.id) not in state.received
    assert state.callers == {("service", "writer")}
    assert await outbox_rows(database, schema) == []


async def test_events_wait_while_the_receiver_is_down_and_arrive_once(
    database: Database, schema: str, http: HttpClient
) -> None:
    port = free_port()  # nothing listens here yet: connections are refused
    service = f"writer-{schema[-8:]}"
    relay = OutboxRelay(
        database,
        schema,
        service,
        signed(http, f"http://127.0.0.1:{port}", service),
        batch_size=5,  # several batches fail in turn; they must still arrive in order
        poll_interval=0.2,
        base_backoff=0.05,
        max_backoff=0.3,
        metrics_interval=0.0,
    )
    sent = [event(service, n=n) for n in range(25)]
    await enqueue_committed(database, sent)
    relay.start()
    try:
        await eventually(lambda: metric("outbox_delivery_failures_total", service) >= 6)
        rows = await outbox_rows(database, schema)
        assert len(rows) == 25
        # The relay keeps retrying the head of the queue (no skipping ahead, which would reorder).
        assert all(row["attempts"] >= 1 and "unreachable" in row["last_error"] for row in rows[:5])
        assert all(row["attempts"] == 0 for row in rows[5:])
        await relay.update_metrics()
        assert metric("outbox_pending_events", service) == 25
        assert metric("outbox_oldest_event_age_seconds", service) > 0

        state = Receiver()
        async with serve_app(receiver_app(state, service), port=port):
            await eventually(lambda: len(state.received) >= 25, timeout=10)
            await asyncio.sleep(0.3)  # a duplicate, if any, would show up now
    finally:
        await relay.stop()
    assert state.counts() == Counter(str(e.id) for e in sent)  # every event, exactly once
    assert state.received == [str(e.id) for e in sent]  # in commit order
    assert metric("outbox_delivered_total", service) == 25
    await relay.update_metrics()
    assert metric("outbox_pending_events", service) == 0
    assert metric("outbox_oldest_event_age_seconds", service) == 0


async def test_commits_during_an_outage_do_not_cut_the_backoff_short(
    database: Database, schema: str, http: HttpClient
) -> None:
    """Every commit NOTIFYs the relay; while the audit service is down that must not mean a retry."""
    service = f"writer-{schema[-8:]}"
    clock = FakeClock()  # the relay's pauses: time passes only when the test says so
    relay = OutboxRelay(
        database,
        schema,
        service,
        signed(http, f"http://127.0.0.1:{free_port()}", service),
        poll_interval=60,
        base_backoff=1.0,
        max_backoff=1.0,
        clock=clock,
    )
    await enqueue_committed(database, [event(service)])
    relay.start()
    try:
        await eventually(backing_off(relay, clock, 1))
        before = metric("outbox_delivery_failures_total", service)
        for _ in range(20):
            await enqueue_committed(database, [event(service)])
        await asyncio.sleep(0.3)  # real time for the NOTIFYs to arrive; the clock stands still
        assert metric("outbox_delivery_failures_total", service) == before  # no NOTIFY cut it short
        clock.advance(1.0)  # the back-off (0.5-1 s) is over: exactly one more try
        await eventually(backing_off(relay, clock, 2))
        assert metric("outbox_delivery_failures_total", service) == before + 1
    finally:
        await relay.stop()
    assert len(await outbox_rows(database, schema)) == 21


async def test_the_backlog_gauges_appear_as_soon_as_the_database_does(
    database_url: str, schema: str, http: HttpClient
) -> None:
    """A service starting before its database: the first pass that reaches it fills the gauges (not
    one metrics interval later — alerts and dashboards would see a gap, a scrape no series)."""
    service = f"writer-{schema[-8:]}"
    clock = FakeClock()
    database = Database(database_url, schema=schema, application_name="outbox-test")  # not started
    relay = OutboxRelay(
        database,
        schema,
        service,
        signed(http, f"http://127.0.0.1:{free_port()}", service),
        base_backoff=1.0,
        max_backoff=1.0,
        metrics_interval=3600,
        clock=clock,
    )
    relay.start()
    try:
        await eventually(backing_off(relay, clock, 1))  # the first pass failed
        assert relay.task.failures == 1
        assert REGISTRY.get_sample_value("outbox_pending_events", {"service": service}) is None
        await database.wait_connected(10)
        clock.advance(1.0)
        await eventually(
            lambda: REGISTRY.get_sample_value("outbox_pending_events", {"service": service}) == 0
        )
        assert relay.task.failures == 0
    finally:
        await relay.stop()
        await database.close()


def backing_off(relay: OutboxRelay, clock: FakeClock, failures: int) -> Callable[[], bool]:
    """The relay's own delivery task has failed ``failures`` times running and waits out its back-off
    on ``clock``: the attempt recorded on the rows (the pass returned), the pause begun. Not "someone
    sleeps on the clock": the relay's receipt-check task sleeps its interval there from the start, so
    a test that advanced the clock on that moved it before the back-off began (the pause then started
    later and the advance meant to end it fell short) whenever recording the attempt took longer than
    the test's poll — under load."""
    return lambda: relay.task.failures == failures and clock.sleeping(at_most=relay.max_backoff) == 1


async def slow_failure_records(database: Database, schema: str, seconds: float) -> None:
    """Make recording a failed attempt on the outbox's rows take ``seconds`` (a loaded database)."""
    async with database.connection() as conn:
        await conn.execute(
            f"""CREATE FUNCTION {schema}.slowly() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
                CREATE TRIGGER slowly BEFORE UPDATE ON {schema}.outbox
                FOR EACH STATEMENT EXECUTE FUNCTION {schema}.slowly()"""
        )


@pytest.mark.parametrize("recording", [0.0, 0.2], ids=["fast-db", "slow-db"])
async def test_server_errors_are_retried_with_backoff(
    database: Database, schema: str, http: HttpClient, recording: float
) -> None:
    """The retries wait out the back-off, each its own, however long the relay takes to record the
    failed attempt before it pauses (a loaded database or CI host: what once made this test fail)."""
    if recording:
        await slow_failure_records(database, schema, recording)
    state = Receiver(status=503)
    service = f"writer-{schema[-8:]}"
    clock = FakeClock()
    async with serve_app(receiver_app(state, service)) as url:
        relay = OutboxRelay(
            database,
            schema,
            service,
            signed(http, url, service),
            poll_interval=0.1,
            base_backoff=0.2,
            max_backoff=0.4,
            clock=clock,
        )
        await enqueue_committed(database, [event(service)])
        relay.start()
        try:
            # back-off ceilings 0.2, 0.4, 0.4, …; each wait is drawn from the upper half of its ceiling
            for tries, (too_early, late_enough) in enumerate(((0.09, 0.11), (0.19, 0.21), (0.19, 0.21)), 1):
                await eventually(backing_off(relay, clock, tries))
                assert metric("outbox_delivery_failures_total", service) == tries
                clock.advance(too_early)
                await asyncio.sleep(0.05)
                assert metric("outbox_delivery_failures_total", service) == tries  # still backing off
                if tries == 3:
                    rows = await outbox_rows(database, schema)
                    assert "503" in rows[0]["last_error"]
                    state.status = 200  # the audit service is back: the next try delivers
                clock.advance(late_enough)
            await eventually(lambda: len(state.received) == 1, timeout=5)
            assert metric("outbox_delivery_failures_total", service) == 3
        finally:
            await relay.stop()


async def test_a_poison_event_waits_alone_and_does_not_block_the_rest(
    database: Database, schema: str, http: HttpClient
) -> None:
    state = Receiver(refuse_poison=True)
    service = f"writer-{schema[-8:]}"
    good = [event(service, n=n) for n in range(4)]
    poison = event(service, poison=True)
    await enqueue_committed(database, [good[0], good[1], poison, good[2], good[3]])
    async with serve_app(receiver_app(state, service)) as url:
        relay = OutboxRelay(
            database, schema, service, signed(http, url, service), poll_interval=0.1, max_backoff=60
        )
        relay.start()
        try:
            await eventually(lambda: len(state.received) >= 4)
        finally:
            await relay.stop()
    assert state.received == [str(e.id) for e in good]
    rows = await outbox_rows(database, schema)
    assert [row["id"] for row in rows] == [poison.id]
    assert rows[0]["attempts"] >= 1
    assert "422" in rows[0]["last_error"]


async def test_two_relays_share_one_outbox_without_sending_twice(
    database: Database, schema: str, http: HttpClient
) -> None:
    state = Receiver()
    async with serve_app(receiver_app(state, "writer")) as url:
        relays = [
            OutboxRelay(
                database, schema, "writer", signed(http, url, "writer"), batch_size=7, poll_interval=0.1
            )
            for _ in range(2)
        ]
        for relay in relays:
            relay.start()
        try:
            batches = [[event(n=n, batch=b) for n in range(10)] for b in range(30)]
            await asyncio.gather(*(enqueue_committed(database, batch) for batch in batches))
            await eventually(lambda: len(state.received) >= 300, timeout=20)
            await asyncio.sleep(0.3)
        finally:
            await asyncio.gather(*(relay.stop() for relay in relays))
    expected = Counter(str(e.id) for batch in batches for e in batch)
    assert state.counts() == expected
    assert await outbox_rows(database, schema) == []


async def test_relay_waits_for_a_late_database(database_url: str, schema: str, http: HttpClient) -> None:
    """Started before its pool exists (as in a lifespan), the relay neither crashes nor gives up."""
    state = Receiver()
    db = Database(database_url, schema=schema, application_name="outbox-late")
    async with serve_app(receiver_app(state, "writer")) as url:
        relay = OutboxRelay(db, schema, "writer", signed(http, url, "writer"), base_backoff=0.05)
        relay.start()
        try:
            await asyncio.sleep(0.3)
            db.start()
            await db.wait_connected(10)
            sent = [event()]
            await enqueue_committed(db, sent)
            await eventually(lambda: len(state.received) == 1)
        finally:
            await relay.stop()
            await db.close()
    assert state.received == [str(sent[0].id)]


def test_relay_refuses_odd_schema_names_and_batch_sizes(http: HttpClient) -> None:
    db = Database("postgresql://x@127.0.0.1/none")
    client = signed(http, "http://127.0.0.1:1", "w")
    with pytest.raises(ValueError, match="schema"):
        OutboxRelay(db, 'x"; DROP TABLE y; --', "w", client)
    with pytest.raises(ValueError, match="batch_size"):
        OutboxRelay(db, "ok", "w", client, batch_size=501)


async def test_a_receiver_that_refuses_our_identity_is_retried_not_split(
    database: Database, schema: str, http: HttpClient
) -> None:
    """Wrong keys (401) are a configuration fault, not bad events: nothing is split or parked."""
    state = Receiver()
    service = f"writer-{schema[-8:]}"
    other_keys = {f"{service}-1": secrets.token_bytes(32)}  # not the pair key the receiver holds
    async with serve_app(receiver_app(state, service)) as url:
        relay = OutboxRelay(
            database,
            schema,
            service,
            SignedClient(http, url, IdentitySigner(other_keys)),
            poll_interval=0.1,
            max_backoff=0.2,
        )
        await enqueue_committed(database, [event(service) for _ in range(3)])
        relay.start()
        try:
            await eventually(lambda: metric("outbox_delivery_failures_total", service) >= 3)
        finally:
            await relay.stop()
    rows = await outbox_rows(database, schema)
    assert len(rows) == 3
    assert all("401" in row["last_error"] for row in rows)
    assert len({row["attempts"] for row in rows}) == 1  # retried together, as one batch
    assert state.received == []


# ---- delivery receipts (svckit.receipts) ---------------------------------------------------------


async def receipt_row(database: Database, schema: str) -> asyncpg.Record:
    async with database.connection() as conn:
        row = await conn.fetchrow(f"SELECT * FROM {schema}.outbox_receipt")
    assert row is not None
    return row


async def test_an_audit_service_older_than_receipts_is_tolerated(
    database: Database, schema: str, http: HttpClient
) -> None:
    """During a rolling upgrade the audit service may answer ``{"accepted", "duplicates"}`` only and
    have no receipt route (the receiver here): deliveries go on as before, no receipt is kept, the
    check has nothing to hold the trail to and reports no mismatch; a receipt kept from a newer audit
    service (rolled back since) cannot be checked there, and nothing is reported either."""
    state = Receiver()
    async with serve_app(receiver_app(state, "old-audit")) as url:
        relay = OutboxRelay(database, schema, "old-audit", signed(http, url, "old-audit"), poll_interval=0.2)
        relay.start()
        try:
            sent = [event("old-audit") for _ in range(3)]
            await enqueue_committed(database, sent)
            await eventually(lambda: len(state.received) == 3)

            async def drained() -> bool:
                return await outbox_rows(database, schema) == []

            await eventually(drained)
        finally:
            await relay.stop()
        row = await receipt_row(database, schema)
        assert (row["event_id"], row["seq"], row["hash"], row["mismatch_at"]) == (None, None, None, None)
        assert await relay.receipts.check() == "none"
        assert metric("outbox_audit_receipt_mismatch", "old-audit") == 0.0

        async with database.connection() as conn:
            await conn.execute(
                f"UPDATE {schema}.outbox_receipt SET event_id = $1, seq = 3, hash = $2",
                sent[-1].id,
                "a" * 64,
            )
        assert await relay.receipts.check() == "unknown"  # 404: no such route there
        assert (await receipt_row(database, schema))["mismatch_at"] is None
        assert metric("outbox_audit_receipt_mismatch", "old-audit") == 0.0


@pytest.mark.unit
def test_a_malformed_or_missing_receipt_in_the_answer_is_no_receipt() -> None:
    from svckit.receipts import receipt_of

    good = {"id": str(uuid.uuid4()), "seq": 7, "hash": "b" * 64}
    assert receipt_of(b'{"accepted":1,"duplicates":0}') is None
    assert receipt_of(b"not json") is None
    assert receipt_of(b'{"accepted":1,"duplicates":0,"receipt":{"id":"x","seq":1,"hash":"c"}}') is None
    assert receipt_of(b'{"accepted":1,"duplicates":0,"receipt":null}') is None
    parsed = receipt_of(json.dumps({"accepted": 1, "duplicates": 0, "receipt": good}).encode())
    assert parsed is not None
    assert (str(parsed.id), parsed.seq, parsed.hash) == (good["id"], 7, "b" * 64)


async def test_the_backlog_gauges_update_while_the_receipt_cannot_be_checked(
    database: Database, schema: str, http: HttpClient
) -> None:
    """With a receipt to check first and the audit service unreachable, the relay backs off as for a
    failed delivery — and still refreshes the backlog gauges TimesheetsOutboxBacklogTooOld reads."""
    async with database.connection() as conn:
        await conn.execute(
            f"UPDATE {schema}.outbox_receipt SET event_id = $1, seq = 9, hash = $2", uuid.uuid4(), "e" * 64
        )
    await enqueue_committed(database, [event("unchecked"), event("unchecked")])
    nowhere = f"http://127.0.0.1:{free_port()}"
    relay = OutboxRelay(
        database,
        schema,
        "unchecked",
        signed(http, nowhere, "unchecked"),
        poll_interval=0.1,
        base_backoff=0.05,
        max_backoff=0.2,
        metrics_interval=0.05,
    )
    relay.start()
    try:
        await eventually(lambda: metric("outbox_pending_events", "unchecked") == 2)
    finally:
        await relay.stop()
    assert len(await outbox_rows(database, schema)) == 2
