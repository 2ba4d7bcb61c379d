"""The trail is append-only in the database and tamper-evident through the hash chain.

Tampering tests run on a database of their own: they drop the append-only trigger first, as an
attacker with database rights would, and then change, delete or re-hash rows behind the service.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from audit.app import create_app
from audit.chain import record_hash
from audit.settings import AuditSettings
from audit.store import AuditStore
from audit.verifier import BackgroundVerifier
from prometheus_client import REGISTRY
from svckit.db import Database
from svckit.identity import Identity
from svckit.settings import load_settings

from testkit.client import SignedApi, ingest_counts
from testkit.fixtures import (
    Caller,
    runtime_env,
    runtime_url,
    serve_app,
    user,
)

from .conftest import OwnTrail, own_trail

TIMESHEETS = Identity.service("timesheets")
AUDITOR = user("carol", "read:audit")


def verifications(result: str) -> float:
    return REGISTRY.get_sample_value("audit_chain_verifications_total", {"result": result}) or 0.0


async def verify(api: SignedApi) -> dict[str, Any]:
    reply = await api.call("GET", "/audit/verify", AUDITOR)
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.body
    return body


# ---- on the session's shared trail ----------------------------------------------------------------


async def test_an_intact_chain_verifies(api: SignedApi, new_event: Any, conforms: Any) -> None:
    await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [new_event() for _ in range(5)]})
    before = verifications("ok")
    body = await verify(api)
    assert body["ok"] is True
    assert body["checked"] >= 5
    assert set(body) == {"ok", "checked", "checkpoints"}  # the session's service signs checkpoints
    assert body["checkpoints"]["signatures_valid"] is True
    conforms("VerifyResult", body)
    assert verifications("ok") == before + 1
    assert REGISTRY.get_sample_value("audit_chain_ok") == 1


async def test_awkward_json_details_still_verify(api: SignedApi, new_event: Any) -> None:
    """Whatever jsonb does to numbers, key order or Unicode, the hashed bytes are reproducible."""
    details = [
        {"z": 1, "a": {"y": [1.5, -0.0, True, None], "b": "Zoë ✓ 🚀 \\ \" '"}},
        # the largest integer the kit's body rules (I-JSON) accept
        {"big": 1e20, "tiny": 1e-7, "huge_int": 9007199254740991, "pi": 3.141592653589793},
        {"": "empty key", "emoji key 🗝": {"nested": {"deeper": [[], {}, ""]}}},
        {"exp": 1.0e300, "neg": -42, "frac": 0.1 + 0.2},
    ]
    reply = await api.call(
        "POST", "/internal/events", TIMESHEETS, json={"events": [new_event(details=d) for d in details]}
    )
    assert ingest_counts(reply.body) == {"accepted": 4, "duplicates": 0}
    assert (await verify(api))["ok"] is True


async def test_concurrent_verifications_share_one_walk(api: SignedApi) -> None:
    before = verifications("ok")
    results = await asyncio.gather(*(verify(api) for _ in range(8)))
    assert all(r["ok"] for r in results)
    assert len({r["checked"] for r in results}) == 1
    assert verifications("ok") - before < 8  # fewer walks than callers


async def test_verify_needs_read_audit(api: SignedApi) -> None:
    reply = await api.call("GET", "/audit/verify", user("alice", "read:timesheets"))
    assert reply.status == 403
    assert (await api.call("GET", "/audit/verify", None)).status == 401


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit.records SET outcome = 'failure'", "DELETE FROM audit.records", "TRUNCATE audit.records"],
)
async def test_the_database_refuses_to_change_records(
    api: SignedApi, audit_schema: str, new_event: Any, statement: str
) -> None:
    await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [new_event()]})
    conn = await asyncpg.connect(audit_schema)  # as the superuser: even the owner is refused
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_verification_during_ingestion_sees_one_consistent_snapshot(
    api: SignedApi, new_event: Any
) -> None:
    async def ingest() -> None:
        for _ in range(10):
            events = [new_event() for _ in range(20)]
            await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})

    writer = asyncio.create_task(ingest())
    results = []
    while not writer.done():
        results.append(await verify(api))
    await writer
    results.append(await verify(api))
    assert all(r["ok"] for r in results), results


# ---- tampering, on a trail of its own ---------------------------------------------------------------


ATTACKER_DISABLES_TRIGGER = "ALTER TABLE audit.records DISABLE TRIGGER USER"


@pytest.fixture
async def trail(identity_keys: dict[str, str], caller: Caller) -> AsyncIterator[OwnTrail]:
    async with own_trail(identity_keys, caller) as trail:
        assert await verify(trail.api) == {"ok": True, "checked": 10}
        yield trail


@pytest.mark.parametrize(
    "change",
    [
        "details = '{\"n\": 999}'",
        "actor_subject = 'mallory'",
        "outcome = 'failure'",
        "occurred_at = occurred_at - interval '1 day'",
        "request_id = NULL",
    ],
)
async def test_a_changed_row_is_reported_at_its_seq(trail: OwnTrail, change: str) -> None:
    broken_before = verifications("broken")
    await trail.sql(ATTACKER_DISABLES_TRIGGER, f"UPDATE audit.records SET {change} WHERE seq = 4")
    body = await verify(trail.api)
    assert body["ok"] is False
    assert body["first_bad"] == 4
    assert body["checked"] == 4
    assert "hash" in body["reason"]
    assert verifications("broken") == broken_before + 1
    assert REGISTRY.get_sample_value("audit_chain_ok") == 0


async def test_a_deleted_row_is_reported_missing(trail: OwnTrail) -> None:
    await trail.sql(ATTACKER_DISABLES_TRIGGER, "DELETE FROM audit.records WHERE seq = 6")
    body = await verify(trail.api)
    assert (body["ok"], body["first_bad"]) == (False, 6)
    assert "missing" in body["reason"]


async def test_a_rehashed_row_breaks_the_link_to_the_next(trail: OwnTrail) -> None:
    """An attacker who also recomputes the changed row's hash is caught by the following record."""
    row = dict((await trail.row(3)).items())
    row["actor_subject"] = "mallory"
    forged = record_hash(row)
    await trail.sql(
        ATTACKER_DISABLES_TRIGGER,
        f"UPDATE audit.records SET actor_subject = 'mallory', hash = '{forged}' WHERE seq = 3",
    )
    body = await verify(trail.api)
    assert (body["ok"], body["first_bad"]) == (False, 4)
    assert "prev_hash" in body["reason"]


