"""A small bad body never makes a large answer: the list of validation errors is bounded.

A body of 80,000 unknown members (869 KB) was answered with every one of them: an 8.9 MB 422 listing
80,003 errors, in 1.5 s (the upload's 16 MiB limit let 2.3 MB of body make a 22.6 MB answer). Every
validation problem now carries the first ``svckit.problems.MAX_FIELD_ERRORS`` errors and, when there
were more, ``errors_total``: how many there were. A problem with fewer is as it always was."""

from __future__ import annotations

import json
import uuid

import asyncpg
from svckit.problems import MAX_FIELD_ERRORS

from testkit.client import SignedApi
from testkit.fixtures import user

from .test_upload import batch_client, rows, stored

WHO = user("bounds", "read:timesheets", "create:timesheets")
#: an answer of MAX_FIELD_ERRORS short errors and the problem's own members fits in this
SMALL = 16 * 1024


async def test_many_unknown_members_give_a_bounded_answer(api: SignedApi) -> None:
    body = {"date": "2026-11-23", "project": "P", "hours": 1} | {f"k{i}": 1 for i in range(20_000)}
    reply = await api.call("POST", "/timesheets", WHO, json=body)
    assert reply.status == 422, reply.text[:300]
    assert reply.problem
    assert len(reply.text.encode()) < SMALL, len(reply.text)
    assert len(reply.body["errors"]) == MAX_FIELD_ERRORS
    assert reply.body["errors_total"] == 20_000
    assert reply.body["errors"][0] == {
        "field": "k0",
        "loc": ["k0"],
        "message": "Extra inputs are not permitted",
        "type": "extra_forbidden",
    }


async def test_many_values_the_json_rules_refuse_give_a_bounded_answer(api: SignedApi) -> None:
    """The kit's own I-JSON rules (svckit.body.parse_json: here non-finite numbers) name each value
    they refuse, before any model: bounded the same way."""
    raw = "{" + ", ".join(f'"k{i}": NaN' for i in range(5_000)) + "}"
    reply = await api.call(
        "POST", "/timesheets", WHO, data=raw.encode(), headers={"content-type": "application/json"}
    )
    assert reply.status == 422, reply.text[:300]
    assert len(reply.text.encode()) < SMALL, len(reply.text)
    assert len(reply.body["errors"]) == MAX_FIELD_ERRORS
    assert reply.body["errors_total"] == 5_000


async def test_many_unknown_query_parameters_give_a_bounded_answer(api: SignedApi) -> None:
    query = "&".join(f"p{i}=1" for i in range(1_000))
    reply = await api.call("GET", f"/timesheets?{query}", WHO)
    assert reply.status == 422, reply.text[:300]
    assert len(reply.body["errors"]) == MAX_FIELD_ERRORS
    assert reply.body["errors_total"] == 1_000


async def test_an_upload_of_many_bad_rows_gives_a_bounded_answer(
    api: SignedApi, db: asyncpg.Connection
) -> None:
    prefix = uuid.uuid4().hex[:8]
    batch = rows(1_000, prefix)
    for row in batch:
        row["hours"] = 25
        row["extra"] = "x"
    reply = await api.call("POST", "/timesheets/upload", batch_client(), json={"entries": batch})
    assert reply.status == 422, reply.text[:300]
    assert len(reply.body["errors"]) == MAX_FIELD_ERRORS
    assert reply.body["errors_total"] == 2_000
    assert "1000 of 1000 rows" in reply.body["detail"]
    assert await stored(db, prefix) == 0


async def test_an_upload_with_many_unknown_members_gives_a_bounded_answer(api: SignedApi) -> None:
    body: dict[str, object] = {"entries": []} | {f"k{i}": 1 for i in range(20_000)}
    reply = await api.call("POST", "/timesheets/upload", batch_client(), json=body)
    assert reply.status == 422, reply.text[:300]
    assert len(reply.text.encode()) < SMALL, len(reply.text)
    assert reply.body["errors_total"] >= 20_000


async def test_a_problem_with_few_errors_is_unchanged(api: SignedApi) -> None:
    body = {"date": "2026-11-23", "project": "P", "hours": 1, "a": 1, "b": 2}
    reply = await api.call("POST", "/timesheets", WHO, json=body)
    assert reply.status == 422
    assert set(reply.body) == {"type", "title", "status", "detail", "request_id", "errors"}
    assert [error["field"] for error in reply.body["errors"]] == ["a", "b"]
    assert json.loads(reply.text) == reply.body
