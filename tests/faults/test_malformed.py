"""A corpus of malformed requests, sent byte for byte through the gateway to every API route and
directly to each service: each must be answered with a 4xx problem document (status class, content
type ``application/problem+json``, a JSON body with a ``detail``) — never a 5xx, never plain text.

The kinds (docs/CONTRACTS.md "Accepted input"): bodies that are not UTF-8 JSON (other encodings, a
BOM, invalid bytes, truncated, empty), huge and deeply nested documents, duplicate member names,
numbers beyond I-JSON (NaN, 1e999, 5,000 digits), lone surrogates and control characters, wrong
types and unknown fields, extreme and impossible dates, wrong content types, oversized bodies and
headers, too many headers, over-long targets, both Content-Length and Transfer-Encoding and other
framing errors, bad percent-encoding, forged cursors and out-of-range numbers in query strings, bad
ids and header values. Direct calls carry a valid signed identity, so they reach the body parser.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError
from svckit.contracts.problem import Problem
from svckit.identity import Identity

from testkit.fixtures import Caller, user

from .conftest import Figures, Stack

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Case:
    target: str  # where it goes, for the failure message and the tally
    kind: str
    port: int
    raw: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def request(
    method: str,
    target: str | bytes,
    headers: dict[str, str] | list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    length: bool = True,
) -> bytes:
    lines = [method.encode() + b" " + (target.encode() if isinstance(target, str) else target) + b" HTTP/1.1"]
    lines.append(b"Host: faults.test")
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        lines.append(
            (name.encode() if isinstance(name, str) else name)
            + b": "
            + (value.encode() if isinstance(value, str) else value)
        )
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type.encode())
    if length and (body or method in ("POST", "PUT")):
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send(port: int, raw: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def write() -> None:
        try:
            writer.write(raw)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server answered and closed before reading everything (413, 431): fine

    writing = asyncio.ensure_future(write())
    try:
        data = await asyncio.wait_for(reader.read(), 30)
    except (ConnectionError, OSError) as exc:
        data = f"HTTP/1.1 000 {type(exc).__name__}\r\n\r\n".encode()
    finally:
        writing.cancel()
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines and len(lines[0].split(b" ")) > 1 else 0
    content_type = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return Answer(status, content_type, body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


# ---- the corpus ------------------------------------------------------------------------------------


def body_variants(
    base: dict[str, Any], text_field: str, *, number_field: str | None = None
) -> list[tuple[str, bytes, str]]:
    """(kind, body, content type) of malformed bodies derived from a valid ``base`` body."""
    valid = json.dumps(base)

    def with_raw(field: str, raw_value: str) -> bytes:
        document = dict(base)
        document[field] = "@@@"
        return json.dumps(document).replace('"@@@"', raw_value).encode()

    number = number_field or text_field
    nested = "[" * 200 + "]" * 200
    huge = json.dumps({**base, text_field: "x" * (5 * 1024 * 1024)}).encode()
    json_type = "application/json"
    return [
        ("not JSON", b"{not json", json_type),
        ("truncated JSON", valid[:-5].encode(), json_type),
        ("empty body", b"", json_type),
        ("top-level array", b"[]", json_type),
        ("top-level string", b'"x"', json_type),
        ("top-level null", b"null", json_type),
        ("nested 200 deep", with_raw(text_field, nested), json_type),
        ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, json_type),
        ("duplicate member", valid[:-1].encode() + b', "' + text_field.encode() + b'": "again"}', json_type),
        (
            "invalid UTF-8",
            with_raw(text_field, '"\xff\xfe"').replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe"),
            json_type,
        ),
        ("UTF-16", valid.encode("utf-16"), json_type),
        ("Latin-1", with_raw(text_field, '"caf\u00e9"').decode().encode("latin-1"), json_type),
        ("byte order mark", b"\xef\xbb\xbf" + valid.encode(), json_type),
        ("NaN", with_raw(number, "NaN"), json_type),
        ("Infinity", with_raw(number, "-Infinity"), json_type),
        ("1e999", with_raw(number, "1e999"), json_type),
        ("5,000-digit integer", with_raw(number, "9" * 5000), json_type),
        ("2^53+1", with_raw(number, str(2**53 + 1)), json_type),
        ("lone surrogate", with_raw(text_field, '"a\\ud800b"'), json_type),
        ("control character", with_raw(text_field, '"a\\u0001b"'), json_type),
        ("NUL character", with_raw(text_field, '"a\\u0000b"'), json_type),
        ("wrong type", with_raw(text_field, "[1, 2]"), json_type),
        ("unknown field", json.dumps({**base, "owner": "mallory"}).encode(), json_type),
        ("5 MiB body", huge, json_type),
        ("text/plain", valid.encode(), "text/plain"),
        ("form-encoded", b"a=1&b=2", "application/x-www-form-urlencoded"),
        ("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x"),
        ("charset=utf-16", valid.encode("utf-16"), "application/json; charset=utf-16"),
        ("no content type", valid.encode(), ""),
    ]


ENTRY = {"date": "2026-10-01", "project": "Corpus", "hours": 1}
DATES = [
    ("date 0001-01-01", "0001-01-01"),
    ("date 9999-12-31", "9999-12-31"),
    ("date 2026-02-30", "2026-02-30"),
    ("date 2026-13-01", "2026-13-01"),
    ("date as a number", 20261001),
    ("date with a time", "2026-10-01T10:00:00Z"),
]
HOURS = [("hours 0", 0), ("hours 24.25", 24.25), ("hours 0.1", 0.1), ("hours -1", -1), ("hours as text", "8")]


def framing_cases(target: str, port: int, path: str, headers: dict[str, str]) -> list[Case]:
    """HTTP-level garbage: the server layer must answer it with a problem document too."""
    post = request("POST", path, headers, b"{}")
    cases = [
        (
            "Content-Length and Transfer-Encoding",
            request("POST", path, {**headers, "Transfer-Encoding": "chunked"}, b"0\r\n\r\n"),
        ),
        (
            "two Content-Lengths",
            post.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 3"),
        ),
        (
            "bad chunk size",
            request("POST", path, {**headers, "Transfer-Encoding": "chunked"}, b"zz\r\n", length=False),
        ),
        (
            "two Content-Types",
            post.replace(
                b"Content-Type: application/json",
                b"Content-Type: application/json\r\nContent-Type: text/plain",
            ),
        ),
        ("control character in a header", request("GET", path, [(b"X-Bad", b"a\x01b")])),
        ("header over 64 KiB", request("GET", path, {**headers, "X-Big": "a" * (70 * 1024)})),
        ("200 header fields", request("GET", path, [(f"X-H{i}".encode(), b"1") for i in range(200)])),
        ("target over 16 KiB", request("GET", path + "?q=" + "a" * (17 * 1024), headers)),
        ("NUL in the target", request("GET", path.encode() + b"\x00x", headers)),
        ("bare LF line endings", request("GET", path, headers).replace(b"\r\n", b"\n")),
        (
            "folded header",
            request("GET", path, headers).replace(b"Connection: close", b"X-A: a\r\n b\r\nConnection: close"),
        ),
    ]
    return [Case(target, kind, port, raw) for kind, raw in cases]


def corpus(stack: Stack) -> list[Case]:
    gw = stack.gateway.port
    entry_id = str(uuid.uuid4())
    alice, bob, carol, batch = (stack.headers(who) for who in ("alice", "bob", "carol", "batch"))
    cases: list[Case] = []

    # --- through the gateway, to every route ---
    for kind, body, ctype in body_variants(ENTRY, "project", number_field="hours"):
        cases.append(
            Case(
                "gateway POST /api/timesheets",
                kind,
                gw,
                request("POST", "/api/timesheets", alice, body, content_type=ctype or None),
            )
        )
    for kind, value in DATES:
        body = json.dumps({**ENTRY, "date": value}).encode()
        cases.append(
            Case("gateway POST /api/timesheets", kind, gw, request("POST", "/api/timesheets", alice, body))
        )
    for kind, value in HOURS:
        body = json.dumps({**ENTRY, "hours": value}).encode()
        cases.append(
            Case("gateway POST /api/timesheets", kind, gw, request("POST", "/api/timesheets", alice, body))
        )
    for kind, key in (("Idempotency-Key with a space", "a b"), ("Idempotency-Key of 300 chars", "k" * 300)):
        headers = {**alice, "Idempotency-Key": key}
        cases.append(
            Case(
                "gateway POST /api/timesheets",
                kind,
                gw,
                request("POST", "/api/timesheets", headers, json.dumps(ENTRY).encode()),
            )
        )
    cases.append(
        Case(
            "gateway POST /api/timesheets",
            "11 MiB body",
            gw,
            request("POST", "/api/timesheets", alice, b"[" + b" " * (11 * 1024 * 1024) + b"]"),
        )
    )
    upload_row = {"user": "someone", **ENTRY}
    for kind, body, ctype in body_variants({"entries": [upload_row]}, "entries")[:12]:
        cases.append(
            Case(
                "gateway POST /api/timesheets/upload",
                kind,
                gw,
                request("POST", "/api/timesheets/upload", batch, body, content_type=ctype or None),
            )
        )
    for kind, rows in (
        ("1,001 rows", [upload_row] * 1001),
        ("a row dated 0001-01-01", [{**upload_row, "date": "0001-01-01"}]),
    ):
        cases.append(
            Case(
                "gateway POST /api/timesheets/upload",
                kind,
                gw,
                request("POST", "/api/timesheets/upload", batch, json.dumps({"entries": rows}).encode()),
            )
        )
    decision = {"decision": "approved", "comment": "fine"}
    for kind, body, ctype in body_variants(decision, "comment")[:24]:
        cases.append(
            Case(
                "gateway PUT /api/approvals/{id}",
                kind,
                gw,
                request("PUT", f"/api/approvals/{entry_id}", bob, body, content_type=ctype or None),
            )
        )
    cases.append(
        Case(
            "gateway PUT /api/approvals/{id}",
            "decision 'maybe'",
            gw,
            request("PUT", f"/api/approvals/{entry_id}", bob, b'{"decision": "maybe"}'),
        )
    )
    queries = {
        "/api/timesheets": (
            alice,
            [
                "limit=0",
                "limit=101",
                "limit=1e3",
                "limit=" + "9" * 5000,
                "limit=-1",
                "from=yesterday",
                "from=2026-10-01&to=2026-09-01",
                "cursor=" + "A" * 600,
                "cursor=bm90LWEtY3Vyc29y",
                "status=maybe",
                "project=%zz",
                "project=%FF",
                "project=%ED%A0%80",
                "limit=1&limit=2",
                "stauts=submitted",
            ],
        ),
        "/api/approvals": (bob, ["limit=0", "limit=abc", "cursor=%%%", "cursor=" + "A" * 600, "extra=1"]),
        "/api/audit/events": (
            carol,
            [
                "cursor=czE4NDQ2NzQ0MDczNzA5NTUxNjE2",
                "cursor=czA",
                "from=0001-01-01T00:00:00%2B14:00",
                "to=9999-12-31T23:59:59-14:00",
                "from=2026-10-01T00:00:00",
                "limit=0",
                "outcome=maybe",
                "actor=",
                "actor=%zz",
            ],
        ),
        "/api/audit/verify": (
            carol,
            [
                "anchor=18446744073709551616:" + "0" * 64,
                "anchor=1:xyz",
                "anchor=0:" + "0" * 64,
                "anchor=" + "9" * 90,
            ],
        ),
    }
    for path, (who, items) in queries.items():
        for query in items:
            cases.append(
                Case(
                    f"gateway GET {path}",
                    f"?{query[:40]}",
                    gw,
                    request("GET", f"{path}?{query}", who, content_type=None),
                )
            )
    for kind, path in (
        ("id not a UUID", "/api/timesheets/not-a-uuid"),
        ("id of 300 digits", "/api/timesheets/" + "9" * 300),
        ("id with %00", "/api/timesheets/%00"),
        ("bad percent-encoding", "/api/timesheets/%zz"),
    ):
        cases.append(
            Case("gateway GET /api/timesheets/{id}", kind, gw, request("GET", path, alice, content_type=None))
        )
        cases.append(
            Case(
                "gateway DELETE /api/timesheets/{id}",
                kind,
                gw,
                request("DELETE", path, alice, content_type=None),
            )
        )
    cases.append(
        Case(
            "gateway",
            "Authorization not a JWT",
            gw,
            request("GET", "/api/timesheets", {"Authorization": "Bearer not.a.jwt"}, content_type=None),
        )
    )
    cases.append(
        Case(
            "gateway",
            "Authorization of 9 KiB",
            gw,
            request("GET", "/api/timesheets", {"Authorization": "Bearer " + "a" * 9000}, content_type=None),
        )
    )
    cases += framing_cases("gateway", gw, "/api/timesheets", alice)

    # --- directly to each service, with a valid signed identity ---
    caller = Caller(stack.identity_keys)
    alice_id = user(
        "local|alice", "read:timesheets", "create:timesheets", "delete:timesheets", issuer=stack.issuer
    )
    bob_id = user("local|bob", "read:timesheets", "approve:timesheets", issuer=stack.issuer)

    def signed(identity: Identity, method: str, service: Any, path: str, body: Any = b"") -> dict[str, str]:
        """Signed for this very body (Content-Digest), so the malformed body reaches the service's parser."""
        raw = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else b""
        return caller.headers(identity, method, service.url + path, body=raw)

    ts, ap, au = stack.timesheets, stack.approvals, stack.audit
    for kind, body, ctype in body_variants(ENTRY, "project", number_field="hours"):
        cases.append(
            Case(
                "timesheets POST /timesheets",
                kind,
                ts.port,
                request(
                    "POST",
                    "/timesheets",
                    signed(alice_id, "POST", ts, "/timesheets", body),
                    body,
                    content_type=ctype or None,
                ),
            )
        )
    internal = f"/internal/timesheets/{entry_id}/decision"
    apply = {
        "decision_id": str(uuid.uuid4()),
        "decision": "approved",
        "comment": None,
        "by": {"issuer": stack.issuer, "subject": "local|bob"},
        "at": "2026-10-01T12:00:00Z",
    }
    for kind, body, ctype in body_variants(apply, "decision")[:22]:
        cases.append(
            Case(
                f"timesheets POST {internal[:22]}…",
                kind,
                ts.port,
                request(
                    "POST",
                    internal,
                    signed(Identity.service("approvals"), "POST", ts, internal, body),
                    body,
                    content_type=ctype or None,
                ),
            )
        )
    early = json.dumps({**apply, "at": "0001-01-01T00:00:00+14:00"}).encode()
    cases.append(
        Case(
            f"timesheets POST {internal[:22]}…",
            "at 0001-01-01T00:00:00+14:00",
            ts.port,
            request(
                "POST",
                internal,
                signed(Identity.service("approvals"), "POST", ts, internal, early),
                early,
            ),
        )
    )
    for kind, body, ctype in body_variants(decision, "comment")[:22]:
        path = f"/approvals/{entry_id}"
        cases.append(
            Case(
                "approvals PUT /approvals/{id}",
                kind,
                ap.port,
                request("PUT", path, signed(bob_id, "PUT", ap, path, body), body, content_type=ctype or None),
            )
        )
    event = {
        "id": str(uuid.uuid4()),
        "occurred_at": "2026-10-01T12:00:00Z",
        "source": "timesheets",
        "actor": {
            "issuer": stack.issuer,
            "subject": "local|alice",
            "kind": "user",
            "client_id": "timesheets-spa",
            "name": "Alice",
        },
        "action": "timesheet.created",
        "resource": {"type": "timesheet", "id": entry_id},
        "outcome": "success",
        "request_id": "corpus",
        "details": {"project": "Corpus"},
    }
    for kind, body, ctype in body_variants({"events": [event]}, "events")[:20]:
        cases.append(
            Case(
                "audit POST /internal/events",
                kind,
                au.port,
                request(
                    "POST",
                    "/internal/events",
                    signed(Identity.service("timesheets"), "POST", au, "/internal/events", body),
                    body,
                    content_type=ctype or None,
                ),
            )
        )
    for kind, changed in (
        ("occurred_at before year 1 in UTC", {"occurred_at": "0001-01-01T00:00:00+14:00"}),
        ("details with NaN", {"details": "@NaN@"}),
    ):
        raw = json.dumps({"events": [{**event, **changed}]}).replace('"@NaN@"', '{"x": NaN}').encode()
        cases.append(
            Case(
                "audit POST /internal/events",
                kind,
                au.port,
                request(
                    "POST",
                    "/internal/events",
                    signed(Identity.service("timesheets"), "POST", au, "/internal/events", raw),
                    raw,
                ),
            )
        )
    for name, service, path in (
        ("timesheets", ts, "/timesheets"),
        ("approvals", ap, "/approvals"),
        ("audit", au, "/audit/events"),
        ("identity", stack.identity, "/oauth/token"),
    ):
        # the identity provider takes no signed identity (it is an end of no pair)
        headers = signed(alice_id, "GET", service, path) if name != "identity" else {}
        cases += framing_cases(name, service.port, path, headers)
    return cases


