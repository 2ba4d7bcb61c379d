"""Delivery receipts: a producer finds out when the audit trail lost events it had delivered.

The relay deletes what the audit service acknowledged, so a trail put back to an earlier point loses
those events for good. The audit service's own watermark (Redis) is gone when Redis was flushed
across the restore, and records newer than its newest signed checkpoint were never covered by it:
both holes of docs/runbook.md "Backup and restore". The producer keeps the receipt the ingest answered
(svckit.receipts) in its own schema, which the audit database's owner cannot reach, and holds the
trail to it: ``outbox_audit_receipt_mismatch{service}`` goes to 1.

Real processes and servers: the audit service as ``python -m audit`` (its own Redis user, signing
checkpoints), a writer schema with the kit's outbox and a real relay, ``pg_dump``/``pg_restore`` of the
audit schema (testkit.backup), the owner's statements an insider would run (testkit.tamper).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from svckit.http import HttpClient
from svckit.outbox import AuditEvent, enqueue
from svckit.receipts import ACCEPT_ACTION, accept_audit_restore

from testkit.backup import dump_schema, restore_schema, service_command
from testkit.clihost import CliHost
from testkit.fixtures import (
    IsolatedEnv,
    ServiceProcess,
    ServiceRedis,
    free_port,
    migrate_schema,
    runtime_env,
    user,
)
from testkit.tamper import owner_sql
from tests.audit.support import SOURCE, OutboxWriter, created_events

AUDIT_PACKAGE = Path(__file__).resolve().parents[2] / "services" / "audit" / "audit"

pytestmark = pytest.mark.timeout(180)


def mismatch() -> float | None:
    return REGISTRY.get_sample_value("outbox_audit_receipt_mismatch", {"service": SOURCE})


class Producer(OutboxWriter):
    """The producer whose receipts the tests hold the trail to."""

    async def deliver(self, count: int) -> list[uuid.UUID]:
        """Commit ``count`` events and wait until the relay has delivered them all."""
        events = created_events(user("alice", "create:timesheets"), count)
        async with self.database.transaction() as conn:
            for event in events:
                await enqueue(conn, event)

        async def drained() -> None:
            while await self.rows("SELECT count(*) FROM {schema}.outbox") != [0]:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(drained(), 30)
        return [event.id for event in events]

    async def rows(self, sql: str) -> list[Any]:
        async with self.database.connection() as conn:
            return [row[0] for row in await conn.fetch(sql.format(schema=self.schema))]

    async def receipt(self) -> asyncpg.Record:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(f"SELECT * FROM {self.schema}.outbox_receipt")
        assert row is not None
        return row

    async def deliver_held(self, count: int) -> tuple[list[uuid.UUID], asyncpg.Record]:
        """Deliver ``count`` events and check the receipt they left: the last one's, and held (the
        gauge read right after this relay's own check, before any other relay's can run)."""
        ids = await self.deliver(count)
        receipt = await self.receipt()
        assert receipt["event_id"] == ids[-1]
        assert await self.relay.receipts.check() == "held"
        assert mismatch() == 0.0
        return ids, receipt


@pytest.fixture
def audit_env(
    isolated_env: IsolatedEnv, service_redis: ServiceRedis, checkpoint_keys: str
) -> tuple[str, dict[str, str]]:
    """A database of its own (its audit schema is dumped and restored) and the audit service's env."""
    env = isolated_env(f"rc_{secrets.token_hex(3)}")
    served = {
        **service_redis.runtime_env(env, "audit"),
        "AUDIT_CHECKPOINT_KEYS": checkpoint_keys,
        "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",
        "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
    }
    return env["DATABASE_URL"], served


@dataclass
class Stack:
    """The audit service as a process on a port of its own (restartable there) and a producer."""

    served: dict[str, str]
    port: int
    log_dir: Path
    audit: ServiceProcess
    producer: Producer

    def start_audit(self) -> None:
        self.audit = start_audit(self.served, self.port, self.log_dir)


def start_audit(served: dict[str, str], port: int, log_dir: Path) -> ServiceProcess:
    return ServiceProcess("audit", served, port=port, log_dir=log_dir).start("/readyz")


@asynccontextmanager
async def audit_and_producer(
    audit_env: tuple[str, dict[str, str]],
    identity_keys: dict[str, str],
    http: HttpClient,
    log_dir: Path,
    **relay_options: Any,
) -> AsyncIterator[Stack]:
    """The audit schema migrated, the audit service started, a producer relaying to it (polling and
    backing off fast; ``relay_options`` added); all stopped at the end."""
    owner, served = audit_env
    await migrate_schema(owner, "audit", AUDIT_PACKAGE)
    port = free_port()
    audit = start_audit(served, port, log_dir)
    try:
        producer = await Producer.start(
            owner,
            audit.url,
            identity_keys,
            http,
            poll_interval=0.2,
            base_backoff=0.1,
            max_backoff=0.5,
            **relay_options,
        )
    except BaseException:
        audit.stop()
        raise
    stack = Stack(served, port, log_dir, audit, producer)
    try:
        yield stack
    finally:
        await producer.stop()
        stack.audit.stop()  # the one running now (a test may have restarted it)


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(total_timeout=5)
    yield client
    await client.close()


