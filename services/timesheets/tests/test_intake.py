"""The one-pass read of ``POST /timesheets`` bodies (``timesheets.intake.fast_entry``) takes a body
only when ``parse_body`` would read the same entry from it, and gives way on everything else: over a
corpus of valid and awkward bodies, the entry read is ``parse_body``'s, or it is None and
``read_entry`` answers with ``parse_body``'s problem."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from starlette.requests import Request
from svckit.body import parse_body
from svckit.contracts.timesheets import ApplyDecision, EntryIn
from svckit.problems import Problem
from timesheets.intake import fast_decision, fast_entry, read_decision, read_entry

pytestmark = pytest.mark.unit

M = TypeVar("M")

BASE: dict[str, Any] = {"date": "2026-11-23", "project": "Store rollout", "hours": 7.5, "notes": "wrk"}


def compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


VALID = [
    compact(BASE),
    json.dumps(BASE).encode(),  # spaces after the separators
    compact({**BASE, "notes": None}),
    compact({**BASE, "notes": ""}),
    compact({key: value for key, value in BASE.items() if key != "notes"}),
    compact({**BASE, "hours": 8}),
    compact({**BASE, "hours": 0.25}),
    compact({**BASE, "hours": 24}),
    compact({**BASE, "hours": 24.0}),
    compact({**BASE, "project": "  padded  "}),
    compact({**BASE, "project": "Café ☕ 𝄞", "notes": "ünïcødé"}),
    compact({"notes": "first", "hours": 1.5, "project": "Order", "date": "2099-12-31"}),
    b'{"date":"2000-01-01","project":"P","hours":7.50000000000000000001}',
    b'{"date":"2000-01-01","project":"P","hours":75e-1}',
    b'{"date":"2000-01-01","project":"P","hours":0.7500e1}',
    b'{"date":"2026-11-23","project":"P","hours":1,"notes":"a\\"b\\\\c\\/d\\n\\te"}',
    b'  {"date":"2026-11-23","project":"P","hours":1}  ',
]

#: valid, but the one-pass read gives way (escapes, spacing, \":\" in a string): read by parse_body
DECLINED = [
    b'{"date":"2026-11-23","project":"P","hours":1,"notes":"it said \\":\\" twice \\":"}',
    b'{"date" :"2026-11-23","project":"P","hours":8}',
    b'{"date":"2026-11-23","project":"P\\u0041","hours":8}',
    b'{"d\\u0061te":"2026-11-23","project":"P","hours":8}',
    b'{"date":"2026-11-23","project":"P","hours":8,"notes":"line\\u2028sep"}',
    b'{\n  "date": "2026-11-23",\n  "project": "P",\n  "hours": 8\n}',
]

INVALID = [
    b"",
    b"{",
    b"[]",
    b"null",
    b'"text"',
    b"{}",
    compact({**BASE, "hours": 7.3}),
    compact({**BASE, "hours": 0}),
    compact({**BASE, "hours": -1}),
    compact({**BASE, "hours": 25}),
    compact({**BASE, "hours": "8"}),
    compact({**BASE, "hours": True}),
    compact({**BASE, "hours": None}),
    compact({**BASE, "hours": [8]}),
    compact({**BASE, "hours": {"h": 8}}),
    compact({**BASE, "hours": 9007199254740993}),
    compact({**BASE, "date": "2026-13-01"}),
    compact({**BASE, "date": "1999-12-31"}),
    compact({**BASE, "date": "2100-01-01"}),
    compact({**BASE, "date": 20261123}),
    compact({**BASE, "date": "2026-11-23T00:00:00"}),
    compact({**BASE, "date": "26-11-23"}),
    compact({**BASE, "project": ""}),
    compact({**BASE, "project": "   "}),
    compact({**BASE, "project": "x" * 101}),
    compact({**BASE, "project": 5}),
    compact({**BASE, "notes": "x" * 2001}),
    compact({**BASE, "notes": 5}),
    compact({**BASE, "owner": "someone"}),
    compact({**BASE, "nested": {"a": [1, {"b": 2}]}}),
    compact({key: value for key, value in BASE.items() if key != "project"}),
    b'{"date":"2026-11-23","project":"P","hours":1e999}',
    b'{"date":"2026-11-23","project":"P","hours":-1e999}',
    b'{"date":"2026-11-23","project":"P","hours":NaN}',
    b'{"date":"2026-11-23","project":"P","hours":Infinity}',
    b'{"date":"2026-11-23","project":"P","hours":1' + b"0" * 400 + b"}",
    b'{"date":"2026-11-23","project":"P","hours":8,"hours":4}',
    b'{"date":"2026-11-23","project":"P","project":"Q","hours":8}',
    b'{"date":"2026-11-23","project":"P","hours":8,"notes":null,"notes":"x"}',
    b'{"date":"2026-11-23","project":"P","hours":8} x',
    b'{"date":"2026-11-23","project":"P","hours":8}{}',
    b'{"date":"2026-11-23","project":"P","hours":8,}',
    b"{'date':'2026-11-23','project':'P','hours':8}",
    b'{"date":"2026-11-23","project":"P\\ud800","hours":8}',
    b'{"date":"2026-11-23","project":"P","hours":8,"notes":"\\udc00"}',
    b'{"date":"2026-11-23","project":"P\\u0001","hours":8}',
    b'{"date":"2026-11-23","project":"P\x01","hours":8}',
    b'{"date":"2026-11-23","project":"P\tQ","hours":8}',
    b'{"date":"2026-11-23","project":"P\\x41","hours":8}',
    b'{"date":"2026-11-23","project":"P","hours":8,"notes":"\x07"}',
    b'{"date":"2026-11-23","project":"P","hours":8,"notes":"\\u0000"}',
    b"\xef\xbb\xbf" + compact(BASE),
    b'{"date":"2026-11-23","project":"\xff","hours":8}',
    b'{"date":"2026-11-23","project":"\xed\xa0\x80","hours":8}',
    b"[" * 40 + b"]" * 40,
    b'{"date":"2026-11-23","project":"P","hours":8,"notes":' + b"[" * 40 + b"]" * 40 + b"}",
]


def request_with(body: bytes, content_type: str = "application/json") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/timesheets",
        "headers": [(b"content-type", content_type.encode())],
        "query_string": b"",
    }
    return Request(scope, receive)


async def answered(reading: Awaitable[M]) -> M | tuple[int, Any]:
    """What a read makes of a body: the model, or the problem's status and document."""
    try:
        return await reading
    except Problem as exc:
        return exc.status, json.loads(bytes(exc.response().body))


