"""POST /internal/events: service principals only, idempotent by id, every bad field named."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from audit.store import AuditStore
from prometheus_client import REGISTRY
from svckit.contracts.audit import AuditEvent, IngestResult
from svckit.db import Database
from svckit.identity import Identity

from testkit.client import SignedApi, ingest_counts
from testkit.fixtures import pair_signer, user

TIMESHEETS = Identity.service("timesheets")
APPROVALS = Identity.service("approvals")


async def stored(database_url: str, ids: list[str]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT id, seq, source FROM audit.records WHERE id = ANY($1::uuid[]) ORDER BY seq",
                ids,
            )
        )
    finally:
        await conn.close()


async def test_events_are_stored_once_and_resends_are_duplicates(
    api: SignedApi, audit_schema: str, new_event: Any, conforms: Any
) -> None:
    events = [new_event() for _ in range(3)]
    first = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    assert first.status == 200, first.text
    assert ingest_counts(first.body) == {"accepted": 3, "duplicates": 0}
    conforms("IngestResult", first.body)
    # the endpoint writes its answer itself: the model's bytes and media type, the kit's request id
    assert first.text == IngestResult.model_validate(first.body).model_dump_json(exclude_none=True)
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-request-id"]

    again = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [*events, new_event()]})
    assert ingest_counts(again.body) == {"accepted": 1, "duplicates": 3}

    ids = [e["id"] for e in events]
    rows = await stored(audit_schema, ids)
    assert [str(r["id"]) for r in rows] == ids  # stored once each, in the order sent
    assert [r["seq"] for r in rows] == list(range(rows[0]["seq"], rows[0]["seq"] + 3))


async def placed(database_url: str, event_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT id, seq, hash FROM audit.records WHERE id = $1::uuid", event_id)
    finally:
        await conn.close()
    assert row is not None
    return {"id": str(row["id"]), "seq": row["seq"], "hash": row["hash"]}


async def test_the_answer_carries_the_receipt_of_the_newest_event_stored(
    api: SignedApi, audit_schema: str, new_event: Any
) -> None:
    """The receipt a relay keeps (svckit.receipts): the batch's event at the highest seq, with the
    record's hash — chained here, chained by the database, or recorded before (a resend)."""
    events = [new_event() for _ in range(3)]
    first = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    assert first.body["receipt"] == await placed(audit_schema, events[-1]["id"])

    # the database chains a group itself when the head moved under this process (another replica's
    # append): the receipt is read back
    database = Database(audit_schema, schema="audit", application_name="another-replica")
    await database.wait_connected(10)
    try:
        elsewhere = await AuditStore(database, "audit").append([AuditEvent.model_validate(new_event())])
    finally:
        await database.close()
    assert elsewhere.receipt is not None
    head = {"seq": elsewhere.receipt.seq}
    batch = [new_event(), new_event()]
    moved = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": batch})
    assert ingest_counts(moved.body) == {"accepted": 2, "duplicates": 0}
    assert moved.body["receipt"]["id"] == batch[-1]["id"]
    # at least two on: the session's other services may append to this trail meanwhile (seen under
    # pytest -n, where another file's services were still relaying: 152, not 150)
    assert moved.body["receipt"]["seq"] >= head["seq"] + 2
    assert moved.body["receipt"] == (await placed(audit_schema, moved.body["receipt"]["id"]))

    # a resend of what is stored: the newest of it, where it was stored
    resend = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [events[2], events[0]]})
    assert ingest_counts(resend.body) == {"accepted": 0, "duplicates": 2}
    assert resend.body["receipt"] == first.body["receipt"]


async def test_a_service_checks_its_receipt_and_only_its_own(
    api: SignedApi, audit_schema: str, new_event: Any, conforms: Any
) -> None:
    """GET /internal/receipts/{id}: where the trail holds the caller's event; another service's event
    and an unknown id are both just not stored; users are refused; a non-UUID is 404."""
    event = new_event()
    stored_reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
    receipt = stored_reply.body["receipt"]

    mine = await api.call("GET", f"/internal/receipts/{event['id']}", TIMESHEETS)
    assert mine.status == 200, mine.text
    assert mine.body == {**receipt, "stored": True}
    conforms("ReceiptCheck", mine.body)

    theirs = await api.call("GET", f"/internal/receipts/{event['id']}", APPROVALS)
    assert theirs.body == {"id": event["id"], "stored": False}
    unknown_id = str(uuid.uuid4())
    unknown = await api.call("GET", f"/internal/receipts/{unknown_id}", TIMESHEETS)
    assert unknown.body == {"id": unknown_id, "stored": False}
    conforms("ReceiptCheck", unknown.body)

    person = await api.call("GET", f"/internal/receipts/{event['id']}", user("carol", "read:audit"))
    assert person.status == 403
    assert person.problem
    malformed = await api.call("GET", "/internal/receipts/not-a-uuid", TIMESHEETS)
    assert malformed.status == 404
    assert malformed.problem