async def test_a_renumbered_chain_is_caught(trail: OwnTrail) -> None:
    """Deleting a row and shifting the rest down to hide the gap still breaks the chain."""
    await trail.sql(
        ATTACKER_DISABLES_TRIGGER,
        "DELETE FROM audit.records WHERE seq = 5",
        "UPDATE audit.records SET seq = seq - 1 WHERE seq > 5",
    )
    body = await verify(trail.api)
    assert (body["ok"], body["first_bad"]) == (False, 5)


async def anchor_of_newest(trail: OwnTrail) -> str:
    reply = await trail.api.call("GET", "/audit/events", AUDITOR, params={"limit": "1"})
    [newest] = reply.body["items"]
    return f"{newest['seq']}:{newest['hash']}"


async def verify_with_anchor(api: SignedApi, anchor: str) -> dict[str, Any]:
    reply = await api.call("GET", "/audit/verify", AUDITOR, params={"anchor": anchor})
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.body
    return body


async def test_a_wrong_anchor_is_reported_without_raising_the_alarm(trail: OwnTrail) -> None:
    """A mistyped anchor says so in the answer, but must not flip audit_chain_ok to 0."""
    await verify(trail.api)
    broken_before = verifications("broken")
    body = await verify_with_anchor(trail.api, "5:" + "0" * 64)
    assert (body["ok"], body["first_bad"]) == (False, 5)
    assert verifications("broken") == broken_before
    assert REGISTRY.get_sample_value("audit_chain_ok") == 1


async def test_an_anchor_catches_a_truncated_chain(trail: OwnTrail) -> None:
    anchor = await anchor_of_newest(trail)
    assert await verify_with_anchor(trail.api, anchor) == {"ok": True, "checked": 10}
    await trail.sql(ATTACKER_DISABLES_TRIGGER, "DELETE FROM audit.records WHERE seq >= 9")
    assert (await verify(trail.api))["ok"] is True  # the chain alone cannot tell
    body = await verify_with_anchor(trail.api, anchor)
    assert (body["ok"], body["first_bad"]) == (False, 10)
    assert "truncated" in body["reason"]


async def test_an_anchor_catches_a_rewritten_and_rehashed_chain(trail: OwnTrail) -> None:
    """The attacker changes record 4 and re-hashes every later record: internally consistent."""
    anchor = await anchor_of_newest(trail)
    await trail.sql(ATTACKER_DISABLES_TRIGGER)
    prev_hash = (await trail.row(3))["hash"]
    conn = await asyncpg.connect(trail.dsn)
    try:
        for seq in range(4, 11):
            row = dict((await trail.row(seq)).items())
            if seq == 4:
                row["actor_subject"] = "mallory"
            row["prev_hash"] = prev_hash
            prev_hash = record_hash(row)
            await conn.execute(
                "UPDATE audit.records SET actor_subject = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
                seq,
                row["actor_subject"],
                row["prev_hash"],
                prev_hash,
            )
    finally:
        await conn.close()
    assert (await verify(trail.api))["ok"] is True  # the chain alone cannot tell
    body = await verify_with_anchor(trail.api, anchor)
    assert (body["ok"], body["first_bad"]) == (False, 10)
    assert "rewritten" in body["reason"]