async def general(body: bytes, content_type: str = "application/json") -> EntryIn | tuple[int, Any]:
    """What ``parse_body`` makes of the body."""
    return await answered(parse_body(request_with(body, content_type), EntryIn))


async def served(body: bytes, content_type: str = "application/json") -> EntryIn | tuple[int, Any]:
    """What the route reads (``read_entry``)."""
    return await answered(read_entry(request_with(body, content_type)))


@pytest.mark.parametrize("body", VALID)
async def test_a_valid_body_is_read_in_one_pass_as_parse_body_reads_it(body: bytes) -> None:
    expected = await general(body)
    assert isinstance(expected, EntryIn), expected
    entry = fast_entry(body)
    assert entry == expected
    assert entry is not None
    assert entry.canonical() == expected.canonical()
    assert entry.model_fields_set == expected.model_fields_set
    assert await served(body) == expected


@pytest.mark.parametrize("body", INVALID)
async def test_a_body_parse_body_refuses_is_never_taken(body: bytes) -> None:
    expected = await general(body)
    assert not isinstance(expected, EntryIn), body
    assert fast_entry(body) is None
    assert await served(body) == expected


@pytest.mark.parametrize("body", DECLINED)
async def test_a_valid_body_the_one_pass_read_declines_is_read_by_parse_body(body: bytes) -> None:
    expected = await general(body)
    assert isinstance(expected, EntryIn), expected
    assert fast_entry(body) is None
    assert await served(body) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
        "text/plain",
        "application/json; charset=latin-1",
        "",
    ],
)
@pytest.mark.parametrize("body", [compact(BASE), compact({**BASE, "hours": 7.3}), b"{"])
async def test_other_media_types_are_read_by_parse_body(content_type: str, body: bytes) -> None:
    assert await served(body, content_type) == await general(body, content_type)


