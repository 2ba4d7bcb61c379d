"""The trail's watermark in Redis (audit.watermark) against a real trail and a real Redis.

Each test has a database of its own (the runtime role's store, a signer on a fake clock) and a key
prefix of its own on this session's Redis, as the audit service's ACL user. Plays what a restore
does to the checkpoints with the owner's rights (the checkpoints the backup lacked are gone), and what
a signer does while Redis does not answer.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from subprocess import CompletedProcess

import pytest
import redis.asyncio as aioredis
from audit.checkpointer import Checkpointer
from audit.checkpoints import CheckpointKeys
from audit.store import AuditStore
from audit.trail import CheckpointTrail
from audit.watermark import Base, TrailWatermark, Watermark
from prometheus_client import REGISTRY
from svckit.contracts.audit import AuditEvent
from svckit.db import Database
from svckit.redisguard import RedisGuard

from testkit.auditevents import make_event
from testkit.backup import service_command
from testkit.clihost import CliHost
from testkit.clock import FakeClock
from testkit.fixtures import (
    ServiceRedis,
    create_migrated_database,
    drop_database,
    free_port,
    runtime_url,
)
from testkit.tamper import owner_sql

from .conftest import PACKAGE_DIR


def rolled_back_gauge() -> float | None:
    return REGISTRY.get_sample_value("audit_trail_rolled_back")


def signer_runs(outcome: str) -> float:
    return REGISTRY.get_sample_value("audit_checkpoints_total", {"outcome": outcome}) or 0.0


@dataclass
class Trail:
    owner: str
    store: AuditStore
    keys: CheckpointKeys
    clock: FakeClock
    redis: RedisGuard
    watermark: TrailWatermark
    keys_text: str  # AUDIT_CHECKPOINT_KEYS as the service and its commands read it

    def signer(self, watermark: TrailWatermark | None = None) -> Checkpointer:
        return Checkpointer(
            self.store, self.keys, 60, clock=self.clock, watermark=watermark or self.watermark
        )

    async def ingest(self, count: int) -> None:
        await self.store.append([AuditEvent.model_validate(make_event()) for _ in range(count)])
        self.clock.advance(61)

    async def stored(self) -> Watermark | None:
        async with self.store.database.connection() as conn:
            answered, mark = await self.watermark.read(conn)
        assert answered
        return mark

    async def key(self) -> str:
        async with self.store.database.connection() as conn:
            return await self.watermark.key(conn)

    async def check(self) -> str:
        async with self.store.database.connection() as conn:
            return (await self.watermark.check(conn)).state

    def unreachable(self) -> TrailWatermark:
        """The same trail's watermark through a Redis that does not answer."""
        dead = RedisGuard(
            f"redis://127.0.0.1:{free_port()}/0", self.redis.prefix, timeout=0.2, retry_seconds=60
        )
        return TrailWatermark(dead, self.keys, self.store.checkpoints)


@pytest.fixture
async def trail(service_redis: ServiceRedis) -> AsyncIterator[Trail]:
    """Records 1-5 signed as checkpoint 1, records 6-8 as checkpoint 2; the watermark names 2."""
    name = f"tsp_test_wm_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name, "audit", PACKAGE_DIR)
    keys_text = CheckpointKeys.generate("ck-1")
    keys = CheckpointKeys.parse(keys_text)
    redis = RedisGuard(
        service_redis.url("audit"),
        f"{service_redis.prefix}wm-{secrets.token_hex(4)}:",
        timeout=1,
        retry_seconds=1,
    )
    database = Database(runtime_url(dsn, "audit"), schema="audit", application_name="audit-watermark")
    try:
        await database.wait_connected(10)
        store = AuditStore(database, "audit")
        watermark = TrailWatermark(redis, keys, store.checkpoints)
        trail = Trail(dsn, store, keys, FakeClock(), redis, watermark, keys_text)
        await trail.ingest(5)
        assert (await trail.signer().run_once()) is not None
        await trail.ingest(3)
        assert (await trail.signer().run_once()) is not None
        mark = await trail.stored()
        assert mark is not None
        assert (mark.number, mark.seq) == (2, 8)
        yield trail
    finally:
        await redis.close()
        await database.close()
        await drop_database(name)


