"""The one-pass read of ``POST /timesheets`` bodies (``timesheets.intake.fast_entry``) takes a body
only when ``parse_body`` would read the same entry from it, and gives way on everything else: over a
corpus of valid and awkward bodies, the entry read is ``parse_body``'s, or it is None and
``read_entry`` answers with ``parse_body``'s problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.requests import Request
from svckit.body import parse_body
from svckit.contracts.timesheets import EntryIn
from svckit.problems import Problem
from timesheets.intake import fast_entry, read_entry

pytestmark = pytest.mark.unit

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


async def general(body: bytes, content_type: str = "application/json") -> EntryIn | tuple[int, Any]:
    """What ``parse_body`` makes of the body: the entry, or the problem's status and document."""
    try:
        return await parse_body(request_with(body, content_type), EntryIn)
    except Problem as exc:
        return exc.status, json.loads(bytes(exc.response().body))


async def served(body: bytes, content_type: str = "application/json") -> EntryIn | tuple[int, Any]:
    """What the route reads (``read_entry``), the same way."""
    try:
        return await read_entry(request_with(body, content_type))
    except Problem as exc:
        return exc.status, json.loads(bytes(exc.response().body))


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
