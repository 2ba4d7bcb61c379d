"""The contracts: each published schema says what its model accepts, no more and no less (checked on
the boundary values of every rule), and the audit event survives the trip from writer to audit
service unchanged."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from svckit.context import request_id_var
from svckit.contracts.approvals import DecisionIn
from svckit.contracts.audit import (
    AuditEvent,
    IngestBatch,
    InvalidEvent,
    decode_checkpoint_cursor,
    decode_cursor,
    encode_checkpoint_cursor,
    encode_cursor,
    outbox_values,
)
from svckit.contracts.fields import (
    CONTROL_CHARS,
    NAME_PATTERN,
    display_text,
    no_bidi_controls,
    no_control_chars,
    path_uuid,
    rfc3339,
)
from svckit.contracts.timesheets import EntryIn, UploadRow
from svckit.identity import Identity
from svckit.outbox import event_parameters

pytestmark = pytest.mark.unit

ENTRY = {"date": "2026-11-23", "project": "Store", "hours": 7.5}
CASES: list[tuple[type[BaseModel], dict[str, Any], bool]] = [
    (EntryIn, ENTRY, True),
    (EntryIn, {**ENTRY, "hours": 0.25}, True),
    (EntryIn, {**ENTRY, "hours": 24}, True),
    (EntryIn, {**ENTRY, "hours": 0}, False),
    (EntryIn, {**ENTRY, "hours": 24.25}, False),
    (EntryIn, {**ENTRY, "hours": 7.3}, False),
    (EntryIn, {**ENTRY, "hours": -1}, False),
    (EntryIn, {**ENTRY, "hours": "7.5"}, False),
    (EntryIn, {**ENTRY, "hours": True}, False),
    (EntryIn, {**ENTRY, "project": "x" * 100}, True),
    (EntryIn, {**ENTRY, "project": "x" * 101}, False),
    (EntryIn, {**ENTRY, "project": ""}, False),
    (EntryIn, {**ENTRY, "project": "   "}, False),
    (EntryIn, {**ENTRY, "project": "\u0085"}, False),
    (EntryIn, {**ENTRY, "project": "\ufeff"}, False),  # whitespace to ECMA-262, not to Python
    (EntryIn, {**ENTRY, "project": " \ufeff\u3000"}, False),
    (EntryIn, {**ENTRY, "project": "\ufeffStore"}, True),
    (EntryIn, {**ENTRY, "project": "a\tb"}, True),
    (EntryIn, {**ENTRY, "project": "\u200b"}, False),  # invisible (Default_Ignorable_Code_Point) alone
    (EntryIn, {**ENTRY, "project": "\u2060\u200d\u00ad"}, False),
    (EntryIn, {**ENTRY, "project": "\u3164"}, False),
    # bidirectional controls ("Trojan Source"): none in a name; in free text no embedding or override,
    # and an isolate only closed on its own line, not nested; right-to-left letters need none
    (EntryIn, {**ENTRY, "project": "\u202eA"}, False),
    (EntryIn, {**ENTRY, "project": "Store\u202e"}, False),
    (EntryIn, {**ENTRY, "project": "a\u202ab"}, False),
    (EntryIn, {**ENTRY, "project": "a\u2067b\u2069"}, False),  # balanced, but a name is a key
    (EntryIn, {**ENTRY, "project": "a\u2069"}, False),
    (EntryIn, {**ENTRY, "project": "\u05e9\u05dc\u05d5\u05dd Store"}, True),  # Hebrew
    (EntryIn, {**ENTRY, "project": "\u0645\u0634\u0631\u0648\u0639 1"}, True),  # Arabic
    (EntryIn, {**ENTRY, "project": "a\u200fb\u200e\u061c"}, True),  # marks: RLM, LRM, ALM
    (UploadRow, {**ENTRY, "user": "alice\u202e"}, False),
    (EntryIn, {**ENTRY, "notes": "fine \u202egnp.exe"}, False),
    (EntryIn, {**ENTRY, "notes": "\u202c"}, False),
    (EntryIn, {**ENTRY, "notes": "x \u2067\u05e9\u05dc\u05d5\u05dd\u2069 y"}, True),
    (EntryIn, {**ENTRY, "notes": "\u2066a\u2069\u2068b\u2069\n\u2067c\u2069"}, True),
    (EntryIn, {**ENTRY, "notes": "open \u2067isolate"}, False),
    (EntryIn, {**ENTRY, "notes": "\u2067a\nb\u2069"}, False),  # not closed on its line
    (EntryIn, {**ENTRY, "notes": "\u2067a\u2029b\u2069"}, False),
    (EntryIn, {**ENTRY, "notes": "\u2066a\u2067b\u2069\u2069"}, False),  # nested
    (EntryIn, {**ENTRY, "notes": "stray\u2069"}, False),
    (EntryIn, {**ENTRY, "notes": "\u05e9\u05dc\u05d5\u05dd\r\n\u200f"}, True),
    (UploadRow, {**ENTRY, "user": "\u200b"}, False),
    (EntryIn, {**ENTRY, "project": "a\x01b"}, False),
    (EntryIn, {**ENTRY, "project": "a\x7fb"}, False),
    (EntryIn, {**ENTRY, "project": "a\x80b"}, False),  # C1 controls are control characters too
    (EntryIn, {**ENTRY, "project": "a\x9b31mb"}, False),
    (EntryIn, {**ENTRY, "project": "\x9f"}, False),
    (EntryIn, {**ENTRY, "project": "a\xa0b"}, True),  # the first character after them
    (EntryIn, {**ENTRY, "project": 7}, False),
    (EntryIn, {**ENTRY, "date": "2000-01-01"}, True),
    (EntryIn, {**ENTRY, "date": "2099-12-31"}, True),
    (EntryIn, {**ENTRY, "date": "1999-12-31"}, False),
    (EntryIn, {**ENTRY, "date": "2100-01-01"}, False),
    (EntryIn, {**ENTRY, "date": "0001-01-01"}, False),
    (EntryIn, {**ENTRY, "date": "9999-12-31"}, False),
    (EntryIn, {**ENTRY, "date": "2026-02-30"}, False),
    (EntryIn, {**ENTRY, "date": "2026-1-1"}, False),
    (EntryIn, {**ENTRY, "date": "20261123"}, False),
    (EntryIn, {**ENTRY, "date": 20261123}, False),
    (EntryIn, {**ENTRY, "notes": None}, True),
    (EntryIn, {**ENTRY, "notes": ""}, True),
    (EntryIn, {**ENTRY, "notes": "two\r\nlines\tand a tab"}, True),
    (EntryIn, {**ENTRY, "notes": "x" * 2000}, True),
    (EntryIn, {**ENTRY, "notes": "x" * 2001}, False),
    (EntryIn, {**ENTRY, "notes": "bell\x07"}, False),
    (EntryIn, {**ENTRY, "notes": "next\x85line"}, False),
    (EntryIn, {**ENTRY, "notes": "csi\x9b2J"}, False),
    (EntryIn, {**ENTRY, "owner": "mallory"}, False),
    (EntryIn, {"project": "Store", "hours": 7.5}, False),
    (UploadRow, {**ENTRY, "user": "local|alice"}, True),
    (UploadRow, {**ENTRY, "user": "x" * 256}, False),
    (UploadRow, {**ENTRY, "user": " "}, False),
    (UploadRow, {**ENTRY, "user": "\ufeff"}, False),
    (UploadRow, ENTRY, False),
    (DecisionIn, {"decision": "approved"}, True),
    (DecisionIn, {"decision": "rejected", "comment": "Split it\nby project."}, True),
    (DecisionIn, {"decision": "maybe"}, False),
    (DecisionIn, {"decision": "approved", "comment": "nul\x00"}, False),
    (DecisionIn, {"decision": "approved", "comment": "st\x9c"}, False),
    (DecisionIn, {"decision": "approved", "comment": "x" * 2001}, False),
    (DecisionIn, {"decision": "approved", "comment": "ok \u202e"}, False),
    (DecisionIn, {"decision": "approved", "comment": "\u2068\u05d8\u05d5\u05d1\u2069"}, True),
    (DecisionIn, {"decision": "approved", "by": "me"}, False),
]


def published(model: type[BaseModel]) -> jsonschema.Draft202012Validator:
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def model_accepts(model: type[BaseModel], document: dict[str, Any]) -> bool:
    try:
        model.model_validate(document)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("model", "document", "valid"), CASES, ids=lambda v: repr(v)[:40])
def test_the_schema_and_the_model_agree(
    model: type[BaseModel], document: dict[str, Any], valid: bool
) -> None:
    assert published(model).is_valid(document) is valid, "what the document says"
    assert model_accepts(model, document) is valid, "what the service does"


# ECMA-262's \s (WhiteSpace and LineTerminator; Zs as of Unicode 15) and Python's (str.isspace)
ECMA_WHITESPACE = "\t\n\v\f\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
ECMA_WHITESPACE += "\u2028\u2029\u202f\u205f\u3000\ufeff"
PYTHON_WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def test_a_name_of_whitespace_in_either_sense_is_blank_to_the_pattern_and_the_model() -> None:
    """The pattern is read by ECMA-262 (browsers, JSON Schema validators) and by Python (the model,
    these tests): ``\\s`` differs between the two, so the pattern lists the characters instead."""
    assert "\\s" not in NAME_PATTERN
    for char in sorted(set(ECMA_WHITESPACE + PYTHON_WHITESPACE)):
        for name in (char, f" {char} "):
            document = {**ENTRY, "project": name}
            assert re.search(NAME_PATTERN, name) is None, repr(name)
            assert not model_accepts(EntryIn, document), repr(name)
        if CONTROL_CHARS.search(char) is None:  # surrounding whitespace is removed (U+FEFF too)
            assert EntryIn.model_validate({**ENTRY, "project": f"{char}x{char}"}).project == "x", repr(char)


# the bidirectional controls, line breaks and a few ordinary characters (Hebrew, Latin, a mark)
_BIDI_ALPHABET = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\n\r\u2029\u200f\u05d0a "


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=_BIDI_ALPHABET, max_size=12))
def test_the_pattern_and_the_model_read_bidirectional_controls_alike(text: str) -> None:
    """Notes, comments and names: the published pattern (what the SPA and other clients check) and the
    model (what the services check) take and refuse the same texts of bidirectional controls."""
    notes = {**ENTRY, "notes": text}
    assert published(EntryIn).is_valid(notes) is model_accepts(EntryIn, notes), repr(text)
    project = {**ENTRY, "project": f"P{text}P"}
    assert published(EntryIn).is_valid(project) is model_accepts(EntryIn, project), repr(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ok \u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("\u2067open", "U+2067 (RIGHT-TO-LEFT ISOLATE), which is not closed by U+2069"),
        ("a\u2069", "U+2069 (POP DIRECTIONAL ISOLATE), which closes no isolate"),
        ("\u2066a\u2068b\u2069\u2069", "U+2068 (FIRST STRONG ISOLATE) inside another isolate"),
    ],
)
def test_a_bidirectional_control_is_refused_by_name(text: str, says: str) -> None:
    """The 422's message names the character (its code point and Unicode name), not only the field."""
    with pytest.raises(ValidationError) as refused:
        DecisionIn.model_validate({"decision": "approved", "comment": text})
    assert says in str(refused.value)