@pytest.mark.parametrize("anchor", ["10", "0:" + "a" * 64, "3:" + "A" * 64, "3:abc", "x:" + "a" * 64])
async def test_a_malformed_anchor_is_named(api: SignedApi, anchor: str) -> None:
    reply = await api.call("GET", "/audit/verify", AUDITOR, params={"anchor": anchor})
    assert reply.status == 422
    assert reply.fields() == {"anchor"}


async def test_verification_streams_a_long_chain(trail: OwnTrail, new_event: Any) -> None:
    """Thousands of records walked through a server-side cursor, in well under a second per thousand."""
    for _ in range(6):
        events = [new_event(details={"k": "v" * 100}) for _ in range(500)]
        await trail.api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    started = time.perf_counter()
    body = await verify(trail.api)
    elapsed = time.perf_counter() - started
    assert body == {"ok": True, "checked": 3010}
    assert elapsed < 10, elapsed


# ---- background verification: incremental runs, full runs now and then --------------------------


@pytest.fixture
async def store(trail: OwnTrail) -> AsyncIterator[AuditStore]:
    database = Database(runtime_url(trail.dsn, "audit"), schema="audit", application_name="verifier-test")
    await database.wait_connected(10)
    yield AuditStore(database, "audit")
    await database.close()


async def test_incremental_runs_recompute_only_what_was_appended(
    trail: OwnTrail, store: AuditStore, new_event: Any
) -> None:
    verifier = BackgroundVerifier(store, interval=1, full_interval=3600)
    first = await verifier.run_once()
    assert (first.ok, first.checked) == (True, 10)
    await trail.api.call(
        "POST", "/internal/events", TIMESHEETS, json={"events": [new_event() for _ in range(5)]}
    )
    second = await verifier.run_once()
    assert (second.ok, second.checked) == (True, 6)  # the verified head, then the 5 new records
    assert verifier.head is not None
    assert verifier.head.seq == 15


async def test_an_incremental_run_catches_a_changed_head_and_a_full_run_catches_the_rest(
    trail: OwnTrail, store: AuditStore
) -> None:
    verifier = BackgroundVerifier(store, interval=1, full_interval=3600)
    assert (await verifier.run_once()).ok
    # Older records are only re-checked by full runs (the trade-off that keeps runs cheap) ...
    await trail.sql(ATTACKER_DISABLES_TRIGGER, "UPDATE audit.records SET outcome = 'failure' WHERE seq = 3")
    assert (await verifier.run_once()).ok
    # ... but the head an incremental run starts from must be intact.
    await trail.sql("UPDATE audit.records SET outcome = 'failure' WHERE seq = 10")
    broken = await verifier.run_once()
    assert (broken.ok, broken.first_bad) == (False, 10)
    assert verifier.head is None  # so the next run is a full one, and finds the older change first
    full = await verifier.run_once()
    assert (full.ok, full.first_bad) == (False, 3)


async def test_a_truncated_chain_fails_the_incremental_run(trail: OwnTrail, store: AuditStore) -> None:
    verifier = BackgroundVerifier(store, interval=1, full_interval=3600)
    assert (await verifier.run_once()).ok
    await trail.sql(ATTACKER_DISABLES_TRIGGER, "DELETE FROM audit.records WHERE seq >= 8")
    result = await verifier.run_once()
    assert (result.ok, result.first_bad) == (False, 10)


async def test_the_service_verifies_in_the_background(audit_schema: str, service_env: dict[str, str]) -> None:
    env = runtime_env(service_env, "audit")
    settings = load_settings(AuditSettings, env=env, audit_verify_interval_seconds=0.2)
    before = verifications("ok") + verifications("broken")
    async with serve_app(create_app(settings)):
        for _ in range(100):
            if verifications("ok") + verifications("broken") >= before + 2:
                break
            await asyncio.sleep(0.05)
    assert verifications("ok") + verifications("broken") >= before + 2  # runs again and again


async def test_an_event_sent_at_a_leap_second_is_stored_and_chained_as_the_next_second(
    api: SignedApi, new_event: Any
) -> None:
    # the text 23:59:60 is valid RFC 3339; what is hashed must be what is stored and listed (the
    # verification rebuilds each record's bytes from the stored columns), or the chain breaks
    subject = f"leap-{uuid.uuid4().hex[:12]}"
    event = {**new_event(subject=subject), "occurred_at": "2016-12-31T23:59:60.5Z"}
    stored = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
    assert stored.status == 200, stored.text
    page = await api.call("GET", "/audit/events", AUDITOR, params={"actor": subject})
    assert [item["occurred_at"] for item in page.body["items"]] == ["2017-01-01T00:00:00.500000Z"]
    assert (await verify(api))["ok"] is True
