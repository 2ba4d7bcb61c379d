"""An event recorded twice is a broken trail, whatever the chain says.

The design asks that every event reach the trail exactly once, and ``records.id`` (the event's id) is
unique since the first migration (0002): no release, replay or restore of the service can store an
event twice. The database's owner can, though: drop that constraint, then append a copy of an event
with the next seq and the chain recomputed over it. Every hash then holds, so a walk of the chain
alone said ``{"ok": true}`` — online, in the background (``audit_chain_ok`` 1) and offline. The walk
now asks whether the unique index still stands (a catalog lookup) and, where it does not, looks for
ids recorded twice itself (:mod:`audit.duplicates`).

Each test runs on a database of its own, tampered with as the owner would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from audit.chain import record_hash
from audit.checkpointer import Checkpointer
from audit.checkpoints import CheckpointKeys
from audit.store import COLUMNS, AuditStore
from audit.verifier import BackgroundVerifier
from prometheus_client import REGISTRY
from svckit.db import Database
from svckit.identity import Identity

from testkit.clihost import CliHost
from testkit.clock import FakeClock
from testkit.fixtures import Caller, runtime_url, user

from .conftest import OwnTrail, own_trail

TIMESHEETS = Identity.service("timesheets")
AUDITOR = user("carol", "read:audit")
DROP_UNIQUE = "ALTER TABLE audit.records DROP CONSTRAINT records_id_key"


@dataclass
class Trail(OwnTrail):
    keys: str  # AUDIT_CHECKPOINT_KEYS

    async def verify(self) -> dict[str, Any]:
        reply = await self.api.call("GET", "/audit/verify", AUDITOR)
        assert reply.status == 200, reply.text
        body: dict[str, Any] = reply.body
        return body

    async def record_twice(self, seq: int, *statements: str, table: str = "audit.records") -> str:
        """As the owner: ``statements`` (dropping the unique constraint, say), then a copy of record
        ``seq`` appended to ``table`` at the next seq, chained and hashed as the service would. Returns
        the event's id."""
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
                row = await conn.fetchrow(
                    "SELECT *, details::text AS details FROM audit.records WHERE seq = $1", seq
                )
                head = await conn.fetchrow("SELECT seq, hash FROM audit.records ORDER BY seq DESC LIMIT 1")
                assert row is not None
                assert head is not None
                copy = {**dict(row), "seq": head["seq"] + 1, "prev_hash": head["hash"]}
                copy["hash"] = record_hash(copy)
                values = ", ".join(
                    f"${n}::jsonb" if c == "details" else f"${n}" for n, c in enumerate(COLUMNS, 1)
                )
                await conn.execute(
                    f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({values})",
                    *(copy[c] for c in COLUMNS),
                )
        finally:
            await conn.close()
        return str(row["id"])


@pytest.fixture
async def trail(identity_keys: dict[str, str], checkpoint_keys: str, caller: Caller) -> AsyncIterator[Trail]:
    async with own_trail(
        identity_keys,
        caller,
        env={"AUDIT_CHECKPOINT_KEYS": checkpoint_keys},
        audit_checkpoint_interval_seconds=0,  # the tests sign (or not) themselves
    ) as own:
        trail = Trail(own.api, own.dsn, checkpoint_keys)
        assert (await trail.verify())["ok"] is True
        yield trail


@pytest.fixture
async def store(trail: Trail) -> AsyncIterator[AuditStore]:
    database = Database(runtime_url(trail.dsn, "audit"), schema="audit", application_name="duplicates-test")
    await database.wait_connected(10)
    yield AuditStore(database, "audit")
    await database.close()


def twice(event_id: str, first: int, again: int) -> str:
    return f"event {event_id} is recorded twice (records {first} and {again})"