def test_a_project_is_stored_composed_and_a_subject_as_sent() -> None:
    """A project name is a key people type: NFC. A ``sub`` is another system's: compared as sent."""
    row = UploadRow.model_validate({**ENTRY, "project": "Cafe\u0301", "user": "rene\u0301"})
    assert (row.project, row.user) == ("Caf\u00e9", "rene\u0301")
    assert not model_accepts(EntryIn, {**ENTRY, "project": "\u0958" * 51})  # 102 in NFC


def test_an_event_reads_back_as_sent() -> None:
    alice = Identity("https://issuer.example/", "alice", "user", "spa", frozenset({"x"}), "Alice")
    event = AuditEvent.create(
        action="timesheet.created",
        resource_type="timesheet",
        resource_id=str(uuid.uuid4()),
        outcome="success",
        actor=alice,
        source="timesheets",
        details={"hours": 7.5, "nested": {"a": [1, "b"]}},
        request_id="req-123456789",
    )
    wire = json.loads(event.model_dump_json())  # what the outbox stores and the relay posts
    assert IngestBatch.model_validate({"events": [wire]}).events == [event]
    assert wire["actor"] == {
        "issuer": "https://issuer.example/",
        "subject": "alice",
        "kind": "user",
        "client_id": "spa",
        "name": "Alice",
    }