async def eventually(probe: Callable[[], Any], expected: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value == expected or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.1)


async def forget_watermark(redis_url: str, prefix: str) -> int:
    """Redis restarted or flushed across the restore: the audit service's keys are gone."""
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()


async def test_a_healthy_trail_keeps_the_receipt_and_the_gauge_at_0(
    audit_env: tuple[str, dict[str, str]], identity_keys: dict[str, str], http: HttpClient, tmp_path: Path
) -> None:
    owner, _ = audit_env
    async with audit_and_producer(audit_env, identity_keys, http, tmp_path) as stack:
        producer = stack.producer
        ids, receipt = await producer.deliver_held(5)
        conn = await asyncpg.connect(owner)
        try:
            newest = await conn.fetchrow("SELECT id, seq, hash FROM audit.records ORDER BY seq DESC LIMIT 1")
        finally:
            await conn.close()
        assert newest is not None
        assert newest["id"] == ids[-1]
        assert (receipt["event_id"], receipt["seq"], receipt["hash"]) == tuple(newest.values())
        assert receipt["mismatch_at"] is None
        # nothing to accept: the command changes nothing
        report = await accept_audit_restore(producer.database, producer.schema, SOURCE, "no incident")
        assert report["state"] == "consistent"
        assert (await producer.receipt())["seq"] == newest["seq"]


async def test_records_cut_by_the_owner_after_the_newest_checkpoint_are_found_by_the_producer(
    audit_env: tuple[str, dict[str, str]],
    identity_keys: dict[str, str],
    http: HttpClient,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An insider with the audit owner's rights deletes the newest records (and puts the chain's head
    back) while Redis is flushed: the trail verifies, the audit service's watermark knows nothing —
    the producer's receipt names a record that is gone."""
    owner, served = audit_env
    async with audit_and_producer(audit_env, identity_keys, http, tmp_path) as stack:
        producer = stack.producer
        await producer.deliver(3)
        kept = (await producer.receipt())["seq"]
        lost, receipt = await producer.deliver_held(3)

        await forget_watermark(redis_url, served["REDIS_KEY_PREFIX"])
        await owner_sql(
            owner,
            f"DELETE FROM audit.checkpoints WHERE seq > {kept}",
            f"DELETE FROM audit.records WHERE seq > {kept}",
            "UPDATE audit.chain_head SET (seq, hash) ="
            f" (SELECT seq, hash FROM audit.records WHERE seq = {kept})",
        )
        caplog.set_level(logging.ERROR, logger="svckit.outbox")
        assert await producer.relay.receipts.check() == "mismatch"
        assert mismatch() == 1.0
        lines = [r for r in caplog.records if "audit trail lost events" in r.getMessage()]
        assert len(lines) == 1
        assert getattr(lines[0], "event_id") == str(lost[-1])  # noqa: B009 (a log record's extra)
        assert getattr(lines[0], "seq") == receipt["seq"]  # noqa: B009

        # later deliveries store new records (at the lost seqs and past them): the receipt stays on
        # the lost record, the mismatch stays recorded, every later check reports it, logged once
        await producer.deliver(5)
        after = await producer.receipt()
        assert (after["event_id"], after["seq"]) == (receipt["event_id"], receipt["seq"])
        assert (
            after["mismatch_detail"]
            == f"record seq {receipt['seq']} (event {lost[-1]}) is not on the audit trail"
        )
        assert await producer.relay.receipts.check() == "mismatch"
        assert len([r for r in caplog.records if "audit trail lost events" in r.getMessage()]) == 1

        # the operator accepts: the receipt starts afresh, the acceptance goes to the trail
        report = await accept_audit_restore(producer.database, producer.schema, SOURCE, "INC-9: cut")
        assert report["state"] == "accepted"
        assert report["lost"]["event_id"] == str(lost[-1])
        assert report["lost"]["seq"] == receipt["seq"]
        await eventually(lambda: producer.rows("SELECT count(*) FROM {schema}.outbox"), [0])
        conn = await asyncpg.connect(owner)
        try:
            accepted = await conn.fetchrow(
                "SELECT seq, details FROM audit.records WHERE action = $1", ACCEPT_ACTION
            )
        finally:
            await conn.close()
        assert accepted is not None
        assert '"INC-9: cut"' in accepted["details"]
        assert await producer.relay.receipts.check() == "held"
        assert mismatch() == 0.0
        assert (await producer.receipt())["seq"] == accepted["seq"]


