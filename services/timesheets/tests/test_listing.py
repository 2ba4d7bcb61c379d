"""Listing: only the caller's entries, filters, stable keyset pagination, bad parameters named."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from svckit.identity import Identity
from timesheets import store

from testkit.client import SignedApi
from testkit.fixtures import user

ALL = ("read:timesheets", "create:timesheets", "delete:timesheets")


def someone() -> Identity:
    return user(f"lister-{uuid.uuid4().hex[:8]}", *ALL)


async def add(api: SignedApi, who: Identity, date: str, project: str = "P") -> dict[str, Any]:
    reply = await api.call("POST", "/timesheets", who, json={"date": date, "project": project, "hours": 1})
    assert reply.status == 201
    body: dict[str, Any] = reply.body
    return body


async def pages(api: SignedApi, who: Identity, query: str = "", limit: int = 2) -> list[list[str]]:
    seen: list[list[str]] = []
    cursor = None
    while True:
        params = {"limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        reply = await api.call("GET", "/timesheets" + query, who, params=params)
        assert reply.status == 200, reply.text
        seen.append([item["id"] for item in reply.body["items"]])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return seen


def flat(nested: list[list[str]]) -> list[str]:
    return [item for page in nested for item in page]


async def test_only_own_entries_newest_date_first(api: SignedApi) -> None:
    alice, bob = someone(), someone()
    dates = ["2026-11-20", "2026-11-22", "2026-11-21", "2026-11-22"]
    made = [await add(api, alice, date) for date in dates]
    await add(api, bob, "2026-11-25")
    reply = await api.call("GET", "/timesheets", alice)
    assert reply.body["next_cursor"] is None
    ids = [item["id"] for item in reply.body["items"]]
    # Date desc, then newest created first among equal dates.
    assert ids == [made[3]["id"], made[1]["id"], made[2]["id"], made[0]["id"]]


async def test_pagination_is_stable_while_entries_change(api: SignedApi) -> None:
    alice = someone()
    made = [await add(api, alice, f"2026-10-{day:02d}") for day in range(1, 8)]
    expected = [item["id"] for item in reversed(made)]
    assert flat(await pages(api, alice, limit=3)) == expected
    assert [len(p) for p in await pages(api, alice, limit=3)] == [3, 3, 1]

    # Take page 1, then insert a newer entry and delete one not yet served: page 2 neither repeats
    # nor skips what was there.
    first = await api.call("GET", "/timesheets", alice, params={"limit": "3"})
    await add(api, alice, "2026-12-31")
    assert (await api.call("DELETE", f"/timesheets/{expected[4]}", alice)).status == 204
    rest = await api.call(
        "GET", "/timesheets", alice, params={"limit": "10", "cursor": first.body["next_cursor"]}
    )
    assert [item["id"] for item in rest.body["items"]] == [expected[3], expected[5], expected[6]]


async def test_filters(api: SignedApi) -> None:
    alice = someone()
    a = await add(api, alice, "2026-09-01", "Alpha")
    b = await add(api, alice, "2026-09-15", "Beta")
    c = await add(api, alice, "2026-09-30", "Alpha")

    async def ids(**params: str) -> list[str]:
        reply = await api.call("GET", "/timesheets", alice, params=params)
        assert reply.status == 200, reply.text
        return [item["id"] for item in reply.body["items"]]

    assert await ids(**{"from": "2026-09-15"}) == [c["id"], b["id"]]
    assert await ids(to="2026-09-15") == [b["id"], a["id"]]
    assert await ids(**{"from": "2026-09-02", "to": "2026-09-29"}) == [b["id"]]
    assert await ids(project="Alpha") == [c["id"], a["id"]]
    assert await ids(status="submitted", project="Beta") == [b["id"]]
    assert await ids(status="approved") == []
    assert flat(await pages(api, alice, "?project=Alpha", limit=1)) == [c["id"], a["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("from=2026-13-01", "from"),
        ("from=yesterday", "from"),
        ("to=1", "to"),
        ("from=2026-02-01&to=2026-01-01", "to"),
        ("status=pending", "status"),
        ("cursor=garbage", "cursor"),
        ("cursor=WyIyMDI2LTAxLTAxIl0", "cursor"),
        ("owner=bob", "owner"),
        ("limit=1&limit=2", "limit"),
    ],
)
async def test_bad_parameters_are_named(api: SignedApi, query: str, field: str) -> None:
    reply = await api.call("GET", f"/timesheets?{query}", someone())
    assert reply.status == 422, reply.text
    assert reply.problem
    assert reply.fields() == {field}


async def test_rows_are_made_from_records_as_make_makes_them(api: SignedApi, db: asyncpg.Connection) -> None:
    """``store.rows_of`` and ``EntryRow.of`` (one C call a row) give what ``EntryRow._make`` of the
    record's values gives: the same fields in the same order, of the row type."""
    who = someone()
    for day in ("2026-11-02", "2026-11-03"):
        await add(api, who, day)
    records = await db.fetch(
        f"SELECT {store.COLUMNS} FROM entries WHERE owner_subject = $1 {store.ORDER}", who.subject
    )
    made = store.rows_of(records)
    assert len(made) == 2
    assert made == [store.EntryRow._make(record.values()) for record in records]
    assert [store.EntryRow.of(record) for record in records] == made
    assert all(type(row) is store.EntryRow for row in made)
    assert made[0].date.isoformat() == "2026-11-03"
    assert made[0].owner == (who.issuer, who.subject)


async def test_a_project_is_one_project_however_its_accents_are_encoded(api: SignedApi) -> None:
    """The same "Café" typed (U+00E9, NFC) and pasted from a decomposed source (e + U+0301, NFD) look
    the same and were two projects: listed apart, filtered apart, summed apart. A project name is
    stored in NFC, and a filter is read the same way, so either spelling is the one project."""
    who = someone()
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    first = await add(api, who, "2026-06-01", composed)
    second = await add(api, who, "2026-06-02", decomposed)
    assert first["project"] == second["project"] == composed
    for spelling in ("Caf%C3%A9", "Cafe%CC%81"):
        reply = await api.call("GET", f"/timesheets?project={spelling}", who)
        assert reply.status == 200, reply.text
        assert {item["id"] for item in reply.body["items"]} == {first["id"], second["id"]}, spelling
    # a name whose NFC is longer than the limit is refused, not cut (U+0958 is U+0915 U+093C in NFC)
    reply = await api.call(
        "POST", "/timesheets", who, json={"date": "2026-06-03", "project": "\u0958" * 60, "hours": 1}
    )
    assert reply.status == 422, reply.text
    assert reply.fields() == {"project"}