def test_a_writer_cannot_build_an_event_the_audit_service_would_refuse() -> None:
    base: dict[str, Any] = {
        "action": "timesheet.created",
        "resource_type": "timesheet",
        "resource_id": "1",
        "outcome": "success",
        "actor": Identity("i", "s"),
        "source": "timesheets",
    }
    for change in (
        {"source": "Time_Sheets"},
        {"details": {"x": float("nan")}},
        {"resource_type": "Bad Type"},
    ):
        with pytest.raises(InvalidEvent):
            AuditEvent.create(**{**base, **change})
    with pytest.raises(InvalidEvent, match="outcome"):
        AuditEvent.create(**{**base, "outcome": "ok"})
    # InvalidEvent is a writer's bug (500), never a client's 422: it is not a pydantic error.
    assert not issubclass(InvalidEvent, ValidationError)
    # A display name longer than the trail keeps is cut, not refused.
    long_name = AuditEvent.create(**{**base, "actor": Identity("i", "s", name="n" * 600)})
    assert len(long_name.actor.name) == 512


@pytest.mark.parametrize(
    ("details", "says"),
    [
        ({"x": float("nan")}, "finite"),
        ({"x": [1, float("inf")]}, "finite"),
        ({"x": "nul\x00"}, "NUL"),
        ({"nul\x00": 1}, "NUL"),
        ({"x": "\ud800"}, "Unicode"),
        (
            {"x": 'a literal "\\u0000" is text, not NUL', "deep": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]},
            "deeper",
        ),
        ({"x": "y" * (16 * 1024)}, "bytes"),
    ],
)
def test_event_details_are_refused_with_the_reason(details: dict[str, Any], says: str) -> None:
    """The details are checked by their JSON text when it shows nothing can be wrong, else walked:
    each refusal still names its reason."""
    with pytest.raises(InvalidEvent, match=says):
        AuditEvent.create(
            action="timesheet.created",
            resource_type="timesheet",
            resource_id="1",
            outcome="success",
            actor=Identity("i", "s"),
            source="timesheets",
            details=details,
        )


