"""The one-pass reading of an ingest body (:func:`audit.intake.fast_read`) gives exactly what
``parse_body`` gives: the same batch when it takes a body, and it takes none that ``parse_body``
refuses (those are then answered by ``parse_body`` itself, as before)."""

from __future__ import annotations

import json
import math
import random
import uuid
from typing import Any, get_args

import pytest
from audit.intake import Intake, _Batch, _json_media_type, fast_read, read_batch
from audit.jsonb import jsonb_text
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from svckit.body import NotAccepted, parse_body, parse_json
from svckit.contracts.audit import (
    MAX_DETAILS_BYTES,
    MAX_NAME,
    MAX_REQUEST_ID,
    Actor,
    AuditEvent,
    IngestBatch,
    Resource,
)
from svckit.problems import Problem

pytestmark = pytest.mark.unit


def fast_batch(raw: bytes) -> IngestBatch | None:
    """The batch :func:`fast_read` takes from ``raw`` (None: it gives way to ``parse_body``)."""
    found = fast_read(raw)
    return None if found is None else found.batch


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "occurred_at": "2026-12-04T03:14:27.123456+01:00",
        "source": "timesheets",
        "actor": {"issuer": "http://localhost:9000/", "subject": "alice", "kind": "user", "client_id": "spa"},
        "action": "timesheet.created",
        "resource": {"type": "timesheet", "id": "42"},
        "outcome": "success",
        "request_id": "r-1",
        "details": {"project": "StoreZero", "hours": 7.5, "date": "2026-11-23"},
    }
    base.update(changes)
    return base


