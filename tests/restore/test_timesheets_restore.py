"""The timesheets schema restored to an earlier point than approvals and audit; and the approvals
schema restored to an earlier point than timesheets.

What the restore loses is lost (an entry created after the backup is gone, though the audit trail
recorded its creation: the trail is the record of what happened), but the rules must hold on what it
brings back: an entry approved after the backup comes back ``submitted`` while approvals keeps its
decision as applied (settled decisions are final), so without a repair its owner could delete an
approved entry and no approver could ever decide it again (409). ``python -m approvals
reapply-decisions`` sends the applied decisions again (the apply step is idempotent by decision id)
and names those whose entry the restore lost. Audit events the restored outbox holds again (delivered
after the backup) are delivered again and stored once: the audit service ingests by event id.

An approvals dump older than the timesheets one (docs/runbook.md: no command to run) lacks the
decisions made after it, which the entries and the trail keep; a decision it holds as ``pending``
that was applied after it settles as ``applied`` again when the reconciler repeats it (the
timesheets service answers 200: the entry carries that decision id), without a second record of it
on the trail.

Real processes on loopback (timesheets, approvals, audit), one database of their own; the backup
and the restore are ``pg_dump`` / ``pg_restore`` of the schema (``testkit.backup``), as
docs/runbook.md ("Backup and restore") says.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from svckit.identity import Identity

from testkit.backup import dump_schema, restore_schema, service_command
from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    IsolatedEnv,
    ServiceProcess,
    ServiceRedis,
    migrate_schema,
    runtime_url,
    user,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"
EMPLOYEE = ("read:timesheets", "create:timesheets", "delete:timesheets")


def employee() -> Identity:
    return user(f"alice-{uuid.uuid4().hex[:8]}", *EMPLOYEE)


def manager() -> Identity:
    return user(f"bob-{uuid.uuid4().hex[:8]}", *EMPLOYEE, "approve:timesheets")


class Platform:
    """timesheets, approvals and audit as processes on one database; each can be stopped and started."""

    def __init__(self, env: dict[str, str], redis: ServiceRedis, logs: Path) -> None:
        url = env["DATABASE_URL"]
        self.owner_url = url
        self.audit = ServiceProcess(
            "audit",
            {**env, "DATABASE_URL": runtime_url(url, "audit"), "REDIS_URL": redis.url("audit")},
            log_dir=logs,
        )
        self.timesheets = ServiceProcess(
            "timesheets",
            {
                **env,
                "DATABASE_URL": runtime_url(url, "timesheets"),
                "REDIS_URL": redis.url("timesheets"),
                "AUDIT_URL": self.audit.url,
            },
            log_dir=logs,
        )
        self.approvals_env = {
            **env,
            "DATABASE_URL": runtime_url(url, "approvals"),
            "REDIS_URL": redis.url("approvals"),
            "TIMESHEETS_URL": self.timesheets.url,
            "AUDIT_URL": self.audit.url,
            "RECONCILE_INTERVAL_SECONDS": "0.2",
            "RECONCILE_AFTER_SECONDS": "1",
        }
        self.approvals = ServiceProcess("approvals", self.approvals_env, log_dir=logs)

    def restart_timesheets(self) -> None:
        self.timesheets.stop()
        self.timesheets = ServiceProcess(
            "timesheets",
            self.timesheets.env,
            port=self.timesheets.port,
            log_dir=self.timesheets.log_path.parent,
        )
        self.timesheets.start("/readyz")

    def start_approvals(self) -> None:
        """A new approvals process on the same port (the previous one stopped)."""
        self.approvals = ServiceProcess(
            "approvals",
            self.approvals_env,
            port=self.approvals.port,
            log_dir=self.approvals.log_path.parent,
        )
        self.approvals.start("/readyz")


@pytest.fixture(scope="module")
async def platform(
    isolated_env: IsolatedEnv, service_redis: ServiceRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    env = isolated_env("restore_ts")
    for schema in ("timesheets", "approvals", "audit"):
        await migrate_schema(env["DATABASE_URL"], schema, SERVICES / schema / schema)
    holder = Platform(env, service_redis, tmp_path_factory.mktemp("restore-ts-logs"))
    holder.audit.start("/readyz")
    holder.timesheets.start("/readyz")
    holder.approvals.start("/readyz")
    try:
        yield holder
    finally:
        for process in (holder.approvals, holder.timesheets, holder.audit):
            process.stop()


async def outbox_empty(db: asyncpg.Connection, schema: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while await db.fetchval(f"SELECT count(*) FROM {schema}.outbox"):
        assert time.monotonic() < deadline, f"{schema}'s outbox not delivered in {timeout}s"
        await asyncio.sleep(0.1)


async def trail(db: asyncpg.Connection, entry_id: str) -> list[str]:
    rows = await db.fetch("SELECT action FROM audit.records WHERE resource_id = $1", entry_id)
    return sorted(row["action"] for row in rows)


async def test_decisions_survive_a_restore_of_the_timesheets_schema(
    platform: Platform, caller: Caller, tmp_path: Path
) -> None:
    alice, bob = employee(), manager()
    db = await asyncpg.connect(platform.owner_url)
    timesheets = SignedApi(platform.timesheets.url, caller)
    approvals = SignedApi(platform.approvals.url, caller)
    try:
        # the audit service is away when "kept" is created and the backup taken: its creation waits in
        # the outbox of the backup, and is delivered (again) after the restore
        platform.audit.stop()
        created = {}
        for name in ("kept", "lost"):
            reply = await timesheets.call(
                "POST",
                "/timesheets",
                alice,
                json={"date": "2026-11-23", "project": name, "hours": 8},
                headers={"Idempotency-Key": f"key-{name}"},
            )
            assert reply.status == 201, reply.text
            created[name] = reply.body
            if name == "kept":
                assert await db.fetchval("SELECT count(*) FROM timesheets.outbox") == 1
                backup = dump_schema(platform.owner_url, "timesheets", tmp_path / "timesheets.dump")
                platform.audit.start("/readyz")
        kept, lost = created["kept"]["id"], created["lost"]["id"]
        for entry_id in (kept, lost):
            reply = await approvals.call("PUT", f"/approvals/{entry_id}", bob, json={"decision": "approved"})
            assert reply.status == 200, reply.text
        await outbox_empty(db, "timesheets")
        await outbox_empty(db, "approvals")
        assert await trail(db, kept) == ["approval.decided", "timesheet.created", "timesheet.decided"]

        # --- the runbook's procedure: stop the service, restore its schema, start it, re-apply decisions
        platform.timesheets.stop()
        restore_schema(platform.owner_url, backup)
        platform.restart_timesheets()
        done = service_command("approvals", platform.approvals_env, "reapply-decisions")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{lost}: the entry is gone" in done.stdout, done.stdout

        # the approved entry is approved again: its owner cannot delete it, nobody can decide it again
        reply = await timesheets.call("GET", f"/timesheets/{kept}", alice)
        assert reply.status == 200
        assert reply.body["status"] == "approved", "an entry approved before the restore is submitted again"
        reply = await timesheets.call("DELETE", f"/timesheets/{kept}", alice)
        assert reply.status == 409, f"the owner deleted an approved entry: {reply.status}"
        # the entry created after the backup is lost; the trail still says it was created and approved
        reply = await timesheets.call("GET", f"/timesheets/{lost}", alice)
        assert reply.status == 404
        # a retry of its creation with the same Idempotency-Key creates it anew (the stored answer was
        # lost with it): another id, submitted for a decision again
        reply = await timesheets.call(
            "POST",
            "/timesheets",
            alice,
            json={"date": "2026-11-23", "project": "lost", "hours": 8},
            headers={"Idempotency-Key": "key-lost"},
        )
        assert reply.status == 201, reply.text
        assert reply.body["id"] != lost
        assert reply.body["status"] == "submitted"

        # the creation of "kept" the restored outbox delivered again is stored once
        await outbox_empty(db, "timesheets")
        actions = await trail(db, kept)
        assert actions.count("timesheet.created") == 1, actions
        assert actions.count("approval.decided") == 1, actions
        assert await trail(db, lost) == ["approval.decided", "timesheet.created", "timesheet.decided"]
    finally:
        await timesheets.close()
        await approvals.close()
        await db.close()


async def decision_rows(db: asyncpg.Connection, entry_id: str) -> list[tuple[str, str]]:
    rows = await db.fetch("SELECT id::text, state FROM approvals.decisions WHERE entry_id = $1", entry_id)
    return [(row["id"], row["state"]) for row in rows]


async def test_an_approvals_restore_to_an_earlier_point_than_timesheets(
    platform: Platform, caller: Caller, tmp_path: Path
) -> None:
    """What the runbook says of an approvals dump older than the timesheets one: the decisions made
    after it are missing from approvals but kept by the entries and the trail (no approver can decide
    them again); its pending decisions applied since settle as applied; nothing is recorded twice."""
    alice, bob, dave = employee(), manager(), manager()
    db = await asyncpg.connect(platform.owner_url)
    timesheets = SignedApi(platform.timesheets.url, caller)
    approvals = SignedApi(platform.approvals.url, caller)
    try:
        entries = {}
        for name in ("pending", "later"):
            reply = await timesheets.call(
                "POST", "/timesheets", alice, json={"date": "2026-11-24", "project": name, "hours": 4}
            )
            assert reply.status == 201, reply.text
            entries[name] = reply.body["id"]
        pending, later = entries["pending"], entries["later"]

        # the backup holds a decision recorded but not applied yet: its entry's row is locked (a slow
        # timesheets database), so the apply call times out and the PUT answers 503
        locker = await asyncpg.connect(platform.owner_url)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute(
                "SELECT 1 FROM timesheets.entries WHERE id = $1 FOR UPDATE", uuid.UUID(pending)
            )
            reply = await approvals.call("PUT", f"/approvals/{pending}", bob, json={"decision": "approved"})
            assert reply.status == 503, reply.text
            assert reply.body["decision"]["state"] == "pending", reply.text
            backup = dump_schema(platform.owner_url, "approvals", tmp_path / "approvals.dump")
            await lock.rollback()
        finally:
            await locker.close()

        # after the backup: "pending" applied (the reconciler settles it), "later" decided
        reply = await approvals.call("PUT", f"/approvals/{later}", bob, json={"decision": "rejected"})
        assert reply.status == 200, reply.text
        deadline = time.monotonic() + 30
        while [state for _, state in await decision_rows(db, pending)] != ["applied"]:
            assert time.monotonic() < deadline, "the reconciler did not settle the decision"
            await asyncio.sleep(0.2)
        await outbox_empty(db, "approvals")
        await outbox_empty(db, "timesheets")
        before = {e: await trail(db, e) for e in (pending, later)}
        assert before[pending] == ["approval.decided", "timesheet.created", "timesheet.decided"]
        assert before[later] == ["approval.decided", "timesheet.created", "timesheet.decided"]

        # --- the runbook: stop the service, restore its schema, start it (no step of its own)
        platform.approvals.stop()
        restore_schema(platform.owner_url, backup)
        assert [state for _, state in await decision_rows(db, pending)] == ["pending"]
        assert await decision_rows(db, later) == []
        platform.start_approvals()
        await approvals.close()
        approvals = SignedApi(platform.approvals.url, caller)

        # the restored pending decision settles as it did: applied (the entry carries its id)
        deadline = time.monotonic() + 30
        while [state for _, state in await decision_rows(db, pending)] != ["applied"]:
            assert time.monotonic() < deadline, "the restored pending decision was not settled"
            await asyncio.sleep(0.2)
        reply = await timesheets.call("GET", f"/timesheets/{pending}", alice)
        assert reply.body["status"] == "approved", reply.text

        # the decision made after the backup: approvals lacks it, the entry and the trail keep it, and
        # nobody can decide the entry again
        reply = await timesheets.call("GET", f"/timesheets/{later}", alice)
        assert reply.body["status"] == "rejected", reply.text
        assert reply.body["decision"]["by"]["subject"] == bob.subject, reply.text
        reply = await approvals.call("PUT", f"/approvals/{later}", dave, json={"decision": "approved"})
        assert reply.status == 409, reply.text
        assert await decision_rows(db, later) == []
        queue = await approvals.call("GET", "/approvals?limit=100", dave)
        assert queue.status == 200, queue.text
        assert not {pending, later} & {item["id"] for item in queue.body["items"]}

        # the trail: what it had, once (a settlement repeated is the same event, stored once)
        await outbox_empty(db, "approvals")
        after = {e: await trail(db, e) for e in (pending, later)}
        assert after == before, (before, after)
    finally:
        await timesheets.close()
        await approvals.close()
        await db.close()