def test_event_details_that_only_look_odd_are_accepted() -> None:
    details = {
        "x": 'a literal "\\u0000"',
        "brackets": "[[[[{{{{[[[[{{{{[[[[",
        "deep": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]],
    }
    event = AuditEvent.create(
        action="timesheet.created",
        resource_type="timesheet",
        resource_id="1",
        outcome="success",
        actor=Identity("i", "s"),
        source="timesheets",
        details=details,
    )
    assert event.details == details


def _both(**fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fast writer's payload and the model's, with the fast one's id and time given to the model."""
    event_id, occurred_at, payload = outbox_values(**fields)
    event = AuditEvent.create(**fields, event_id=event_id, occurred_at=occurred_at)
    assert event_parameters(event)[:2] == (event_id, occurred_at)
    return json.loads(payload), json.loads(event.model_dump_json())


@pytest.mark.parametrize(
    "actor",
    [
        Identity("https://issuer.example/", "alice", "user", "spa", frozenset({"x"}), "Alice"),
        Identity("i", 'q"uote\\back\u2028', "client", "c\tid", frozenset(), "Zoë \U0001f600"),
        Identity("urn:timesheets:service", "approvals", "service", "approvals", frozenset(), "approvals"),
        Identity("i", "s", name="n" * 600),  # cut to the trail's 512, not refused
    ],
)
@pytest.mark.parametrize("request_id", [None, "req-123456789", "a" * 128])
def test_the_fast_outbox_writer_queues_the_models_document(actor: Identity, request_id: str | None) -> None:
    token = request_id_var.set(request_id)
    try:
        fast, model = _both(
            action="timesheet.created",
            resource_type="timesheet",
            resource_id=str(uuid.uuid4()),
            outcome="success",
            actor=actor,
            source="timesheets",
            details={"hours": 7.5, "project": 'Zoë "x"\n', "nested": {"a": [1, "b", None, True]}},
        )
    finally:
        request_id_var.reset(token)
    assert fast == model
    assert (
        IngestBatch.model_validate({"events": [fast]}).events[0].model_dump()
        == AuditEvent.model_validate(model).model_dump()
    )


def test_the_fast_outbox_writer_refuses_what_the_model_refuses() -> None:
    base: dict[str, Any] = {
        "action": "timesheet.created",
        "resource_type": "timesheet",
        "resource_id": "1",
        "outcome": "success",
        "actor": Identity("i", "s"),
        "source": "timesheets",
        "details": {},
    }
    for change in (
        {"source": "Time_Sheets"},
        {"action": "Timesheet Created"},
        {"action": "a" * 101},
        {"resource_type": "Bad Type"},
        {"resource_id": "x" * 513},
        {"resource_id": "nul\x00"},
        {"actor": Identity("i", "")},  # no subject
        {"actor": Identity("i", "s\x00")},
        {"actor": Identity("i" * 513, "s")},
        {"details": {"x": float("nan")}},
        {"details": {"x": "y" * (16 * 1024)}},
        {"outcome": "ok"},
    ):
        fields = {**base, **change}
        with pytest.raises(InvalidEvent):
            AuditEvent.create(**fields)
        with pytest.raises(InvalidEvent):
            outbox_values(**fields)
    token = request_id_var.set("r" * 129)
    try:
        with pytest.raises(InvalidEvent):
            AuditEvent.create(**base)
        with pytest.raises(InvalidEvent):
            outbox_values(**base)
    finally:
        request_id_var.reset(token)


@pytest.mark.parametrize("given", ["", "put-request-123456"])
def test_the_fast_outbox_writer_takes_a_given_request_id_over_the_current_one(given: str) -> None:
    """A decision settled later by the reconciler keeps the original PUT's request id."""
    token = request_id_var.set("reconciler-run-1234")
    try:
        fast, model = _both(
            action="approval.decided",
            resource_type="timesheet",
            resource_id=str(uuid.uuid4()),
            outcome="success",
            actor=Identity("i", "bob", "user", "spa", frozenset(), "Bob"),
            source="approvals",
            details={"decision_id": str(uuid.uuid4()), "decision": "approved", "comment": None},
            request_id=given,
        )
    finally:
        request_id_var.reset(token)
    assert fast == model
    assert fast["request_id"] == given


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 27, 9, 30, 0, 123456, dt.UTC),
        dt.datetime(2026, 11, 27, 9, 30, 0, 0, dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, dt.UTC),
        dt.datetime(1, 1, 1, 0, 0, 0, 0, dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, dt.UTC),
        dt.datetime(2024, 2, 29, 23, 59, 59, 1, dt.UTC),
        dt.datetime(2026, 11, 27, 9, 30, 0, 123456, dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2026, 11, 27, 9, 30, 0, 0, dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
    ],
)
def test_a_timestamp_is_spelt_as_isoformat_in_utc_with_z(value: dt.datetime) -> None:
    """The UTC case written out by hand is the ``isoformat`` spelling, microseconds always."""
    expected = value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert rfc3339(value) == expected