def sized(size: int) -> dict[str, Any]:
    """Details of ``size`` bytes as ``json.dumps`` writes them (the contract's measure), with
    multi-byte characters and names in another order than ``jsonb``'s."""
    details: dict[str, Any] = {"zz": "é" * 100, "a": [1.5, {"y": None}], "m": ""}
    missing = size - len(json.dumps(details, ensure_ascii=False).encode())
    details["m"] = "é" * (missing // 2) + "x" * (missing % 2)
    assert len(json.dumps(details, ensure_ascii=False).encode()) == size
    return details


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def spaced(document: Any) -> bytes:
    return json.dumps(document).encode()


ONE = event()
BODIES: list[bytes] = [
    compact({"events": [ONE]}),
    spaced({"events": [ONE]}),
    compact({"events": [event() for _ in range(50)]}),
    compact({"events": [event(details={})]}),
    compact({"events": [{k: v for k, v in ONE.items() if k not in ("details", "request_id")}]}),
    compact({"events": [event(request_id=None)]}),
    compact({"events": [event(details={"list": [1, {"x": [2, {"y": None}]}], "t": True, "f": -0.0})]}),
    compact({"events": [event(details={"unicode": "é ✓ 😀", "escaped": 'a"b\\c\n', "colon": 'a":b'})]}),
    json.dumps({"events": [event(details={"unicode": "é ✓ 😀"})]}, ensure_ascii=True).encode(),
    compact({"events": [event(details={"n": 9007199254740991})]}),
    compact({"events": [event(details={"n": 9007199254740992})]}),
    compact({"events": [event(details={"n": 123456789012345})]}),
    compact({"events": [event(details={"n": [-9007199254740992, 1]})]}),
    compact({"events": [event(details={"n": [1, 12345678901234567890.5]})]}),
    compact({"events": [event(request_id="1234567890123456789012345678901234567890")]}),
    compact({"events": [event(details={"f": 0.1, "g": 1e-7, "h": 1.5e300})]}),
    compact({"events": [event(details=nested(16))]}),
    compact({"events": [event(details=nested(17))]}),
    compact({"events": [event(details=nested(40))]}),
    compact({"events": [event(details={"x": "a" * 17000})]}),
    compact({"events": [event(actor={"issuer": "i", "subject": "s\u0000", "kind": "user"})]}),
    compact({"events": [event(source="approvals")]}),
    compact({"events": [event(occurred_at="2026-12-04T03:14:27")]}),
    compact({"events": [event(occurred_at="0001-01-01T00:00:00+14:00")]}),
    compact({"events": [event(occurred_at="9999-12-31T23:59:59-14:00")]}),
    compact({"events": [event(occurred_at="0001-01-01T00:00:00Z")]}),
    compact({"events": [event(occurred_at="2016-12-31T23:59:60Z")]}),  # a leap second
    compact({"events": [event(occurred_at="2016-02-30T23:59:60Z")]}),
    compact({"events": [event(occurred_at="9999-12-31T23:59:60Z")]}),
    compact({"events": [event(occurred_at=-62135596800)]}),
    compact({"events": [event(occurred_at="\\u0039999-12-31T23:59:59-14:00")]}).replace(b"\\\\", b"\\"),
    compact({"events": [event(actor={"issuer": "i", "subject": "s\u0000", "kind": "user"})]}),
    compact({"events": [event(resource={"type": "t", "id": "\u0000"})]}),
    compact({"events": [event(request_id="\u0000")]}),
    compact({"events": [event(request_id="a" * 129)]}),
    compact({"events": [event(actor={"issuer": "i" * 513, "subject": "s", "kind": "user"})]}),
    compact({"events": [event(actor={"issuer": "i", "subject": "", "kind": "user"})]}),
    compact({"events": [event(resource={"type": "t", "id": "x" * 513})]}),
    compact({"events": [event(occurred_at=1700000000)]}),
    compact({"events": [event(occurred_at="20261203")]}),
    compact({"events": [event(occurred_at="2026-12-04T03:14Z")]}),
    compact({"events": [event(id=str(uuid.uuid4()).replace("-", ""))]}),
    compact({"events": [event(extra=1)]}),
    compact({"events": []}),
    compact({"events": [event() for _ in range(501)]}),
    compact({"events": [ONE], "more": 1}),
    compact([ONE]),
    b"",
    b"{not json",
    b'{"events":[' + compact(ONE) + b"]} trailing",
    b"\xef\xbb\xbf" + compact({"events": [ONE]}),
    b'{"events":[' + compact(ONE)[:-1] + b',"outcome":"denied"}]}',  # a name twice in an event
    b'{"events":[' + compact(ONE)[:-1] + b',"outcome" :"denied"}]}',  # ... with a space before the colon
    compact({"events": [ONE]})[:-1] + b',"events":[]}',  # a name twice at the top
    compact({"events": [event(details={"a": 1})]}).replace(b'{"a":1}', b'{"a":1,"a":2}'),
    compact({"events": [event(details={"a": [{"b": 1}]})]}).replace(b'{"b":1}', b'{"b":1,"b":1}'),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b'"\\ud800"'),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b'"\\ud83d\\ude00"'),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"NaN"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"-Infinity"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"1e999"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"12345678901234567890"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"01"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b'"\x01"'),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b'"\xff"'),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b'"\\u0000"'),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"a"', b'"\\u0061"'),
    b'{"events":[' + compact(ONE) + b"]}\n",
    b' \n{"events":[' + compact(ONE) + b"]}",
    compact({"events": [event(details={"n": [1, 2, {"m": -9007199254740992}]})]}),
    compact({"events": [event(details={"n": [[[-9007199254740991]]], "m": 1000000000000000})]}),
    compact({"events": [event(details={"f": 1234567890123456.7, "g": -0.30000000000000004})]}),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"1234567890123456e-5"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"2.2250738585072011e-308"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"1.7976931348623159e308"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"-12345678901234567890123"),
    compact({"events": [event(details={"when": "0001-01-01", "until": "9999-12-31"})]}),
    compact({"events": [event(occurred_at="0001-01-01T00:00:00-01:00")]}),
    compact({"events": [event(occurred_at="9999-12-31T23:59:59+01:00")]}),
    compact({"events": [event(details=sized(MAX_DETAILS_BYTES))]}),
    compact({"events": [event(details=sized(MAX_DETAILS_BYTES + 1))]}),
    compact({"events": [event(), event(details=sized(MAX_DETAILS_BYTES + 1))]}),
    compact({"events": [event(details={"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]})]}),
    compact({"events": [event(details={"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]})]}),
    compact({"events": [event(details={"a": "[[[[[[[[[[[[[[[[[[{{{{{"})]}),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b"[1, Infinity]"),
    compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', b'{"b": NaN}'),
]


def slow(raw: bytes) -> IngestBatch | str:
    """What ``parse_body`` makes of ``raw``: the batch, or the kind of refusal."""
    try:
        document = parse_json(raw)
    except NotAccepted as exc:
        return type(exc).__name__
    try:
        return IngestBatch.model_validate(document)
    except ValidationError:
        return "ValidationError"


@pytest.mark.parametrize("raw", BODIES, ids=range(len(BODIES)))
def test_the_one_pass_reading_gives_what_parse_body_gives(raw: bytes) -> None:
    expected = slow(raw)
    fast = fast_batch(raw)
    if isinstance(expected, str):
        assert fast is None, f"parse_body refuses it ({expected}); the one pass took it"
    elif fast is not None:
        assert fast.model_dump() == expected.model_dump()
        assert all(isinstance(e, AuditEvent) for e in fast.events)
        assert [e.details for e in fast.events] == [e.details for e in expected.events]
        assert [type(v) for e in fast.events for v in e.details.values()] == [
            type(v) for e in expected.events for v in e.details.values()
        ]


def test_the_usual_bodies_take_the_one_pass() -> None:
    for raw in [*BODIES[:7], BODIES[14]]:  # 14: a request id of 40 digits (a string)
        assert fast_batch(raw) is not None, raw[:200]
    assert fast_batch(BODIES[7]) is None  # a string with '":' in it: parse_body reads that one


def test_the_one_pass_hands_on_each_details_form_as_the_chain_writes_it() -> None:
    """The details are written as JSON once per event: the text the contract's size check measures
    is the ``jsonb`` form the chain hashes (the same bytes in another key order), and it goes on to
    the store with the batch."""
    for raw in [*BODIES[:7], compact({"events": [event(details=sized(MAX_DETAILS_BYTES))]})]:
        found = fast_read(raw)
        assert found is not None, raw[:200]
        assert found.forms == [jsonb_text(e.details) for e in found.batch.events]
        for e, form in zip(found.batch.events, found.forms, strict=True):
            written = json.dumps(e.details, ensure_ascii=False)
            assert len(form.encode()) == len(written.encode())
            assert sorted(form) == sorted(written)


def test_numbers_of_many_digits_that_parse_body_takes_take_the_one_pass() -> None:
    """Only an integer beyond ±(2^53-1) makes the one pass give way, not every number written with 16
    digits or more: a float of that many digits, or an integer at the bounds, reads the same."""
    for details in (
        {"n": [1, 12345678901234567890.5]},
        {"n": 9007199254740991, "m": [-9007199254740991]},
        {"f": 1234567890123456.7, "g": -0.30000000000000004, "h": 1e23},
    ):
        raw = compact({"events": [event(details=details)]})
        fast = fast_batch(raw)
        assert fast is not None, details
        assert fast.model_dump() == IngestBatch.model_validate(parse_json(raw)).model_dump()
    for beyond in ({"n": 9007199254740992}, {"n": [{"m": [-9007199254740992]}]}):
        assert fast_batch(compact({"events": [event(details=beyond)]})) is None


def test_pydantic_reads_floats_as_float_does() -> None:
    """The one pass takes floats of any spelling because pydantic's JSON reader rounds them correctly,
    exactly as ``float`` (``parse_body``'s reader) does: held over many random spellings."""
    rng = random.Random(17)
    for _ in range(5000):
        whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25))).lstrip("0") or "0"
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        text = f"{rng.choice(['', '-'])}{whole}.{fraction}{rng.choice(['', f'e{rng.randint(-330, 310)}'])}"
        raw = compact({"events": [event(details={"a": "x"})]}).replace(b'"x"', text.encode())
        expected = float(text)
        fast = fast_batch(raw)
        if not math.isfinite(expected):
            assert fast is None
            continue
        assert fast is not None, text
        assert repr(fast.events[0].details["a"]) == repr(expected), text


def test_the_models_without_the_python_checks_state_the_same_contract() -> None:
    """The same fields, types and constraints (names and descriptions aside): only the checks written
    in Python differ, and ``fast_batch`` makes those for the whole body."""
    names = {"_Batch": "IngestBatch", "_Event": "AuditEvent", "_Actor": "Actor", "_Resource": "Resource"}

    def bare(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                names.get(key, key): bare(item)
                for key, item in value.items()
                if key not in ("title", "description")
            }
        if isinstance(value, list):
            return [bare(item) for item in value]
        if isinstance(value, str) and value.startswith("#/$defs/_"):
            return "#/$defs/" + names[value.removeprefix("#/$defs/")]
        return value

    assert bare(_Batch.model_json_schema()) == bare(IngestBatch.model_json_schema())


def test_the_models_without_the_python_checks_are_derived_from_the_contract() -> None:
    """Every field as the contract states it, bar the checks ``fast_batch`` makes for the whole body:
    a bound changed in the contract is a bound changed here (one source of truth)."""
    pairs: list[tuple[Any, Any]] = [(_Batch, IngestBatch)]
    seen = set()
    while pairs:
        derived, contract = pairs.pop()
        seen.add(contract)
        assert issubclass(derived, contract)
        assert derived.model_fields.keys() == contract.model_fields.keys()
        for name, field in derived.model_fields.items():
            original = contract.model_fields[name]
            assert (field.default, field.is_required()) == (original.default, original.is_required())
        for name in ("actor", "resource"):
            if name in derived.model_fields:
                pairs.append((derived.model_fields[name].annotation, contract.model_fields[name].annotation))
        if "events" in derived.model_fields:
            pairs.append((get_args(derived.model_fields["events"].annotation)[0], AuditEvent))
    assert seen == {IngestBatch, AuditEvent, Actor, Resource}

    def both(**changes: Any) -> tuple[bool, bool]:
        body = {"events": [event(**changes)]}
        accepted = []
        for model in (_Batch, IngestBatch):
            try:
                model.model_validate(body)
                accepted.append(True)
            except ValidationError:
                accepted.append(False)
        return accepted[0], accepted[1]

    actor = event()["actor"]
    # the checks written in Python: left to fast_batch (on the text)
    assert both(actor={**actor, "subject": "a\x00"}) == (True, False)
    assert both(occurred_at="0001-01-01T00:00:00+01:00") == (True, False)
    assert both(details=sized(MAX_DETAILS_BYTES + 1)) == (True, False)
    # the bounds: the contract's, in both
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (
            {"actor": {**actor, "issuer": "i" * MAX_NAME}},
            {"actor": {**actor, "issuer": "i" * (MAX_NAME + 1)}},
        ),
        ({"actor": {**actor, "subject": "s"}}, {"actor": {**actor, "subject": ""}}),
        ({"actor": {**actor, "name": "n" * MAX_NAME}}, {"actor": {**actor, "name": "n" * (MAX_NAME + 1)}}),
        ({"actor": {**actor, "client_id": "c" * 256}}, {"actor": {**actor, "client_id": "c" * 257}}),
        (
            {"resource": {"type": "t", "id": "x" * MAX_NAME}},
            {"resource": {"type": "t", "id": "x" * (MAX_NAME + 1)}},
        ),
        ({"request_id": "r" * MAX_REQUEST_ID}, {"request_id": "r" * (MAX_REQUEST_ID + 1)}),
        ({"request_id": None}, {"source": "Timesheets"}),
        ({"occurred_at": "2026-12-04T03:14:27Z"}, {"occurred_at": "20261203"}),  # RFC 3339 text only
    ]
    for changes, limit in cases:
        assert both(**changes) == (True, True), changes
        assert both(**limit) == (False, False), limit


def scope_with(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/internal/events", "headers": headers}


def receiving(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


def chunks(raw: bytes, size: int) -> list[dict[str, Any]]:
    parts = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
    return [
        {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
        for index, part in enumerate(parts)
    ]


async def outcome(request: Request, reader: Any) -> Any:
    try:
        batch = await reader(request)
    except Problem as exc:
        return ("problem", exc.status, exc.title)
    except ClientDisconnect:
        return "disconnect"
    return (batch.batch if isinstance(batch, Intake) else batch).model_dump()


JSON = [(b"content-type", b"application/json")]


@pytest.mark.parametrize(
    "headers",
    [
        JSON,
        [(b"content-type", b"Application/JSON")],
        [(b"content-type", b"application/json; charset=utf-8")],
        [(b"content-type", b"text/plain")],
        [(b"x-other", b"1"), (b"content-type", b"application/json"), (b"content-type", b"text/plain")],
        [(b"content-type", b"text/plain"), (b"content-type", b"application/json")],
        [],
        [*JSON, (b"content-encoding", b"gzip")],
        [(b"content-encoding", b"identity"), *JSON],
    ],
)
def test_the_media_type_is_read_from_the_scope_as_request_headers_read_it(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """...and a body with a ``Content-Encoding`` is left to ``parse_body`` (415 unless identity)."""
    scope = scope_with(headers)
    request_headers = Request(scope).headers
    expected = (
        request_headers.get("content-type", "").lower() == "application/json"
        and "content-encoding" not in request_headers
    )
    assert _json_media_type(scope) is expected


@pytest.mark.parametrize("raw", [BODIES[0], BODIES[2], BODIES[7], BODIES[20], b"{not json", b""])
@pytest.mark.parametrize("size", [1 << 20, 7])
@pytest.mark.parametrize("headers", [JSON, [(b"content-type", b"application/json; charset=utf-8")]])
async def test_read_batch_answers_as_parse_body_whether_in_one_message_or_many(
    raw: bytes, size: int, headers: list[tuple[bytes, bytes]]
) -> None:
    """The body read straight from ``receive`` (the fast path), handed on to ``parse_body`` when the
    fast path gives way: the same batch or the same problem as ``parse_body`` on the request."""
    expected = await outcome(Request(scope_with(headers), receiving(*chunks(raw, size))), parse_body_of)
    found = await outcome(Request(scope_with(headers), receiving(*chunks(raw, size))), read_batch)
    assert found == expected


async def parse_body_of(request: Request) -> IngestBatch:
    return await parse_body(request, IngestBatch)


async def test_a_client_gone_before_the_whole_body_is_a_disconnect_as_in_request_body() -> None:
    first = {"type": "http.request", "body": BODIES[0][:10], "more_body": True}
    expected = await outcome(Request(scope_with(JSON), receiving(first)), parse_body_of)
    assert expected == "disconnect"
    assert await outcome(Request(scope_with(JSON), receiving(first)), read_batch) == expected