async def test_the_same_id_twice_in_one_batch_is_one_record(
    api: SignedApi, audit_schema: str, new_event: Any
) -> None:
    event = new_event()
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event, event]})
    assert ingest_counts(reply.body) == {"accepted": 1, "duplicates": 1}
    assert len(await stored(audit_schema, [event["id"]])) == 1


async def test_concurrent_overlapping_deliveries_make_one_chain(
    api: SignedApi, audit_schema: str, new_event: Any
) -> None:
    """Ten relays racing with overlapping batches: each id stored once, seq without gaps."""
    pool = [new_event() for _ in range(120)]
    batches = [pool[i * 10 : i * 10 + 30] for i in range(10)]  # windows overlap by 20
    replies = await asyncio.gather(
        *(api.call("POST", "/internal/events", TIMESHEETS, json={"events": b}) for b in batches)
    )
    assert all(r.status == 200 for r in replies), [r.text for r in replies if r.status != 200]
    assert sum(r.body["accepted"] for r in replies) == 120
    assert sum(r.body["duplicates"] for r in replies) == sum(len(b) for b in batches) - 120
    rows = await stored(audit_schema, [e["id"] for e in pool])
    assert len(rows) == 120
    conn = await asyncpg.connect(audit_schema)
    try:
        span = await conn.fetchrow(
            "SELECT count(*) AS n, min(seq) AS low, max(seq) AS high FROM audit.records"
        )
    finally:
        await conn.close()
    assert span is not None
    assert (span["low"], span["high"]) == (1, span["n"])  # the whole chain is gap-free


async def test_only_service_principals_may_ingest(api: SignedApi, new_event: Any) -> None:
    auditor = user("carol", "read:audit")
    reply = await api.call("POST", "/internal/events", auditor, json={"events": [new_event()]})
    assert reply.status == 403
    assert reply.problem


async def test_unsigned_and_forged_identities_are_refused(api: SignedApi, new_event: Any) -> None:
    body = {"events": [new_event()]}
    unsigned = await api.call("POST", "/internal/events", None, json=body)
    assert unsigned.status == 401
    assert unsigned.problem

    headers = api.caller.headers(TIMESHEETS, "POST", api.base_url + "/internal/events")
    headers["x-identity-subject"] = "approvals"  # a captured header set, re-labelled
    forged = await api.call(
        "POST",
        "/internal/events",
        None,
        data=json.dumps(body),
        headers={**headers, "content-type": "application/json"},
    )
    assert forged.status == 401


async def test_a_service_cannot_write_events_under_another_name(api: SignedApi, new_event: Any) -> None:
    events = [new_event(source="timesheets"), new_event(source="approvals")]
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    assert reply.status == 422
    assert reply.fields() == {"events.1.source"}
    ok = await api.call("POST", "/internal/events", APPROVALS, json={"events": events[1:]})
    assert ingest_counts(ok.body) == {"accepted": 1, "duplicates": 0}


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(event))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


def _with(event: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(event))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"deep": value}


BAD_EVENTS = [
    ("events.0.id", lambda e: _with(e, "not-a-uuid", "id")),
    ("events.0.id", lambda e: _without(e, "id")),
    ("events.0.occurred_at", lambda e: _with(e, "2026-11-27T10:00:00", "occurred_at")),  # no offset
    ("events.0.occurred_at", lambda e: _with(e, "yesterday", "occurred_at")),
    ("events.0.source", lambda e: _with(e, "Time Sheets", "source")),
    ("events.0.actor.subject", lambda e: _with(e, "", "actor", "subject")),
    ("events.0.actor.subject", lambda e: _with(e, "ali\u0000ce", "actor", "subject")),
    ("events.0.actor.kind", lambda e: _with(e, "robot", "actor", "kind")),
    ("events.0.actor.issuer", lambda e: _without(e, "actor", "issuer")),
    ("events.0.action", lambda e: _with(e, "Timesheet Created!", "action")),
    ("events.0.resource.type", lambda e: _with(e, "", "resource", "type")),
    ("events.0.resource.id", lambda e: _with(e, "x" * 513, "resource", "id")),
    ("events.0.outcome", lambda e: _with(e, "ok", "outcome")),
    ("events.0.request_id", lambda e: _with(e, "r" * 129, "request_id")),
    ("events.0.details", lambda e: _with(e, ["not", "an", "object"], "details")),
    ("events.0.details", lambda e: _with(e, {"note": "bad\u0000byte"}, "details")),
    ("events.0.details", lambda e: _with(e, {"blob": "x" * 17_000}, "details")),
    ("events.0.details", lambda e: _with(e, _nested(20), "details")),
    ("events.0.surprise", lambda e: _with(e, 1, "surprise")),
]