def assert_problem(case: Case, answer: Answer) -> str | None:
    where = f"{case.target} [{case.kind}]: {answer.status} {answer.content_type} {answer.body[:200]!r}"
    if not 400 <= answer.status < 500:
        return where
    if not answer.content_type.startswith("application/problem+json"):
        return where
    try:
        document = Problem.model_validate_json(answer.body)
    except ValidationError:
        return where  # not JSON, or not the contract's problem document
    if not document.detail or document.status != answer.status:
        return where
    return None


async def test_every_malformed_request_is_a_4xx_problem(stack: Stack, figures: Figures) -> None:
    await stack.ensure_up()
    cases = corpus(stack)
    gate = asyncio.Semaphore(8)

    async def one(case: Case) -> Answer:
        async with gate:
            return await send(case.port, case.raw)

    answers = await asyncio.gather(*(one(case) for case in cases))
    wrong = [
        problem
        for case, answer in zip(cases, answers, strict=True)
        if (problem := assert_problem(case, answer))
    ]
    by_status = collections.Counter(answer.status for answer in answers)
    by_target = collections.Counter(case.target.split(" ")[0] for case in cases)
    figures.record(
        "malformed-input corpus",
        requests=len(cases),
        kinds=len({case.kind for case in cases}),
        by_target=dict(by_target),
        by_status=dict(sorted(by_status.items())),
        not_a_4xx_problem=len(wrong),
    )
    assert len(cases) >= 75
    assert wrong == [], "\n".join(wrong)
    # and the platform is still fine afterwards
    for service in stack.services.values():
        assert service.process is not None
        assert service.process.poll() is None, service.package