async def test_checkpoints_removed_by_a_restore_are_reported_and_never_signed_again(trail: Trail) -> None:
    """A signer that stays up across the restore: the rollback is reported (not taken for tampering),
    and after the operator accepted it the next checkpoint is number 3, chained to checkpoint 1."""
    signer = trail.signer()
    await owner_sql(trail.owner, "DELETE FROM audit.checkpoints WHERE number = 2")  # the backup lacked it
    await trail.ingest(2)
    before = signer_runs("rolled_back"), signer_runs("refused")
    assert await signer.run_once() is None
    assert (signer_runs("rolled_back"), signer_runs("refused")) == (before[0] + 1, before[1])
    assert rolled_back_gauge() == 1
    assert await trail.check() == "rolled_back"

    # accept-restore's change of the watermark (audit.restore; the command itself: tests/restore)
    mark = await trail.stored()
    assert mark is not None
    async with trail.store.database.connection() as conn:
        first = await trail.store.checkpoints.latest(conn)
    assert first is not None
    assert first.number == 1
    first_cp = trail.keys.verify(first.jws)
    accepted = Watermark(mark.number, mark.seq, mark.head, mark.digest, Base(1, first_cp.digest))
    assert not await trail.watermark.write(await trail.key(), accepted, replacing="something else")
    assert await trail.watermark.write(await trail.key(), accepted, replacing=mark.raw)
    assert await trail.check() == "accepted"
    assert rolled_back_gauge() == 0

    third = await signer.run_once()
    assert third is not None
    assert (third.number, third.seq, third.prev) == (3, 10, first_cp.digest)
    assert await trail.check() == "consistent"
    raised = await trail.stored()
    assert raised is not None
    assert (raised.number, raised.accepted) == (3, None)
    verification = await trail.store.verify(trail=CheckpointTrail(trail.keys))
    assert verification.ok, verification.reason  # 1 then 3: a signed skip, not a missing checkpoint


async def test_a_number_signed_again_while_redis_was_away_is_a_rollback(
    trail: Trail, caplog: pytest.LogCaptureFixture
) -> None:
    """Without an answer from Redis the signer signs as before (the platform works without Redis) —
    after a restore, checkpoint 2 again, for another head. Once Redis answers, the watermark's
    checkpoint 2 differs from the database's: reported, and nothing more is signed."""
    await owner_sql(trail.owner, "DELETE FROM audit.checkpoints WHERE number = 2")
    await trail.ingest(4)
    gauge = rolled_back_gauge()
    away = trail.signer(trail.unreachable())
    with caplog.at_level(logging.WARNING, logger="audit.checkpoints"):
        resigned = await away.run_once()
    assert resigned is not None
    assert (resigned.number, resigned.seq) == (2, 12)
    assert "without checking the trail's watermark" in caplog.text
    assert rolled_back_gauge() == gauge  # nothing proven while Redis was away

    assert await trail.check() == "rolled_back"
    await trail.ingest(1)
    assert await trail.signer().run_once() is None
    assert rolled_back_gauge() == 1
    mark = await trail.stored()
    assert mark is not None
    assert (mark.number, mark.seq) == (2, 8)  # the lower seq never replaced it

    # accepted: the database's newest (the number signed again) is where the signer goes on from
    accepted = Watermark(mark.number, mark.seq, mark.head, mark.digest, Base(2, resigned.digest))
    assert await trail.watermark.write(await trail.key(), accepted, replacing=mark.raw)
    assert await trail.check() == "accepted"
    assert rolled_back_gauge() == 0
    fourth = await trail.signer().run_once()
    assert fourth is not None
    assert (fourth.number, fourth.seq, fourth.prev) == (3, 13, resigned.digest)
    assert await trail.check() == "consistent"


