"""``GET`` and ``POST /timesheets`` are served by the kit's front layer directly (raw ASGI endpoints,
``create_service_app(direct_routes=...)``): the answers are those of the same service with every
route behind Starlette's router — status, headers in order, problem documents, entries — over valid
and invalid bodies, query strings, scopes and Idempotency-Keys."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from svckit.identity import Identity
from svckit.settings import load_settings
from timesheets.app import create_app
from timesheets.settings import TimesheetsSettings

from testkit.client import Reply, SignedApi, wait_ready
from testkit.fixtures import Caller, runtime_url, serve_app, user

ALL = ("read:timesheets", "create:timesheets")
#: what differs between two answers by nature: the request id, the clock, ids the service chose
VOLATILE_HEADERS = {"x-request-id", "date"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


@pytest.fixture(scope="module")
async def routed(
    timesheets_database: str, service_env: dict[str, str], caller: Caller
) -> AsyncIterator[SignedApi]:
    """The same service with the hot routes behind the router (``direct=False``)."""
    env = {
        **service_env,
        "DATABASE_URL": runtime_url(timesheets_database, "timesheets"),
        "AUDIT_URL": "http://127.0.0.1:9",
    }
    settings = load_settings(TimesheetsSettings, env=env)
    async with serve_app(create_app(settings, direct=False)) as url:
        await wait_ready(url)
        client = SignedApi(url, caller)
        yield client
        await client.close()


def normalised(reply: Reply, who: Identity) -> tuple[int, list[tuple[str, str]], Any]:
    """The answer with what legitimately differs replaced: ids, timestamps, the caller's subject and
    cursors (they name the ids)."""
    text = reply.text.replace(who.subject, "<subject>")
    text = STAMP.sub("<time>", UUID.sub("<id>", text))
    body: Any = json.loads(text) if text else None
    if isinstance(body, dict):
        body.pop("request_id", None)
        if body.get("next_cursor"):
            body["next_cursor"] = "<cursor>"
    headers = [
        (name.lower(), UUID.sub("<id>", value))
        for name, value in reply.headers.items()
        if name.lower() not in VOLATILE_HEADERS
    ]
    return reply.status, headers, body


BASE: dict[str, Any] = {"date": "2026-11-23", "project": "Store rollout", "hours": 7.5, "notes": "wrk"}

BODIES: list[tuple[bytes, str, int]] = [
    (json.dumps(BASE).encode(), "application/json", 201),
    (json.dumps({**BASE, "date": "2026-12-01", "notes": None}).encode(), "application/json", 201),
    (
        json.dumps({**BASE, "hours": 8, "project": "  Café ☕  "}, ensure_ascii=False).encode(),
        "application/json",
        201,
    ),
    (b'{"date":"2026-11-24","project":"P\\u00e9","hours":1.25,"notes":""}', "application/json", 201),
    (json.dumps(BASE).encode(), "application/json; charset=utf-8", 201),
    (json.dumps(BASE).encode(), "application/merge-patch+json", 201),
    (json.dumps({**BASE, "hours": 7.3}).encode(), "application/json", 422),
    (json.dumps({**BASE, "hours": 0, "date": "1999-01-01", "project": ""}).encode(), "application/json", 422),
    (json.dumps({**BASE, "owner": "x"}).encode(), "application/json", 422),
    (b'{"date":"2026-11-23","project":"P","hours":8,"hours":4}', "application/json", 422),
    (b'{"date":"2026-11-23","project":"P\\ud800","hours":8}', "application/json", 422),
    (b'{"date":"2026-11-23","project":"P","hours":1e999}', "application/json", 422),
    (b'{"date":"2026-11-23","project":"P","hours":NaN}', "application/json", 422),
    (b'{"date":"2026-11-23","project":"P","hours":8} x', "application/json", 400),
    (b"{", "application/json", 400),
    (b"", "application/json", 400),
    (b"[1]", "application/json", 422),
    (b"\xff", "application/json", 400),
    (b"\xef\xbb\xbf{}", "application/json", 400),
    (b"[" * 40 + b"]" * 40, "application/json", 400),
    (json.dumps(BASE).encode(), "text/plain", 415),
    (json.dumps(BASE).encode(), "application/json; charset=latin-1", 415),
]

QUERIES = [
    ("", 200),
    ("?limit=2", 200),
    ("?limit=20&status=submitted", 200),
    ("?from=2026-11-01&to=2026-11-30&project=Store%20rollout", 200),
    ("?limit=0", 422),
    ("?limit=abc", 422),
    ("?limit=101", 422),
    ("?limit=1&limit=2", 422),
    ("?from=2026-12-01&to=2026-11-01", 422),
    ("?from=yesterday", 422),
    ("?status=bogus", 422),
    ("?stauts=submitted", 422),
    ("?cursor=abc", 422),
    ("?cursor=%%%", 400),
    ("?cursor=" + "A" * 600, 422),
    ("?project=%FF", 400),
    ("?project=%zz", 400),
    ("?project=%ED%A0%80", 400),
]


async def both(
    direct: SignedApi, routed: SignedApi, method: str, path: str, scopes: tuple[str, ...] = ALL, **kwargs: Any
) -> int:
    """The same request by two fresh callers, one to each service, answered alike."""
    answers = []
    for api in (direct, routed):
        who = user(f"direct-{uuid.uuid4().hex[:8]}", *scopes, name="Dee Rect")
        answers.append(normalised(await api.call(method, path, who, **kwargs), who))
    assert answers[0] == answers[1], (method, path, kwargs)
    return answers[0][0]


@pytest.mark.parametrize(("body", "content_type", "expected"), BODIES)
async def test_a_create_is_answered_as_through_the_router(
    api: SignedApi, routed: SignedApi, body: bytes, content_type: str, expected: int
) -> None:
    headers = {"content-type": content_type}
    assert await both(api, routed, "POST", "/timesheets", data=body, headers=headers) == expected


@pytest.mark.parametrize(("query", "expected"), QUERIES)
async def test_a_list_is_answered_as_through_the_router(
    api: SignedApi, routed: SignedApi, query: str, expected: int
) -> None:
    assert await both(api, routed, "GET", "/timesheets" + query) == expected


async def test_pages_of_entries_are_answered_as_through_the_router(api: SignedApi, routed: SignedApi) -> None:
    """A caller with entries, listed page by page (following each one's cursor) on both services."""
    pages = []
    for client in (api, routed):
        who = user(f"pager-{uuid.uuid4().hex[:8]}", *ALL, name="Pat")
        for day in range(1, 6):
            made = await client.call("POST", "/timesheets", who, json={**BASE, "date": f"2026-11-{day:02d}"})
            assert made.status == 201
        seen, path = [], "/timesheets?limit=2"
        while True:
            reply = await client.call("GET", path, who)
            seen.append(normalised(reply, who))
            if not reply.body["next_cursor"]:
                break
            path = f"/timesheets?limit=2&cursor={reply.body['next_cursor']}"
        pages.append(seen)
    assert pages[0] == pages[1]
    assert len(pages[0]) == 3


@pytest.mark.parametrize(
    ("method", "scopes"),
    [("GET", ("create:timesheets",)), ("POST", ("read:timesheets",)), ("GET", ()), ("POST", ())],
)
async def test_a_missing_scope_is_refused_as_through_the_router(
    api: SignedApi, routed: SignedApi, method: str, scopes: tuple[str, ...]
) -> None:
    body = BASE if method == "POST" else None
    assert await both(api, routed, method, "/timesheets", scopes, json=body) == 403


@pytest.mark.parametrize("method", ["HEAD", "PUT", "PATCH", "DELETE"])
async def test_other_methods_are_answered_as_through_the_router(
    api: SignedApi, routed: SignedApi, method: str
) -> None:
    assert await both(api, routed, method, "/timesheets") == (200 if method == "HEAD" else 405)


async def test_unsigned_and_stale_requests_are_refused_alike(api: SignedApi, routed: SignedApi) -> None:
    answers = []
    for client in (api, routed):
        reply = await client.call("POST", "/timesheets", None, json=BASE)
        answers.append(normalised(reply, user("nobody")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


@pytest.mark.parametrize("key", ['"a-key"', "k" * 256, "bad key"])
async def test_idempotency_keys_are_answered_as_through_the_router(
    api: SignedApi, routed: SignedApi, key: str
) -> None:
    """A key (valid or malformed), the same request again (replayed), and another body with it."""
    answers = []
    for client in (api, routed):
        who = user(f"idem-{uuid.uuid4().hex[:8]}", *ALL)
        headers = {"Idempotency-Key": key}
        seen = [
            normalised(await client.call("POST", "/timesheets", who, json=BASE, headers=headers), who),
            normalised(await client.call("POST", "/timesheets", who, json=BASE, headers=headers), who),
            normalised(
                await client.call("POST", "/timesheets", who, json={**BASE, "hours": 1}, headers=headers), who
            ),
        ]
        answers.append(seen)
    assert answers[0] == answers[1]