async def test_an_audit_restore_with_redis_flushed_is_found_by_the_producer_on_its_own(
    audit_env: tuple[str, dict[str, str]],
    identity_keys: dict[str, str],
    http: HttpClient,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """The audit schema restored from a dump (testkit.backup) while Redis lost the watermark: the audit
    service starts on the restored trail and sees nothing wrong (``audit_trail_rolled_back`` 0). The
    relay, which could not deliver while the service was away, checks its receipt before it delivers
    again — no test calls the check — and pins the mismatch in its row, which holds the gauge at 1.

    Only this relay's own state is waited on (its outbox row's attempts, its receipt row): the
    process-wide metrics are shared with every relay of the same service name in the test process
    (the session's timesheets apps relay to a closed port and fail all along, and their empty receipts
    set the gauge to 0 at each of their checks)."""
    owner, served = audit_env
    async with audit_and_producer(
        audit_env, identity_keys, http, tmp_path, receipt_check_interval=3600
    ) as stack:
        producer = stack.producer
        await producer.deliver(4)
        backup = dump_schema(owner, "audit", tmp_path / "audit.dump")
        # acknowledged, deleted from the outbox: only the trail had them
        lost, _ = await producer.deliver_held(4)
        stack.audit.stop()
        restore_schema(owner, backup)
        await forget_watermark(redis_url, served["REDIS_KEY_PREFIX"])
        # the relay tries while the service is away (a change committed meanwhile)
        async with producer.database.transaction() as conn:
            await enqueue(
                conn,
                AuditEvent.create(
                    action="timesheet.created",
                    resource_type="timesheet",
                    resource_id="during-restore",
                    outcome="success",
                    actor=user("alice", "create:timesheets"),
                    source=SOURCE,
                ),
            )

        async def tried() -> bool:  # this relay's failed attempt, recorded on the row it could not deliver
            return await producer.rows("SELECT count(*) FROM {schema}.outbox WHERE attempts > 0") == [1]

        assert await eventually(tried, True) is True
        stack.start_audit()

        async def pinned() -> bool:
            return (await producer.receipt())["mismatch_at"] is not None

        assert await eventually(pinned, True) is True
        row = await producer.receipt()
        assert row["event_id"] == lost[-1]
        assert "is not on the audit trail" in row["mismatch_detail"]
        # the pinned row holds the gauge at 1 at every check (read before any other task can run)
        assert await producer.relay.receipts.check() == "mismatch"
        assert mismatch() == 1.0
        # and delivery went on: the change committed during the restore reached the restored trail
        assert await eventually(lambda: producer.rows("SELECT count(*) FROM {schema}.outbox"), [0]) == [0]
        # the audit service's own signal is silent: its watermark went with Redis
        assert "audit trail rolled back" not in stack.audit.logs()


async def test_the_accept_command_runs_as_the_service_with_its_runtime_role(
    isolated_env: IsolatedEnv, tmp_path: Path, cli_host: CliHost
) -> None:
    """``python -m timesheets outbox accept-audit-restore --reason …`` as the runbook runs it: the
    Deployment's environment (its runtime role), a JSON report, the acceptance queued for the trail.
    The acceptance is a real process; the usage error and the run with nothing to accept run in the
    command host."""
    env = isolated_env(f"rcli_{secrets.token_hex(3)}")
    owner = env["DATABASE_URL"]
    await migrate_schema(owner, "timesheets", AUDIT_PACKAGE.parents[1] / "timesheets" / "timesheets")
    served = runtime_env(env, "timesheets")

    usage = service_command("timesheets", served, "outbox", "accept-audit-restore", host=cli_host)
    assert usage.returncode == 2, usage.stderr
    nothing = service_command(
        "timesheets", served, "outbox", "accept-audit-restore", "--reason", "INC-1", host=cli_host
    )
    assert nothing.returncode == 0, nothing.stderr
    assert json.loads(nothing.stdout)["state"] == "consistent"

    lost = uuid.uuid4()
    conn = await asyncpg.connect(owner)
    try:
        await conn.execute(
            "UPDATE timesheets.outbox_receipt SET event_id = $1, seq = 42, hash = $2, delivered_at = now(),"
            " mismatch_at = now(), mismatch_detail = 'record seq 42 is not on the audit trail'",
            lost,
            "d" * 64,
        )
        accepted = service_command(
            "timesheets", served, "outbox", "accept-audit-restore", "--reason", "INC-2"
        )
        assert accepted.returncode == 0, accepted.stderr
        report = json.loads(accepted.stdout)
        assert report["state"] == "accepted"
        assert report["lost"] == {
            "event_id": str(lost),
            "seq": 42,
            "hash": "d" * 64,
            "mismatch": "record seq 42 is not on the audit trail",
        }
        row = await conn.fetchrow("SELECT * FROM timesheets.outbox_receipt")
        assert row is not None
        assert (row["event_id"], row["seq"], row["mismatch_at"]) == (None, None, None)
        queued = await conn.fetchval(
            "SELECT payload::text FROM timesheets.outbox WHERE id = $1::uuid", report["event_id"]
        )
        assert queued is not None
        assert json.loads(queued)["action"] == ACCEPT_ACTION
        assert json.loads(queued)["details"]["reason"] == "INC-2"
    finally:
        await conn.close()
