"""GET /audit/events: read:audit only, filters combined with AND, newest first, stable cursors."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

TIMESHEETS = Identity.service("timesheets")
APPROVALS = Identity.service("approvals")
AUDITOR = user("carol", "read:audit", name="Carol")


@pytest.fixture(scope="module")
async def seeded(api: SignedApi, new_event: Any) -> dict[str, Any]:
    """A small, recognisable trail: its own actors and resources, so other tests' records don't matter."""
    tag = uuid.uuid4().hex[:8]
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    entry = f"entry-{tag}"
    base = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    created = [
        new_event(subject=alice, resource_id=f"{entry}-{n}", occurred_at=base + timedelta(hours=n))
        for n in range(7)
    ]
    deleted = new_event(
        subject=alice,
        action="timesheet.deleted",
        resource_id=f"{entry}-0",
        occurred_at=base + timedelta(days=1),
    )
    decided = new_event(
        source="approvals",
        subject=bob,
        action="approval.decided",
        resource_id=f"{entry}-1",
        occurred_at=base + timedelta(days=2),
        details={"decision": "approved"},
    )
    denied = new_event(
        subject=bob,
        action="timesheet.deleted",
        resource_id=f"{entry}-1",
        outcome="denied",
        occurred_at=base + timedelta(days=3),
    )
    for identity, events in ((TIMESHEETS, [*created, deleted, denied]), (APPROVALS, [decided])):
        reply = await api.call("POST", "/internal/events", identity, json={"events": events})
        assert reply.status == 200, reply.text
    return {"alice": alice, "bob": bob, "entry": entry, "base": base, "created": created}


async def fetch(api: SignedApi, **params: str) -> Any:
    reply = await api.call("GET", "/audit/events", AUDITOR, params=params)
    assert reply.status == 200, reply.text
    return reply.body


async def test_records_come_back_in_the_documented_shape(
    api: SignedApi, seeded: dict[str, Any], conforms: Any
) -> None:
    page = await fetch(api, actor=seeded["bob"], source="approvals")
    conforms("EventsPage", page)
    [record] = page["items"]
    assert record["action"] == "approval.decided"
    assert record["actor"]["subject"] == seeded["bob"]
    assert record["actor"]["kind"] == "user"
    assert record["resource"] == {"type": "timesheet", "id": f"{seeded['entry']}-1"}
    assert record["details"] == {"decision": "approved"}
    assert record["occurred_at"] == "2026-11-25T09:00:00Z"
    assert len(record["hash"]) == 64
    assert record["seq"] >= 1
    assert page["next_cursor"] is None


async def test_filters_combine(api: SignedApi, seeded: dict[str, Any]) -> None:
    alice, bob, entry, base = seeded["alice"], seeded["bob"], seeded["entry"], seeded["base"]
    assert len((await fetch(api, actor=alice))["items"]) == 8
    assert len((await fetch(api, actor=alice, action="timesheet.created"))["items"]) == 7
    assert len((await fetch(api, actor=bob, outcome="denied"))["items"]) == 1
    assert len((await fetch(api, actor=bob, actor_issuer="http://localhost:9000/"))["items"]) == 2
    assert (await fetch(api, actor=bob, actor_issuer="https://elsewhere.example/"))["items"] == []
    assert len((await fetch(api, actor=alice, client_id="timesheets-spa"))["items"]) == 8
    on_entry = await fetch(api, resource_type="timesheet", resource_id=f"{entry}-1")
    # Newest first means most recently *recorded* (chain order): the approvals batch came last.
    assert [r["action"] for r in on_entry["items"]] == [
        "approval.decided",
        "timesheet.deleted",
        "timesheet.created",
    ]
    window = await fetch(
        api,
        actor=alice,
        **{"from": (base + timedelta(hours=2)).isoformat(), "to": (base + timedelta(hours=5)).isoformat()},
    )
    assert [r["resource"]["id"] for r in window["items"]] == [f"{entry}-{n}" for n in (4, 3, 2)]


async def test_cursor_pages_walk_everything_once_newest_first(
    api: SignedApi, seeded: dict[str, Any], new_event: Any
) -> None:
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"actor": seeded["alice"], "limit": "3"}
        if cursor:
            params["cursor"] = cursor
        page = await fetch(api, **params)
        seen.extend(r["seq"] for r in page["items"])
        pages += 1
        if pages == 1:
            # Records added while paging must not shift later pages.
            await api.call(
                "POST", "/internal/events", TIMESHEETS, json={"events": [new_event(subject=seeded["alice"])]}
            )
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 8
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 8


async def test_reading_needs_read_audit(api: SignedApi) -> None:
    employee = user("alice", "read:timesheets", "create:timesheets")
    reply = await api.call("GET", "/audit/events", employee)
    assert reply.status == 403
    assert reply.problem
    assert "read:audit" in reply.body["detail"]
    unsigned = await api.call("GET", "/audit/events", None)
    assert unsigned.status == 401
    service = await api.call("GET", "/audit/events", TIMESHEETS)
    assert service.status == 403


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        ({"cursor": "czA"}, "cursor"),  # "s0": well-formed but impossible
        ({"cursor": b64(f"s{2**63}")}, "cursor"),  # beyond a bigint (answered 500 before)
        ({"cursor": b64("s" + "9" * 40)}, "cursor"),
        ({"cursor": b64("s\u0661\u0662")}, "cursor"),  # digits, but not ASCII ones
        ({"from": "0001-01-01T00:00:00+14:00"}, "from"),  # before year 1 in UTC (answered 500 before)
        ({"to": "9999-12-31T23:59:59-14:00"}, "to"),  # after 9999 in UTC
        ({"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z", "limit": "1e3"}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-11-23T10:00:00"}, "from"),  # no offset: ambiguous
        ({"from": "2026-11-23T10:00:00Z", "to": "2026-11-23T09:00:00Z"}, "to"),
        ({"outcome": "maybe"}, "outcome"),
        ({"actor": ""}, "actor"),
        ({"acter": "alice"}, "acter"),
    ],
)
async def test_bad_query_parameters_are_named(
    api: SignedApi, params: dict[str, str], field: str, conforms: Any
) -> None:
    reply = await api.call("GET", "/audit/events", AUDITOR, params=params)
    assert reply.status == 422, reply.text
    assert field in reply.fields(), reply.body
    conforms("Problem", reply.body)


@pytest.mark.parametrize(
    "params",
    [
        {"from": "0001-01-01T00:00:00Z"},
        {"to": "9999-12-31T23:59:59Z"},
        {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"},
        {"cursor": b64(f"s{2**63 - 1}")},  # the largest position there can be: an empty page
    ],
)
async def test_extreme_but_valid_parameters_answer(api: SignedApi, params: dict[str, str]) -> None:
    reply = await api.call("GET", "/audit/events", AUDITOR, params=params)
    assert reply.status == 200, reply.text


@pytest.mark.parametrize("anchor", [f"{2**63}:{'0' * 64}", "9" * 35 + ":" + "0" * 64, "0:" + "0" * 64])
async def test_anchor_positions_are_bounded(api: SignedApi, anchor: str) -> None:
    reply = await api.call("GET", "/audit/verify", AUDITOR, params={"anchor": anchor})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"anchor"}


async def test_a_repeated_parameter_is_refused(api: SignedApi) -> None:
    reply = await api.call("GET", "/audit/events?actor=a&actor=b", AUDITOR)
    assert reply.status == 422
    assert reply.fields() == {"actor"}


async def test_a_leap_second_in_a_range_reads_as_the_next_second_begins(
    api: SignedApi, new_event: Any
) -> None:
    # RFC 3339 (5.6, 5.7) spells the leap second 23:59:60; it was a 422 claiming "unexpected extra
    # characters". It is read as Postgres reads it, the start of the next second (2017-01-01T00:00:00Z):
    # an event there is inside `from` and outside `to`, one a moment before the reverse
    subject = f"leap-{uuid.uuid4().hex[:12]}"
    before = new_event(subject=subject, occurred_at=datetime(2016, 12, 31, 23, 59, 59, 999999, UTC))
    after = new_event(subject=subject, occurred_at=datetime(2017, 1, 1, tzinfo=UTC))
    stored = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [before, after]})
    assert stored.status == 200, stored.text
    for params, expected in (
        ({"from": "2016-12-31T23:59:60Z"}, after),
        ({"to": "2016-12-31T23:59:60Z"}, before),
        ({"from": "2017-01-01T00:59:60+01:00"}, after),  # the same instant with an offset
    ):
        page = await api.call("GET", "/audit/events", AUDITOR, params={"actor": subject, **params})
        assert page.status == 200, page.text
        assert [item["id"] for item in page.body["items"]] == [expected["id"]], params
    # the last second there is has no next one in range: the same 422 as any instant past it
    late = await api.call("GET", "/audit/events", AUDITOR, params={"to": "9999-12-31T23:59:60Z"})
    assert late.status == 422, late.text
    assert late.fields() == {"to"}
