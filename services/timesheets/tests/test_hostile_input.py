"""Pathological input never produces a 500: every one is a 4xx problem naming what was wrong."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

WHO = user("hostile", "read:timesheets", "create:timesheets", "delete:timesheets")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"date": "2026-11-23", "project": "P", "hours": NaN}', "hours"),
        (b'{"date": "2026-11-23", "project": "P", "hours": Infinity}', "hours"),
        (b'{"date": "2026-11-23", "project": "P", "hours": 1e309}', "hours"),
        (b'{"date": "2026-11-23", "project": "P", "hours": 99999999999999999999999999}', "hours"),
        (b'{"date": "2026-11-23", "project": "\\ud800", "hours": 1}', "project"),
        (b'{"date": "2026-11-23", "project": "P", "hours": 1, "notes": "a\\udfffb"}', "notes"),
        (b'{"date": "2026-11-23", "project": "P", "hours": 1, "notes": "a\\u0000b"}', "notes"),
        (b'{"date": "0000-01-01", "project": "P", "hours": 1}', "date"),
        (b'{"date": "2026-11-23\\n", "project": "P", "hours": 1}', "date"),
        (b'{"date": ["2026-11-23"], "project": "P", "hours": 1}', "date"),
        (b'{"date": "2026-11-23", "project": {"a": 1}, "hours": 1}', "project"),
        # C1 control characters (U+0080-U+009F, Unicode's Cc like C0): CSI, NEL inside, a lone ST
        (b'{"date": "2026-11-23", "project": "a\\u009b31mb", "hours": 1}', "project"),
        (b'{"date": "2026-11-23", "project": "P", "hours": 1, "notes": "a\\u0085b"}', "notes"),
        (b'{"date": "2026-11-23", "project": "P", "hours": 1, "notes": "\xc2\x9c"}', "notes"),
    ],
)
async def test_hostile_bodies(api: SignedApi, raw: bytes, field: str) -> None:
    reply = await api.call("POST", "/timesheets", WHO, data=raw, headers={"content-type": "application/json"})
    assert reply.status == 422, reply.text
    assert reply.fields() == {field}


async def test_deep_nesting_and_bad_utf8(api: SignedApi) -> None:
    deep = b'{"date": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    for raw in (deep, b'{"date": "\xff\xfe"}'):
        reply = await api.call(
            "POST", "/timesheets", WHO, data=raw, headers={"content-type": "application/json"}
        )
        assert 400 <= reply.status < 500, reply.text
        assert reply.problem


@pytest.mark.parametrize(
    "query",
    [
        "project=%ED%A0%80",
        "project=%00",
        "from=2026-11-23%00",
        "limit=1e3",
        "limit=%20",
        "cursor=" + "A" * 600,
        "cursor=%F0%9F%92%A9",
    ],
)
async def test_hostile_queries(api: SignedApi, query: str) -> None:
    reply = await api.call("GET", f"/timesheets?{query}", WHO)
    assert reply.status in (200, 400, 422), reply.text
    assert reply.status == 200 or reply.problem


@pytest.mark.parametrize(
    "path",
    ["/timesheets/%00", "/timesheets/" + "9" * 300, f"/timesheets/{uuid.uuid4()}%20"],
    ids=["nul", "long", "unknown-id-space"],  # fixed ids: every xdist worker must collect the same names
)
async def test_hostile_ids(api: SignedApi, path: str) -> None:
    reply = await api.call("GET", path, WHO)
    assert reply.status == 404


async def test_an_entry_has_one_address_its_id_in_the_documented_form(api: SignedApi) -> None:
    """``format: uuid`` is 8-4-4-4-12 hex digits (either case); ``uuid.UUID`` also reads braces, a
    ``urn:uuid:`` prefix and the digits without hyphens, which gave one entry several addresses."""
    body = {"date": "2026-02-03", "project": "P", "hours": 1}
    created = await api.call("POST", "/timesheets", WHO, json=body)
    assert created.status == 201, created.text
    entry_id = created.body["id"]
    for found in (entry_id, entry_id.upper()):
        assert (await api.call("GET", f"/timesheets/{found}", WHO)).status == 200
    for other in (f"{{{entry_id}}}", f"urn:uuid:{entry_id}", entry_id.replace("-", "")):
        assert (await api.call("GET", f"/timesheets/{other}", WHO)).status == 404, other
        assert (await api.call("DELETE", f"/timesheets/{other}", WHO)).status == 404, other
    assert (await api.call("GET", f"/timesheets/{entry_id}", WHO)).status == 200  # not deleted


def cursor_of(*parts: object) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        cursor_of("2026-01-01", "0001-01-01T00:00:00+14:00", str(uuid.uuid4())),  # no UTC form
        cursor_of("2026-01-01", "9999-12-31T23:59:59-14:00", str(uuid.uuid4())),
        cursor_of("2026-01-01", "2026-01-01T00:00:00", str(uuid.uuid4())),  # naive
        cursor_of("2026-01-01", 10**400, str(uuid.uuid4())),
        cursor_of(*["x"] * 3),
        cursor_of([[[[[]]]]]),
    ],
    ids=["no-utc-form", "late-offset", "naive", "huge-number", "strings", "nested"],  # same on every worker
)
async def test_forged_cursors_are_named(api: SignedApi, cursor: str) -> None:
    reply = await api.call("GET", "/timesheets", WHO, params={"cursor": cursor})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"cursor"}


@pytest.mark.parametrize("spelling", ["{}==", "{}=", "{} ", "{}.", "+{}", "/{}"])
async def test_a_cursor_spelled_outside_its_published_pattern_is_named(api: SignedApi, spelling: str) -> None:
    """The document publishes cursors as base64url without padding (``CURSOR_PATTERN``): a good
    cursor with padding, or with a character of the other alphabet, is not one (it was read as the
    cursor it decodes to)."""
    good = cursor_of("2026-01-01", "2026-01-01T00:00:00+00:00", str(uuid.uuid4()))
    assert (await api.call("GET", "/timesheets", WHO, params={"cursor": good})).status == 200
    reply = await api.call("GET", "/timesheets", WHO, params={"cursor": spelling.format(good)})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"cursor"}


@pytest.mark.parametrize("date", ["0001-01-01", "1999-12-31", "2100-01-01", "9999-12-31"])
async def test_work_dates_outside_the_window_are_named(api: SignedApi, date: str) -> None:
    body = {"date": date, "project": "P", "hours": 1}
    reply = await api.call("POST", "/timesheets", WHO, json=body)
    assert reply.status == 422, reply.text
    assert reply.fields() == {"date"}
    assert "2000-01-01" in reply.body["errors"][0]["message"]


@pytest.mark.parametrize("date", ["2000-01-01", "2099-12-31"])
async def test_work_dates_at_the_edges_of_the_window_are_stored(api: SignedApi, date: str) -> None:
    reply = await api.call("POST", "/timesheets", WHO, json={"date": date, "project": "Edge", "hours": 1})
    assert reply.status == 201, reply.text
    assert reply.body["date"] == date


async def test_filters_take_any_date(api: SignedApi) -> None:
    reply = await api.call("GET", "/timesheets", WHO, params={"from": "0001-01-01", "to": "9999-12-31"})
    assert reply.status == 200, reply.text


async def test_a_query_parameter_on_an_operation_that_takes_none_is_refused_and_nothing_is_done(
    api: SignedApi,
) -> None:
    """``DELETE /timesheets/{id}?dry_run=true`` deleted the entry: a route without query parameters
    ignored any it was given, where the listings refuse an unknown one (svckit.query). A client that
    believes in a parameter the service does not have is told so, before anything is done."""
    body = {"date": "2026-02-04", "project": "P", "hours": 1}
    created = await api.call("POST", "/timesheets?validate_only=true", WHO, json=body)
    assert created.status == 422, created.text
    assert created.problem
    assert created.fields() == {"validate_only"}
    created = await api.call("POST", "/timesheets", WHO, json=body)
    assert created.status == 201, created.text
    entry_id = created.body["id"]
    for method, query, names in (
        ("DELETE", "dry_run=true", {"dry_run"}),
        ("DELETE", "a=1&b", {"a", "b"}),
        ("GET", "fields=id", {"fields"}),
    ):
        reply = await api.call(method, f"/timesheets/{entry_id}?{query}", WHO)
        assert reply.status == 422, (method, query, reply.text)
        assert reply.problem
        assert reply.fields() == names
    assert (await api.call("DELETE", f"/timesheets/{entry_id}?%zz", WHO)).status == 400
    assert (await api.call("GET", f"/timesheets/{entry_id}", WHO)).status == 200  # not deleted
    assert (await api.call("GET", f"/timesheets/{entry_id}?", WHO)).status == 200  # an empty query


@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        # "Trojan Source": an override makes the text display reversed in the approver's queue
        ({"project": "Store \u202egnp.exe", "notes": None}, "project", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ({"project": "P", "notes": "fine\u202e"}, "notes", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ({"project": "P", "notes": "a\u202bb\u202c"}, "notes", "U+202B (RIGHT-TO-LEFT EMBEDDING)"),
        ({"project": "P", "notes": "\u2067open"}, "notes", "U+2067 (RIGHT-TO-LEFT ISOLATE)"),
        ({"project": "A\u2066B\u2069", "notes": None}, "project", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
    ],
)
async def test_a_bidirectional_control_is_refused_naming_the_field_and_the_character(
    api: SignedApi, document: dict[str, str | None], field: str, says: str
) -> None:
    reply = await api.call("POST", "/timesheets", WHO, json={"date": "2026-11-23", "hours": 1, **document})
    assert reply.status == 422, reply.text
    assert reply.problem
    assert reply.fields() == {field}
    assert says in json.dumps(reply.body, ensure_ascii=False), reply.text


async def test_right_to_left_text_and_a_closed_isolate_are_kept_as_sent(api: SignedApi) -> None:
    """Hebrew and Arabic letters need no control (the reader's browser orders them); a closed isolate
    on its line, as an editor may put around a right-to-left phrase, is kept."""
    document = {
        "date": "2026-11-23",
        "project": "\u05e4\u05e8\u05d5\u05d9\u05e7\u05d8 \u0645\u0634\u0631\u0648\u0639",
        "hours": 1,
        "notes": "Reviewed \u2067\u05e9\u05dc\u05d5\u05dd 42\u2069 with \u200fthe team",
    }
    created = await api.call("POST", "/timesheets", WHO, json=document)
    assert created.status == 201, created.text
    assert (created.body["project"], created.body["notes"]) == (document["project"], document["notes"])


async def test_an_upload_row_with_a_bidirectional_override_is_named(api: SignedApi) -> None:
    row = {"user": "local|alice", "date": "2026-11-23", "project": "Store", "hours": 1, "notes": "\u202dx"}
    uploader = Identity(
        "http://localhost:9000/", "batch-bidi", "client", "timesheets-batch", frozenset({"batch:upload"}), ""
    )
    reply = await api.call("POST", "/timesheets/upload", uploader, json={"entries": [row]})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"entries.0.notes"}