@pytest.mark.parametrize(
    ("encode", "decode", "other"),
    [
        (encode_cursor, decode_cursor, encode_checkpoint_cursor),
        (encode_checkpoint_cursor, decode_checkpoint_cursor, encode_cursor),
    ],
)
def test_a_cursor_names_one_position_of_its_own_listing(
    encode: Callable[[int], str], decode: Callable[[str], int], other: Callable[[int], str]
) -> None:
    """The events' and the checkpoints' cursors share one format but not their tag: each decodes
    its own listing's positions (1..2^63-1) and refuses the other's and anything else alike."""
    for position in (1, 42, 2**63 - 1):
        assert decode(encode(position)) == position
    tag = base64.urlsafe_b64decode(encode(1) + "==").decode()[0]
    bare = base64.urlsafe_b64encode(tag.encode()).decode()
    for value in (other(42), "not-a-cursor!", "", "é", bare, encode(0)):
        with pytest.raises(ValueError, match="is not a cursor returned by this API"):
            decode(value)


@pytest.mark.unit
def test_a_path_names_a_uuid_only_in_the_documented_form() -> None:
    value = uuid.uuid4()
    assert path_uuid(str(value)) == value
    assert path_uuid(str(value).upper()) == value
    for other in (f"{{{value}}}", f"urn:uuid:{value}", value.hex, f" {value}", f"{value}\n", "", "x" * 36):
        assert path_uuid(other) is None, other


def test_display_text_drops_exactly_what_a_name_refuses_beyond_line_breaks() -> None:
    """``display_text`` (the gateway's cleaning of another provider's name claim) and the name rule
    (``no_control_chars``, ``no_bidi_controls``) agree character by character over the Basic
    Multilingual Plane, tab and line breaks aside (free text keeps them, a name drops them)."""
    for code in range(0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        try:
            no_bidi_controls(no_control_chars(char))
            refused = char in "\t\n\r"
        except ValueError:
            refused = True
        assert (display_text(f"a{char}b") == "ab") is refused, hex(code)
        assert display_text(f"a{char}b") in ("ab", f"a{char}b"), hex(code)