async def test_a_body_only_the_general_path_reads_gives_the_same_entry() -> None:
    """Escapes and spacing make the one-pass read give way; the entry is the same all the same."""
    body = b'{\n "date" : "2026-11-23", "project": "Caf\\u00e9", "hours": 7.5\n}'
    assert fast_entry(body) is None
    read = await served(body)
    assert isinstance(read, EntryIn)
    assert read.project == "Café"


# ---- decisions: POST /internal/timesheets/{id}/decision (fast_decision, read_decision) -------------

BY: dict[str, Any] = {"issuer": "http://localhost:9000/", "subject": "boss", "name": "Bo", "client_id": "spa"}
DECISION: dict[str, Any] = {
    "decision_id": "0b9a3c1e-6a55-4d1f-9d8e-2f1c7e0d4a11",
    "decision": "approved",
    "comment": "fine",
    "by": BY,
    "at": "2026-12-04T10:00:00.123456Z",
}

DECISIONS_VALID = [
    compact(DECISION),
    json.dumps(DECISION).encode(),  # spaces after the separators
    compact({**DECISION, "comment": None}),
    compact({key: value for key, value in DECISION.items() if key != "comment"}),
    compact({**DECISION, "decision": "rejected", "comment": ""}),
    compact({**DECISION, "by": {"issuer": "i", "subject": "s"}}),
    compact({**DECISION, "by": {**BY, "name": None}}),
    compact({**DECISION, "at": "2026-12-04T11:00:00+01:00"}),
    compact({**DECISION, "at": "2026-12-04T10:00:00Z"}),
    compact({**DECISION, "comment": 'Café ☕ 𝄞 "quoted" back\\slash'}),
    compact({"at": DECISION["at"], "by": BY, "decision": "approved", "decision_id": DECISION["decision_id"]}),
    compact({**DECISION, "comment": 'it said "at":"now"'}),
    compact({**DECISION, "decision_id": DECISION["decision_id"].upper()}),
    compact({**DECISION, "comment": "a\\u0041"}),
    b'{"decision_id" :"0b9a3c1e-6a55-4d1f-9d8e-2f1c7e0d4a11","decision":"approved","by":{"issuer":"i",'
    b'"subject":"s"},"at":"2026-12-04T10:00:00Z"}',
]

