"""A writer's outbox and the real audit service as a process: nothing lost, nothing doubled.

The audit service runs exactly as in production (``python -m audit``), and is stopped — gracefully,
and killed outright — while a writer keeps committing changes with their audit events. When it comes
back, every event is recorded exactly once, in outbox order, and the chain verifies.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from svckit.http import HttpClient
from svckit.identity import Identity
from svckit.outbox import enqueue

from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    ServiceProcess,
    ServiceRedis,
    TcpProxy,
    free_port,
    migrate_schema,
    scrape,
    user,
)
from testkit.pgproc import PrivatePostgres, postgres_bin
from tests.audit.support import OutboxWriter, created_events

AUDIT_PACKAGE = Path(__file__).resolve().parents[2] / "services" / "audit" / "audit"
AUDITOR = user("carol", "read:audit")

pytestmark = pytest.mark.timeout(120)


class Writer(OutboxWriter):
    """Stands in for a writer service: its own schema with an outbox, a relay, and 'changes'."""

    @property
    def actor(self) -> Identity:
        return user(f"writer-{self.schema}", "create:timesheets")

    async def change(self, count: int = 1) -> list[uuid.UUID]:
        """One committed transaction: a state change (here: a row) and its audit events."""
        events = created_events(self.actor, count)
        async with self.database.transaction() as conn:
            await conn.execute(f"INSERT INTO {self.schema}.changes DEFAULT VALUES")
            for event in events:
                await enqueue(conn, event)
        return [e.id for e in events]

    async def outbox_ids(self) -> list[uuid.UUID]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(f"SELECT id FROM {self.schema}.outbox ORDER BY position")
        return [row["id"] for row in rows]

    async def attempts(self) -> int:
        """The failed attempts this writer's relay recorded on its rows: its own, where the process-wide
        ``outbox_delivery_failures_total{service}`` also counts every other relay of the same name in
        the test process (the session's apps relay to a closed port all along)."""
        async with self.database.connection() as conn:
            return int(await conn.fetchval(f"SELECT coalesce(sum(attempts), 0) FROM {self.schema}.outbox"))


async def started_audit_process(
    database_url: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> ServiceProcess:
    await migrate_schema(database_url, "audit", AUDIT_PACKAGE)
    env = {**service_redis.runtime_env(service_env, "audit"), "AUDIT_VERIFY_INTERVAL_SECONDS": "0"}
    process = ServiceProcess("audit", env, port=free_port())
    await asyncio.to_thread(process.start, "/readyz")
    return process


@pytest.fixture
async def fresh_audit_process(
    database_url: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> AsyncIterator[ServiceProcess]:
    """An audit process of the test's own, just started."""
    process = await started_audit_process(database_url, service_env, service_redis)
    yield process
    await asyncio.to_thread(process.stop)


@pytest.fixture(scope="module")
async def shared_audit_process(
    database_url: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> AsyncIterator[ServiceProcess]:
    """One audit process for the module's tests: a start costs seconds, and each test that stops or
    kills it starts it again itself (so does :func:`audit_process`, should a test fail before that)."""
    process = await started_audit_process(database_url, service_env, service_redis)
    yield process
    await asyncio.to_thread(process.stop)


@pytest.fixture
async def audit_process(shared_audit_process: ServiceProcess) -> ServiceProcess:
    """The module's audit process, running (started again if an earlier test left it stopped)."""
    await asyncio.to_thread(shared_audit_process.start, "/readyz")
    return shared_audit_process


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Wait for a state (not for a time): ``condition`` true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def writer(
    database_url: str, identity_keys: dict[str, str], audit_process: ServiceProcess
) -> AsyncIterator[Writer]:
    http = HttpClient(total_timeout=5)
    writer = await Writer.start(
        database_url,
        audit_process.url,
        identity_keys,
        http,
        batch_size=25,
        poll_interval=0.5,
        base_backoff=0.1,
        max_backoff=1.0,
    )
    async with writer.database.connection() as conn:
        await conn.execute(
            f"CREATE TABLE {writer.schema}.changes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)"
        )
    try:
        yield writer
    finally:
        await writer.stop()
        await http.close()


async def until_outbox_empty(writer: Writer, timeout: float = 30.0) -> None:
    async def empty() -> None:
        while await writer.outbox_ids():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(empty(), timeout)


def relay_retries(caplog: pytest.LogCaptureFixture) -> int:
    """The relays' failed tries so far (each logged as it backs off): a lower bound to wait on."""
    return sum("outbox-relay failed; retrying" in record.getMessage() for record in caplog.records)


async def returns(value: bool) -> bool:
    return value


async def has_attempts(writer: Writer, at_least: int) -> bool:
    return await writer.attempts() >= at_least


async def has_recorded(database_url: str, ids: list[uuid.UUID], at_least: int) -> bool:
    return len(await recorded(database_url, list(ids))) >= at_least


async def recorded(database_url: str, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch("SELECT id, seq FROM audit.records WHERE id = ANY($1::uuid[]) ORDER BY seq", ids)
        )
    finally:
        await conn.close()


async def verify_through_api(url: str, caller: Caller) -> dict[str, object]:
    api = SignedApi(url, caller)
    try:
        reply = await api.call("GET", "/audit/verify", AUDITOR)
    finally:
        await api.close()
    assert reply.status == 200, reply.text
    body: dict[str, object] = reply.body
    return body


async def test_a_fresh_audit_process_reports_the_chain_as_unknown_not_broken(
    fresh_audit_process: ServiceProcess,
) -> None:
    """Before its first verification a new replica must not trip `min(audit_chain_ok) == 0`."""
    assert "audit_chain_ok NaN" in await scrape(fresh_audit_process.url)


async def test_events_committed_while_audit_is_stopped_arrive_exactly_once_in_order(
    writer: Writer,
    audit_process: ServiceProcess,
    database_url: str,
    caller: Caller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = [i for _ in range(10) for i in await writer.change(2)]
    await until_outbox_empty(writer)

    await asyncio.to_thread(audit_process.stop)  # SIGTERM: the real process goes away
    during: list[uuid.UUID] = []
    for _ in range(40):
        during.extend(await writer.change(3))
    # the relay keeps trying (and backing off) meanwhile: a failed delivery on this writer's rows,
    # then two more failed tries (its receipt checks) before the outbox is looked at
    await until(lambda: has_attempts(writer, 1), "a failed delivery attempt")
    failures = relay_retries(caplog)
    await until(lambda: returns(relay_retries(caplog) >= failures + 2), "two more failed tries")
    assert await writer.attempts() > 0
    pending = await writer.outbox_ids()
    assert set(pending) == set(during)  # every event waits, none was dropped

    await asyncio.to_thread(audit_process.start, "/readyz")
    await until_outbox_empty(writer)

    all_ids = before + during
    rows = await recorded(database_url, all_ids)
    assert len(rows) == len(all_ids) == 140
    assert len({row["id"] for row in rows}) == 140  # exactly once each
    assert [row["id"] for row in rows] == before + pending  # the chain keeps the outbox order
    body = await verify_through_api(audit_process.url, caller)
    assert (body["ok"], body["checked"]) == (True, await chain_length(database_url))
    checkpoints = body["checkpoints"]
    assert isinstance(checkpoints, dict)
    assert checkpoints["chain_matches"] is True  # and so do the signed checkpoints


async def chain_length(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit.records"))
    finally:
        await conn.close()


async def test_audit_killed_mid_stream_loses_and_doubles_nothing(
    writer: Writer, audit_process: ServiceProcess, database_url: str, caller: Caller
) -> None:
    """SIGKILL while batches are in flight: some acknowledgements are lost, the re-sends are
    recognised by id, and every event is still stored once."""
    sent: list[uuid.UUID] = []
    stop = asyncio.Event()

    async def keep_writing() -> None:
        while not stop.is_set():
            sent.extend(await writer.change(5))
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(keep_writing())
    # the stream flows: batches delivered, more in flight
    await until(lambda: has_recorded(database_url, sent, 50), "50 events delivered before the kill")
    assert audit_process.process is not None
    attempts = await writer.attempts()
    audit_process.process.kill()  # no graceful shutdown: requests die half-way
    await asyncio.to_thread(audit_process.process.wait)
    # the relay meets the dead service (and backs off) while the writer goes on
    await until(lambda: has_attempts(writer, attempts + 1), "a failed delivery attempt after the kill")
    await asyncio.to_thread(audit_process.start, "/readyz")
    # the writer goes on while the relay delivers (the backlog first) to the new process
    stored = len(await recorded(database_url, sent))
    await until(lambda: has_recorded(database_url, sent, stored + 1), "a delivery to the new process")
    stop.set()
    await producer
    await until_outbox_empty(writer)

    rows = await recorded(database_url, sent)
    assert len(sent) > 50
    assert len(rows) == len(sent)
    assert {row["id"] for row in rows} == set(sent)
    body = await verify_through_api(audit_process.url, caller)
    assert body["ok"] is True


@pytest.mark.parametrize("relay_refused_first", [False, True], ids=["writer-first", "relay-first"])
async def test_the_relay_listens_where_the_database_name_leads_after_a_failover(
    identity_keys: dict[str, str], audit_process: ServiceProcess, relay_refused_first: bool
) -> None:
    """A failover moves the database's name (a Service/DNS name: here a TCP proxy) to the promoted
    standby while the old primary stays up, now refusing writes. The pool finds that out on its first
    refused write and replaces its connections (svckit.db.refused_as_read_only); the relay's LISTEN
    connection must follow too: NOTIFYs are sent on the server that commits, so a listener left on the
    old server never hears one and every event waits for the next poll (here 20 s).

    ``relay-first``: the relay's own pass meets the demoted primary before the name moves (its probe
    then finds the name still there, and the failover's end is not announced by one)."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    poll_interval = 20.0
    http = HttpClient(total_timeout=5)
    primary = PrivatePostgres().start()
    standby: PrivatePostgres | None = None
    proxy = TcpProxy("127.0.0.1", primary.port)
    await proxy.start()
    writer: Writer | None = None
    try:
        writer = await Writer.start(
            proxy.url_for(primary.dsn), audit_process.url, identity_keys, http, poll_interval=poll_interval
        )
        async with writer.database.connection() as conn:
            await conn.execute(
                f"CREATE TABLE {writer.schema}.changes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)"
            )
        standby = await asyncio.to_thread(PrivatePostgres, standby_of=primary)
        await asyncio.to_thread(standby.start)
        dsn = proxy.url_for(primary.dsn)

        async def delivery_seconds() -> float:
            """From the commit of an event by another replica (NOTIFY included) to its delivery."""
            other = await asyncpg.connect(dsn, server_settings={"search_path": writer.schema})
            try:
                async with other.transaction():
                    await other.execute(f"INSERT INTO {writer.schema}.changes DEFAULT VALUES")
                    await enqueue(other, created_events(writer.actor, 1)[0])
            finally:
                await other.close()
            started = time.monotonic()
            await until_outbox_empty(writer, poll_interval + 10)
            return time.monotonic() - started

        await until_outbox_empty(writer)
        before = await delivery_seconds()
        assert before < poll_interval / 4  # NOTIFY speed

        # the failover: the old primary stays up and reachable, refusing writes (demoted)
        old = await asyncpg.connect(primary.dsn)
        await old.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await old.execute("SELECT pg_reload_conf()")
        await old.close()
        if relay_refused_first:
            refusals = REGISTRY.get_sample_value("db_read_only_refusals_total") or 0.0
            writer.relay.wake()
            while (REGISTRY.get_sample_value("db_read_only_refusals_total") or 0.0) == refusals:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(standby.promote)
        proxy.retarget(standby.port)  # the open connections stay with the old primary

        # the writer's next write is refused once (the pool's session on the old primary), then stored
        refused = 0
        while True:
            try:
                await writer.change()
                break
            except asyncpg.ReadOnlySQLTransactionError:
                refused += 1
                assert refused < 50
                await asyncio.sleep(0.1)
        await until_outbox_empty(writer, poll_interval + 10)
        after = await delivery_seconds()
        assert after < poll_interval / 4, f"delivered after {after:.1f} s (before: {before:.2f} s)"
    finally:
        if writer is not None:
            await writer.stop()
        await http.close()
        await proxy.cut()
        if standby is not None:
            await asyncio.to_thread(standby.remove)
        await asyncio.to_thread(primary.remove)