async def test_an_event_appended_again_fails_verification(trail: Trail) -> None:
    event_id = await trail.record_twice(4, DROP_UNIQUE)
    body = await trail.verify()
    assert (body["ok"], body["first_bad"], body["checked"]) == (False, 11, 11)
    assert twice(event_id, 4, 11) in body["reason"]
    assert REGISTRY.get_sample_value("audit_chain_ok") == 0
    # a range answers for the copies in it: the later copy (record 11) is what is reported
    for params, ok in (({"since": "1", "until": "10"}, True), ({"since": "6"}, False)):
        reply = await trail.api.call("GET", "/audit/verify", AUDITOR, params=params)
        assert reply.status == 200, reply.text
        assert (reply.body["ok"], reply.body.get("first_bad")) == (ok, None if ok else 11), params


async def test_the_offline_verifier_reports_it_too(trail: Trail, cli_host: CliHost) -> None:
    """``python -m audit verify`` in the session's command host (test_ranged_verify and
    test_offline_usage run the verifier as a real process)."""
    event_id = await trail.record_twice(7, DROP_UNIQUE)
    env = {
        "DATABASE_URL": runtime_url(trail.dsn, "audit"),
        "AUDIT_CHECKPOINT_KEYS": trail.keys,
        "PATH": "/usr/bin:/bin",
    }
    result = await asyncio.to_thread(cli_host.run, "audit", env, "verify")
    assert result.returncode == 1, result.stderr[-800:]
    report = json.loads(result.stdout)
    assert (report["ok"], report["first_bad"]) == (False, 11)
    assert twice(event_id, 7, 11) in report["reason"]
    assert twice(event_id, 7, 11) in result.stderr


async def test_an_incremental_run_catches_a_copy_appended_after_its_head(
    trail: Trail, store: AuditStore
) -> None:
    verifier = BackgroundVerifier(store, interval=1, full_interval=3600)
    assert (await verifier.run_once()).ok
    event_id = await trail.record_twice(2, DROP_UNIQUE)
    result = await verifier.run_once()
    assert (result.ok, result.first_bad, result.checked) == (False, 11, 2)  # the head, then the copy
    assert result.reason is not None
    assert twice(event_id, 2, 11) in result.reason
    assert REGISTRY.get_sample_value("audit_chain_ok") == 0
    assert verifier.head is None  # the next run is a full one


async def test_the_signer_does_not_sign_over_a_copy(trail: Trail, store: AuditStore) -> None:
    """The checkpoint signer walks what it is about to sign, from its newest checkpoint on: a copy
    appended after it is refused, not vouched for."""
    clock = FakeClock()
    signer = Checkpointer(store, CheckpointKeys.parse(trail.keys), interval=60, clock=clock)
    first = await signer.run_once()
    assert first is not None
    assert first.seq == 10
    await trail.record_twice(5, DROP_UNIQUE)
    clock.advance(61)
    refused = REGISTRY.get_sample_value("audit_checkpoints_total", {"outcome": "refused"}) or 0.0
    assert await signer.run_once() is None
    assert REGISTRY.get_sample_value("audit_checkpoints_total", {"outcome": "refused"}) == refused + 1


async def test_a_copy_in_a_table_that_inherits_the_records_is_found(trail: Trail) -> None:
    """A child table's rows are read with the records (``SELECT … FROM records``) but are outside the
    unique index: the index alone is no guarantee then."""
    event_id = await trail.record_twice(
        3, "CREATE TABLE audit.more_records () INHERITS (audit.records)", table="audit.more_records"
    )
    body = await trail.verify()
    assert (body["ok"], body["first_bad"]) == (False, 11)
    assert twice(event_id, 3, 11) in body["reason"]


async def test_without_the_constraint_an_intact_trail_verifies_and_says_what_is_missing(
    trail: Trail, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await trail.verify())["ok"]
    assert REGISTRY.get_sample_value("audit_event_ids_unique") == 1
    await trail.sql(DROP_UNIQUE)
    with caplog.at_level(logging.WARNING, logger="audit.store"):
        body = await trail.verify()
    assert (body["ok"], body["checked"]) == (True, 10)
    assert any("records_id_key" in r.getMessage() for r in caplog.records if r.name == "audit.store")
    # and the gauge TimesheetsAuditEventIdsNotUnique alerts on
    assert REGISTRY.get_sample_value("audit_event_ids_unique") == 0
