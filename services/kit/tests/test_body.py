"""The kit's JSON body rules (I-JSON, RFC 7493): a 400 for what is not UTF-8 JSON, a 422 naming each
refused value, never a 500."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from svckit.body import MAX_DEPTH, MAX_SAFE_INTEGER, InvalidValues, Refused, parse_json
from svckit.contracts.timesheets import EntryIn
from svckit.problems import MAX_FIELD_ERRORS, field_errors, model_errors


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "deeper"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper"),
        (b'{"a": "\xff"}', "not UTF-8"),
        ('{"a": "é"}'.encode("latin-1"), "not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        ('{"a": 1}'.encode("utf-32-le"), "not valid JSON"),  # NULs are valid UTF-8, not JSON
        (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
        (b'{"a": 1', "not valid JSON"),
        (b"{'a': 1}", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
@pytest.mark.unit
def test_not_a_json_document(raw: bytes, says: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_json(raw)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("raw", "fields", "type_"),
    [
        (b'{"n": ' + b"9" * 5000 + b"}", {"n"}, "integer_out_of_range"),  # past Python's 4,300 digits
        (b'{"n": -' + b"1" * 40 + b"}", {"n"}, "integer_out_of_range"),
        (b'{"n": %d}' % (MAX_SAFE_INTEGER + 1), {"n"}, "integer_out_of_range"),
        (b'{"n": 1e999}', {"n"}, "number_out_of_range"),
        (b'{"a": [1, -1.5E+400]}', {"a.1"}, "number_out_of_range"),
        (b'{"n": NaN}', {"n"}, "not_a_json_value"),
        (b'{"n": Infinity}', {"n"}, "not_a_json_value"),
        (b'{"n": -Infinity}', {"n"}, "not_a_json_value"),
        (b'{"hours": 1, "hours": 8}', {"hours"}, "duplicate_member"),
        (b'{"a": {"b": 1, "b": 2}}', {"a.b"}, "duplicate_member"),
        (b'{"entries": [{}, {"notes": "\\ud800"}]}', {"entries.1.notes"}, "lone_surrogate"),
        (b'{"\\udfff": 1}', {"?"}, "lone_surrogate"),
        (b"NaN", {"(body)"}, "not_a_json_value"),
    ],
)
@pytest.mark.unit
def test_refused_values_are_named(raw: bytes, fields: set[str], type_: str) -> None:
    with pytest.raises(InvalidValues) as invalid:
        parse_json(raw)
    assert {error["field"] for error in invalid.value.errors} == fields
    assert {error["type"] for error in invalid.value.errors} == {type_}


@pytest.mark.unit
def test_every_refused_value_is_named_at_once() -> None:
    with pytest.raises(InvalidValues) as invalid:
        parse_json(b'{"a": NaN, "b": [1e400, 2], "c": {"d": "\\ud800", "d": 1}}')
    assert [error["field"] for error in invalid.value.errors] == ["a", "b.0", "c.d"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"n": %d}' % MAX_SAFE_INTEGER, {"n": MAX_SAFE_INTEGER}),
        (b'{"n": -%d}' % MAX_SAFE_INTEGER, {"n": -MAX_SAFE_INTEGER}),
        (b'{"n": 1e-400}', {"n": 0.0}),
        (b'{"n": 7.25, "s": "\\ud83d\\ude00 \xc3\xa9"}', {"n": 7.25, "s": "\U0001f600 é"}),
        (b'{"a": 1, "A": 2}', {"a": 1, "A": 2}),
    ],
)
def test_accepted(raw: bytes, value: object) -> None:
    assert parse_json(raw) == value


@pytest.mark.unit
def test_the_deepest_accepted_nesting() -> None:
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    parsed = parse_json(raw)
    depth = 0
    while isinstance(parsed, list):
        depth += 1
        parsed = parsed[0] if parsed else None
    assert depth == MAX_DEPTH


def _wide(inner: bytes, at: int = 37, width: int = 50) -> bytes:
    """A batch-like document: ``width`` shallow objects (more brackets than MAX_DEPTH), ``inner`` as
    the members of the one at index ``at``."""
    items = [b'{"i": %d, "s": "[{["}' % n for n in range(width)]
    items[at] = b"{" + inner + b"}"
    return b'{"events": [' + b", ".join(items) + b"]}"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("inner", "field", "type_"),
    [
        (b'"x": 1, "x": 2', "events.37.x", "duplicate_member"),
        (b'"n": 9007199254740992', "events.37.n", "integer_out_of_range"),
        (b'"n": 1e999', "events.37.n", "number_out_of_range"),
        (b'"n": NaN', "events.37.n", "not_a_json_value"),
        (b'"s": "\\udc00"', "events.37.s", "lone_surrogate"),
    ],
)
def test_a_refused_value_deep_in_a_wide_document_is_named(inner: bytes, field: str, type_: str) -> None:
    """Only a document where the parser met a refused value (or a surrogate escape) is walked value by
    value; the others are checked for depth alone: both must still find everything."""
    with pytest.raises(InvalidValues) as invalid:
        parse_json(_wide(inner))
    assert [(error["field"], error["type"]) for error in invalid.value.errors] == [(field, type_)]


@pytest.mark.unit
def test_wide_documents_with_many_brackets_are_checked_for_depth_alone() -> None:
    assert len(parse_json(_wide(b'"ok": [[{"a": "\\\\ud800"}]]'))["events"]) == 50  # an escaped backslash
    deep = b'"d": ' + b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2)
    with pytest.raises(Refused, match="deeper"):
        parse_json(_wide(deep))
    fits = b'"d": ' + b"[" * (MAX_DEPTH - 3) + b"]" * (MAX_DEPTH - 3)
    assert parse_json(_wide(fits))["events"][37]["d"]


def test_a_flood_of_unknown_members_converts_only_the_errors_it_lists() -> None:
    """pydantic converts every error to Python at once (``errors()``: 80,000 took ~0.5 s of a 1.2 s
    refusal) and cannot be asked for the first few. :func:`svckit.problems.model_errors` validates the
    document again without the unknown members past the first MAX_FIELD_ERRORS and lists those errors:
    the very first MAX_FIELD_ERRORS of the full validation, in its order."""
    document: dict[str, object] = {"hours": "x", "date": 5} | {f"k{i}": 1 for i in range(5_000)}
    with pytest.raises(ValidationError) as raised:
        EntryIn.model_validate(document)
    full = raised.value
    listed = model_errors(EntryIn, document, full)
    assert listed == field_errors(full, limit=10_000)[:MAX_FIELD_ERRORS]
    assert [error["field"] for error in listed[:5]] == ["date", "project", "hours", "k0", "k1"]
    few: dict[str, object] = {"hours": "x", "extra": 1}
    with pytest.raises(ValidationError) as raised:
        EntryIn.model_validate(few)
    assert model_errors(EntryIn, few, raised.value) == field_errors(raised.value)
