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


# ---- the approvals service's internal routes (direct too: timesheets.internal) -------------------

APPROVALS = Identity.service("approvals")
#: callers the internal routes refuse (403): a user with every scope, another service, a client named
#: like the service
STRANGERS = [
    user("stranger", *ALL, "approve:timesheets", "delete:timesheets"),
    Identity.service("gateway"),
    Identity("http://localhost:9000/", "approvals", "client", "approvals", frozenset(), ""),
]


async def alike(
    direct: SignedApi, routed: SignedApi, method: str, path: str, who: Identity | None, **kwargs: Any
) -> tuple[int, list[tuple[str, str]], Any]:
    """The same request (signed afresh for each: a signature is accepted once) to both services,
    answered alike; the answer, normalised (entries' owners masked by ``owner``, if given)."""
    owner = kwargs.pop("owner", who or user("nobody"))
    answers = [normalised(await api.call(method, path, who, **kwargs), owner) for api in (direct, routed)]
    assert answers[0] == answers[1], (method, path, who, kwargs)
    return answers[0]


async def new_entry_of(api: SignedApi, who: Identity, date: str = "2026-11-23") -> str:
    made = await api.call("POST", "/timesheets", who, json={**BASE, "date": date})
    assert made.status == 201, made.text
    entry_id: str = made.body["id"]
    return entry_id


def decision_of(by: Identity, verdict: str = "approved", decision_id: str | None = None) -> dict[str, Any]:
    return {
        "decision_id": decision_id or str(uuid.uuid4()),
        "decision": verdict,
        "comment": "fine",
        "by": {"issuer": by.issuer, "subject": by.subject, "name": by.name, "client_id": by.client_id},
        "at": "2026-12-04T10:00:00Z",
    }


PENDING_QUERIES = [
    ("?exclude_issuer={issuer}&exclude_subject=boss&limit=2", 200),
    ("?exclude_issuer={issuer}&exclude_subject=boss", 200),
    ("", 422),
    ("?exclude_issuer={issuer}", 422),
    ("?exclude_issuer={issuer}&exclude_subject=boss&limit=0", 422),
    ("?exclude_issuer={issuer}&exclude_subject=boss&limit=abc", 422),
    ("?exclude_issuer={issuer}&exclude_subject=boss&cursor=abc", 422),
    ("?exclude_issuer={issuer}&exclude_subject=boss&cursor=%%%", 400),
    ("?exclude_issuer={issuer}&exclude_subject=boss&bogus=1", 422),
]


@pytest.mark.parametrize(("query", "expected"), PENDING_QUERIES)
async def test_the_pending_queue_is_answered_as_through_the_router(
    api: SignedApi, routed: SignedApi, query: str, expected: int
) -> None:
    """Over one database: the same page (the pending entries are everyone's, so the owner of two new
    ones is masked), and the same problems. The two are dated the last work date there is, so that
    they head the queue (newest date, then newest created) whatever other tests left pending in the
    database the suite shares."""
    owner = user(f"queued-{uuid.uuid4().hex[:8]}", *ALL, name="Quinn")
    for _ in (1, 2):
        await new_entry_of(api, owner, "2099-12-31")
    path = "/internal/timesheets/pending" + query.format(issuer=owner.issuer)
    status, _, body = await alike(api, routed, "GET", path, APPROVALS, owner=owner)
    assert status == expected
    if status == 200 and "limit=2" in query:
        assert [item["owner"]["subject"] for item in body["items"]] == ["<subject>", "<subject>"]
        cursor = (await api.call("GET", path, APPROVALS)).body["next_cursor"]
        await alike(api, routed, "GET", f"{path}&cursor={cursor}", APPROVALS, owner=owner)
    for who in (*STRANGERS, None):
        assert (await alike(api, routed, "GET", path, who))[0] == (401 if who is None else 403)


async def test_an_entry_is_answered_to_the_peer_as_through_the_router(
    api: SignedApi, routed: SignedApi
) -> None:
    owner = user(f"peered-{uuid.uuid4().hex[:8]}", *ALL, "delete:timesheets", name="Pia")
    live, deleted = await new_entry_of(api, owner), await new_entry_of(api, owner, "2026-11-24")
    assert (await api.call("DELETE", f"/timesheets/{deleted}", owner)).status == 204
    for target, expected in [
        (live, 200),
        (deleted, 404),
        (str(uuid.uuid4()), 404),
        ("not-an-id", 404),
        (live.upper(), 200),
    ]:
        path = f"/internal/timesheets/{target}"
        assert (await alike(api, routed, "GET", path, APPROVALS, owner=owner))[0] == expected
        assert (await alike(api, routed, "HEAD", path, APPROVALS, owner=owner))[0] == expected
        for who in (*STRANGERS, None):
            assert (await alike(api, routed, "GET", path, who))[0] == (401 if who is None else 403)
        for method in ("PUT", "DELETE", "POST"):
            assert (await alike(api, routed, method, path, APPROVALS, json={}))[0] == 405
    assert (await alike(api, routed, "POST", "/internal/timesheets/pending", APPROVALS, json={}))[0] == 405
    assert (await alike(api, routed, "GET", f"/internal/timesheets/{live}/decision", APPROVALS))[0] == 405