async def test_an_absent_or_unreadable_watermark_proves_nothing_and_is_seeded(
    trail: Trail, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = await trail.key()
    admin = aioredis.from_url(redis_url)  # Redis lost the key (evicted, restarted): not the service
    try:
        await admin.delete(key)
        assert await trail.check() == "consistent"
        seeded = await trail.stored()
        assert seeded is not None
        assert (seeded.number, seeded.seq) == (2, 8)  # the database's newest
        await admin.set(key, "not a watermark")
    finally:
        await admin.aclose()
    with caplog.at_level(logging.WARNING, logger="audit.watermark"):
        assert await trail.check() == "consistent"
    assert "is not one: ignored" in caplog.text
    replaced = await trail.stored()
    assert replaced is not None
    assert replaced.number == 2


async def test_the_watermark_is_only_ever_raised(trail: Trail) -> None:
    """A replica that committed checkpoint N first but writes its watermark last cannot lower it."""
    key = await trail.key()
    mark = await trail.stored()
    assert mark is not None
    lower = Watermark(1, 5, mark.head, mark.digest)
    assert not await trail.watermark.write(key, lower)
    higher = Watermark(7, 40, mark.head, mark.digest)
    assert await trail.watermark.write(key, higher)
    stored = await trail.stored()
    assert stored is not None
    assert stored.number == 7


async def test_a_finding_carries_the_newest_checkpoint_as_read(trail: Trail) -> None:
    """accept-restore verifies the very row the check compared (one read, not a second one that a
    checkpoint signed meanwhile could make differ): the finding carries it, in every state."""
    async with trail.store.database.connection() as conn:
        consistent = await trail.watermark.check(conn)
        newest = await trail.store.checkpoints.latest(conn)
    assert newest is not None
    assert (consistent.state, consistent.stored) == ("consistent", newest)
    await owner_sql(trail.owner, "DELETE FROM audit.checkpoints WHERE number = 2")
    async with trail.store.database.connection() as conn:
        rolled_back = await trail.watermark.check(conn, catch_up=False)
        first = await trail.store.checkpoints.latest(conn)
        unknown = await trail.unreachable().check(conn)
    assert first is not None
    assert first.number == 1
    assert (rolled_back.state, rolled_back.stored) == ("rolled_back", first)
    assert (unknown.state, unknown.stored) == ("unknown", first)
    await owner_sql(trail.owner, "DELETE FROM audit.checkpoints")
    async with trail.store.database.connection() as conn:
        assert (await trail.watermark.check(conn)).stored is None


def accept_restore(
    trail: Trail, service_env: dict[str, str], host: CliHost | None = None, **overrides: str
) -> CompletedProcess[str]:
    """``python -m audit accept-restore`` with the audit Deployment's environment for ``trail``: a
    real process, or a run in the session's command host."""
    env = {
        **service_env,
        "DATABASE_URL": runtime_url(trail.owner, "audit"),
        "REDIS_KEY_PREFIX": trail.redis.prefix,
        "AUDIT_CHECKPOINT_KEYS": trail.keys_text,
        "REDIS_TIMEOUT_SECONDS": "0.5",
        "DB_CONNECT_TIMEOUT_SECONDS": "2",
        **overrides,
    }
    return service_command("audit", env, "accept-restore", "--reason", "INC-9: audit restore", host=host)


async def test_accept_restore_refuses_a_restored_checkpoint_that_does_not_verify(
    trail: Trail, service_env: dict[str, str]
) -> None:
    """A newest checkpoint whose signature fails is tampering to investigate, not a restore to
    accept: exit 1, the watermark left as it was, nothing written to the trail."""
    await owner_sql(trail.owner, "DELETE FROM audit.checkpoints WHERE number = 2")  # the backup lacked it
    await owner_sql(
        trail.owner,
        "UPDATE audit.checkpoints SET jws = left(jws, length(jws) - 8) || 'AAAAAAAA' WHERE number = 1",
    )
    assert await trail.check() == "rolled_back"
    mark = await trail.stored()
    refused = accept_restore(trail, service_env)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "does not verify" in json.loads(refused.stdout)["refused"]
    assert "refused" in refused.stderr
    assert await trail.stored() == mark  # not accepted
    async with trail.store.database.connection() as conn:
        recorded = await conn.fetchval(
            "SELECT count(*) FROM audit.records WHERE action = 'audit.restore_accepted'"
        )
    assert recorded == 0


async def test_accept_restore_without_its_database_or_redis_says_so_with_exit_3(
    trail: Trail, service_env: dict[str, str], cli_host: CliHost
) -> None:
    """Both cases in the command host (the refusal's exit 1 above is the real process)."""
    await owner_sql(trail.owner, "DELETE FROM audit.checkpoints WHERE number = 2")
    mark = await trail.stored()
    no_redis = accept_restore(trail, service_env, cli_host, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert no_redis.returncode == 3, (no_redis.stdout, no_redis.stderr)
    assert "unreachable" in no_redis.stderr
    assert "Redis does not answer" in no_redis.stderr
    no_database = accept_restore(
        trail, service_env, cli_host, DATABASE_URL=f"postgresql://audit@127.0.0.1:{free_port()}/nowhere"
    )
    assert no_database.returncode == 3, (no_database.stdout, no_database.stderr)
    assert "unreachable" in no_database.stderr
    assert await trail.stored() == mark  # nothing changed
    assert await trail.check() == "rolled_back"