@pytest.mark.parametrize(("field", "spoil"), BAD_EVENTS)
async def test_each_bad_field_is_a_422_naming_it(
    api: SignedApi, new_event: Any, conforms: Any, field: str, spoil: Any
) -> None:
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [spoil(new_event())]})
    assert reply.status == 422, reply.text
    assert reply.problem
    assert field in reply.fields(), reply.body
    conforms("Problem", reply.body)


async def test_non_finite_numbers_are_refused(api: SignedApi, new_event: Any) -> None:
    raw = json.dumps({"events": [new_event()]}).replace('"hours": 7.5', '"hours": NaN')
    assert "NaN" in raw
    reply = await api.call(
        "POST", "/internal/events", TIMESHEETS, data=raw, headers={"content-type": "application/json"}
    )
    assert reply.status == 422
    assert reply.fields() == {"events.0.details.hours"}  # named by the kit's body parser


async def test_batch_bounds_and_body_errors(api: SignedApi, new_event: Any) -> None:
    empty = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": []})
    assert (empty.status, empty.fields()) == (422, {"events"})
    too_many = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [new_event()] * 501})
    assert too_many.status in (413, 422)
    not_json = await api.call(
        "POST", "/internal/events", TIMESHEETS, data="{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status == 400
    assert not_json.problem
    wrong_type = await api.call(
        "POST", "/internal/events", TIMESHEETS, data="x=1", headers={"content-type": "text/plain"}
    )
    assert wrong_type.status == 415
    event = new_event()
    coded = await api.call(
        "POST",
        "/internal/events",
        TIMESHEETS,
        data=json.dumps({"events": [event]}, separators=(",", ":")),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert coded.status == 415, coded.text  # not read as if uncoded (RFC 9110 §15.5.16)
    assert coded.headers["accept-encoding"] == "identity"
    again = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
    assert ingest_counts(again.body) == {"accepted": 1, "duplicates": 0}  # nothing was stored
    huge = await api.call(
        "POST",
        "/internal/events",
        TIMESHEETS,
        data=json.dumps({"events": [new_event()], "pad": "x" * (11 << 20)}),
        headers={"content-type": "application/json"},
    )
    assert huge.status == 413
    assert huge.problem


async def test_a_full_batch_of_500_small_events_is_accepted(api: SignedApi, new_event: Any) -> None:
    events = [new_event(details={}) for _ in range(500)]
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    assert ingest_counts(reply.body) == {"accepted": 500, "duplicates": 0}


async def test_a_full_batch_of_the_largest_events_fits_the_body_limit(api: SignedApi, new_event: Any) -> None:
    events = [new_event(details={"blob": "x" * 16_000}) for _ in range(500)]
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    assert reply.status == 200, reply.text[:300]
    assert ingest_counts(reply.body) == {"accepted": 500, "duplicates": 0}


async def test_event_ids_are_compared_as_uuids(api: SignedApi, new_event: Any) -> None:
    event = new_event()
    await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
    upper = dict(event, id=str(uuid.UUID(event["id"])).upper())
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [upper]})
    assert ingest_counts(reply.body) == {"accepted": 0, "duplicates": 1}


@pytest.mark.parametrize(("sender", "claimed"), [("timesheets", APPROVALS), ("gateway", APPROVALS)])
async def test_a_key_cannot_sign_events_as_another_writer(
    audit_url: str,
    audit_schema: str,
    new_event: Any,
    identity_keys: dict[str, str],
    sender: str,
    claimed: Identity,
) -> None:
    """Issue 13's attack: a holder of one writer's key (or of the gateway's) signs, correctly, as the
    approvals service to make the trail say ``source: approvals``. The key's pair fixes who may be
    asserted with it, so the audit service refuses before reading the body, and stores nothing."""
    forged = new_event(source=claimed.subject)
    headers = pair_signer(identity_keys, sender, "audit").headers(
        claimed, method="POST", target="/internal/events"
    )
    before = (
        REGISTRY.get_sample_value("identity_verification_failures_total", {"reason": "wrong_principal"}) or 0
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{audit_url}/internal/events", json={"events": [forged]}, headers=headers) as response,
    ):
        assert response.status == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert (await response.json())["reason"] == "wrong_principal"
    assert await stored(audit_schema, [forged["id"]]) == []
    after = REGISTRY.get_sample_value("identity_verification_failures_total", {"reason": "wrong_principal"})
    assert after == before + 1