async def test_decisions_are_applied_as_through_the_router(
    api: SignedApi, routed: SignedApi, db: Any
) -> None:
    """Each step on an entry of its own on each service: applied, repeated (200 again), another
    decision (409 with the entry), the owner deciding (403), a deleted or unknown entry (404), and
    the one audit event each decision queued."""
    owner = user(f"decided-{uuid.uuid4().hex[:8]}", *ALL, "delete:timesheets", name="Dora")
    boss, other = user(f"boss-{uuid.uuid4().hex[:8]}", name="Bo"), user(f"boss-{uuid.uuid4().hex[:8]}")
    entries = [await new_entry_of(client, owner) for client in (api, routed)]
    bodies = [decision_of(boss, "rejected") for _ in entries]
    answers: list[list[Any]] = [[], []]

    def step(n: int, reply: Reply) -> None:
        text = reply.text.replace(entries[n], "<entry>").replace(bodies[n]["decision_id"], "<decision>")
        answers[n].append(normalised(Reply(reply.status, reply.headers, None, text), owner))

    for n, client in enumerate((api, routed)):
        path = f"/internal/timesheets/{entries[n]}/decision"
        step(n, await client.call("POST", path, APPROVALS, json=decision_of(owner)))  # own: 403
        step(n, await client.call("POST", path, APPROVALS, json=bodies[n]))  # applied
        step(n, await client.call("POST", path, APPROVALS, json=bodies[n]))  # repeated
        step(n, await client.call("POST", path, APPROVALS, json=decision_of(other)))  # 409
        assert (await client.call("DELETE", f"/timesheets/{entries[n]}", owner)).status == 204
        step(n, await client.call("POST", path, APPROVALS, json=bodies[n]))  # deleted, yet applied: 200
        step(n, await client.call("POST", path, APPROVALS, json=decision_of(other)))  # gone: 404
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [403, 200, 200, 409, 200, 404]
    events = []
    for n, entry in enumerate(entries):
        rows = await db.fetch(
            "SELECT payload FROM outbox WHERE payload->>'action' = 'timesheet.decided' "
            "AND payload->'resource'->>'id' = $1",
            entry,
        )
        assert len(rows) == 1
        payload = json.loads(rows[0]["payload"])
        for name in ("id", "at", "occurred_at", "request_id"):
            payload.pop(name, None)
        events.append(
            json.loads(
                json.dumps(payload).replace(entry, "<entry>").replace(bodies[n]["decision_id"], "<decision>")
            )
        )
    assert events[0] == events[1]


DECISION_BODIES: list[tuple[Any, str, int]] = [
    ('{"decision_id":"not-a-uuid"}', "application/json", 422),
    ("{}", "application/json", 422),
    ("{", "application/json", 400),
    ("", "application/json", 400),
    (b"\xff", "application/json", 400),
    ("[1]", "application/json", 422),
    ("{DECISION}", "text/plain", 415),
    ("{DECISION}", "application/json; charset=latin-1", 415),
    ('{"decision_id":"x","decision_id":"y"}', "application/json", 422),
]


@pytest.mark.parametrize(("raw", "content_type", "expected"), DECISION_BODIES)
async def test_a_refused_decision_is_answered_as_through_the_router(
    api: SignedApi, routed: SignedApi, raw: Any, content_type: str, expected: int
) -> None:
    owner = user(f"refused-{uuid.uuid4().hex[:8]}", *ALL, name="Rey")
    entry = await new_entry_of(api, owner)
    if isinstance(raw, str):
        raw = raw.replace("{DECISION}", json.dumps(decision_of(user("boss")))).encode()
    headers = {"content-type": content_type}
    for target in (entry, str(uuid.uuid4()), "not-an-id"):
        path = f"/internal/timesheets/{target}/decision"
        status, _, _ = await alike(api, routed, "POST", path, APPROVALS, data=raw, headers=headers)
        assert status == (404 if target == "not-an-id" else expected)
        for who in (*STRANGERS, None):
            assert (await alike(api, routed, "POST", path, who, data=raw, headers=headers))[0] == (
                401 if who is None else 403
            )
    # none of it changed the entry
    assert (await api.call("GET", f"/internal/timesheets/{entry}", APPROVALS)).body["status"] == "submitted"


async def test_without_the_database_the_internal_routes_answer_alike(
    service_env: dict[str, str], caller: Caller
) -> None:
    """``DatabaseUnavailable`` (no pool: Postgres unreachable) answered by the app's handler, 503 with
    Retry-After, on either path."""
    env = {
        **service_env,
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "AUDIT_URL": "http://127.0.0.1:9",
    }
    settings = load_settings(TimesheetsSettings, env=env)
    async with (
        serve_app(create_app(settings)) as direct_url,
        serve_app(create_app(settings, direct=False)) as routed_url,
    ):
        direct, general = SignedApi(direct_url, caller), SignedApi(routed_url, caller)
        try:
            entry = str(uuid.uuid4())
            for method, path, body in [
                ("GET", "/internal/timesheets/pending?exclude_issuer=i&exclude_subject=s", None),
                ("GET", f"/internal/timesheets/{entry}", None),
                ("POST", f"/internal/timesheets/{entry}/decision", decision_of(user("boss"))),
            ]:
                status, headers, _ = await alike(direct, general, method, path, APPROVALS, json=body)
                assert status == 503
                assert ("retry-after", "2") in headers
        finally:
            await direct.close()
            await general.close()