DECISIONS_INVALID = [
    b"",
    b"{",
    b"[]",
    b"{}",
    compact({**DECISION, "decision": "maybe"}),
    compact({**DECISION, "decision_id": "not-a-uuid"}),
    compact({**DECISION, "decision_id": 5}),
    compact({**DECISION, "comment": "x" * 2001}),
    compact({**DECISION, "comment": 5}),
    compact({**DECISION, "comment": True}),
    compact({**DECISION, "by": None}),
    compact({**DECISION, "by": {**BY, "subject": ""}}),
    compact({**DECISION, "by": {**BY, "extra": "x"}}),
    compact({**DECISION, "by": {**BY, "name": 5}}),
    compact({**DECISION, "by": "boss"}),
    compact({**DECISION, "extra": {"a": [1]}}),
    compact({**DECISION, "at": "2026-12-04T10:00:00"}),
    compact({**DECISION, "at": "0001-01-01T00:00:00+14:00"}),
    compact({**DECISION, "at": "yesterday"}),
    compact({**DECISION, "at": 1764842400}),  # a number: a Unix time to pydantic, not RFC 3339
    compact({**DECISION, "at": "1764842400"}),
    compact({**DECISION, "at": "2026-12-04T10:00Z"}),  # no seconds
    compact({**DECISION, "at": "2026-12-04T11:00:00+0100"}),  # no colon in the offset
    compact({**DECISION, "at": 9007199254740993}),
    compact({key: value for key, value in DECISION.items() if key != "at"}),
    compact({key: value for key, value in DECISION.items() if key != "by"}),
    compact(DECISION)[:-1] + b',"at":"2026-12-05T10:00:00Z"}',
    compact(DECISION)[:-1] + b',"decision":"rejected"}',
    compact(DECISION).replace(b'"name":"Bo"', b'"name":"Bo","name":"Al"'),
    compact(DECISION).replace(b'"subject":"boss"', b'"subject":"boss","subject":"boss"'),
    compact(DECISION).replace(b'"fine"', b'"f\\ud800"'),
    compact(DECISION).replace(b'"fine"', b'"f\x01"'),
    compact(DECISION).replace(b'"fine"', b'"\xff"'),
    compact(DECISION).replace(b'"2026-12-04T10:00:00.123456Z"', b"1e999"),
    compact(DECISION).replace(b'"2026-12-04T10:00:00.123456Z"', b"NaN"),
    compact(DECISION).replace(b'"2026-12-04T10:00:00.123456Z"', b"Infinity"),
    compact(DECISION).replace(b'"2026-12-04T10:00:00.123456Z"', b"1" + b"0" * 400),
    compact(DECISION) + b" x",
    compact(DECISION)[:-1] + b",}",
    b"\xef\xbb\xbf" + compact(DECISION),
    compact({**DECISION, "comment": "[" * 40 + "]" * 40}).replace(b'"[[', b"[[").replace(b']]"', b"]]"),
]


async def general_decision(body: bytes, content_type: str = "application/json") -> Any:
    return await answered(parse_body(request_with(body, content_type), ApplyDecision))


async def served_decision(body: bytes, content_type: str = "application/json") -> Any:
    return await answered(read_decision(request_with(body, content_type)))


@pytest.mark.parametrize("body", DECISIONS_VALID)
async def test_a_valid_decision_is_read_as_parse_body_reads_it(body: bytes) -> None:
    expected = await general_decision(body)
    assert isinstance(expected, ApplyDecision), expected
    fast = fast_decision(body)
    assert fast is None or (fast == expected and fast.model_fields_set == expected.model_fields_set)
    assert await served_decision(body) == expected


@pytest.mark.parametrize("comment", [None, "", "fine", "Café ☕", 'with "quotes"'])
@pytest.mark.parametrize("name", [None, "Bo"])
def test_what_the_approvals_service_sends_is_read_in_one_pass(comment: str | None, name: str | None) -> None:
    """Its bodies (``approvals.peer``: ``ApplyDecision.model_dump_json()``, compact) take the one-pass
    read, which gives the model they were written from."""
    sent = ApplyDecision.model_validate({**DECISION, "comment": comment, "by": {**BY, "name": name}})
    assert fast_decision(sent.model_dump_json().encode()) == sent


@pytest.mark.parametrize("body", DECISIONS_INVALID)
async def test_a_decision_parse_body_refuses_is_never_taken(body: bytes) -> None:
    expected = await general_decision(body)
    assert not isinstance(expected, ApplyDecision), body
    assert fast_decision(body) is None
    assert await served_decision(body) == expected


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "text/plain", "application/x+json", ""],
)
@pytest.mark.parametrize("body", [compact(DECISION), compact({**DECISION, "decision": "no"}), b"{"])
async def test_a_decision_of_another_media_type_is_read_by_parse_body(content_type: str, body: bytes) -> None:
    assert await served_decision(body, content_type) == await general_decision(body, content_type)
