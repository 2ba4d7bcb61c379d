"""The direct routes answer exactly as the general path does.

``GET /approvals`` and ``PUT /approvals/{id}`` are raw ASGI endpoints that the kit's front layer calls
itself (``direct_routes``), a decision's usual bodies are looked up instead of parsed
(:data:`approvals.api.KNOWN_BODIES`), and a 200 is written without a Starlette response. Here the same
requests go to the service as it runs and to one built with ``direct=False`` (Starlette's router
calls the same endpoints, its exception middleware answers their problems), over one database and
timesheets service: the same status, headers and bytes, on valid and invalid input.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from approvals.api import KNOWN_BODIES, read_decision, send_json
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from starlette.requests import Request
from starlette.types import Message
from svckit.body import parse_body
from svckit.contracts.approvals import DecisionIn
from svckit.problems import Problem
from svckit.responses import json_response
from svckit.settings import load_settings

from testkit.client import Reply, SignedApi, wait_ready
from testkit.fixtures import Caller, TcpProxy, runtime_url, serve_app

from .test_approvals import employee, manager, submit

#: headers that differ between any two answers
VARYING = {"date", "x-request-id"}


@pytest.fixture(scope="module")
async def routed(
    domain_database: str, service_env: dict[str, str], timesheets_link: TcpProxy, caller: Caller
) -> AsyncIterator[SignedApi]:
    """The approvals service without direct routes (the general path), beside the usual one."""
    env = {
        **service_env,
        "DATABASE_URL": runtime_url(domain_database, "approvals"),
        "TIMESHEETS_URL": f"http://127.0.0.1:{timesheets_link.port}",
        "AUDIT_URL": "http://127.0.0.1:9",
        "APPLY_TIMEOUT_SECONDS": "2",
    }
    app = create_approvals(load_settings(ApprovalsSettings, env=env), direct=False)
    async with serve_app(app) as url:
        await wait_ready(url)
        client = SignedApi(url, caller)
        yield client
        await client.close()


def request_with(body: bytes, content_type: str | None = "application/json") -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type is not None else []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "PUT", "path": "/", "headers": headers, "query_string": b""}
    return Request(scope, receive)


async def read_with(reader: Any, body: bytes, content_type: str | None) -> DecisionIn | tuple[Any, ...]:
    try:
        model: DecisionIn = await reader(request_with(body, content_type))
    except Problem as problem:
        response = problem.response()
        return response.status_code, response.headers.items(), bytes(response.body)
    return model


BODIES = [
    *KNOWN_BODIES,
    b'{"decision":"approved","comment":"ok"}',
    b'{"decision":"approved","decision":"rejected"}',
    b'{"decision":"approved"} ',
    b'{"decision":"APPROVED"}',
    b'{"decision":"approved","by":"x"}',
    b'{"decision":"approved"',
    b"",
    b"\xff",
    b"\xef\xbb\xbf" + b'{"decision":"approved"}',
    b'["approved"]',
]


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON", "text/plain", None])
@pytest.mark.parametrize("body", BODIES)
async def test_a_decision_is_read_as_parse_body_reads_it(body: bytes, content_type: str | None) -> None:
    async def general(request: Request) -> DecisionIn:
        return await parse_body(request, DecisionIn)

    assert await read_with(read_decision, body, content_type) == await read_with(general, body, content_type)


async def test_the_known_bodies_are_their_models() -> None:
    for raw, model in KNOWN_BODIES.items():
        assert model == DecisionIn.model_validate_json(raw)
        assert model.model_config.get("frozen")


async def test_a_200_is_written_as_starlette_writes_it() -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    for body in ('{"items":[],"next_cursor":null}', '{"note":"na\u00efve"}'):
        direct: list[Message] = []
        general: list[Message] = []

        async def to_direct(message: Message, sent: list[Message] = direct) -> None:
            sent.append(message)

        async def to_general(message: Message, sent: list[Message] = general) -> None:
            sent.append(message)

        await send_json(to_direct, body.encode())
        await json_response(body)({"type": "http"}, receive, to_general)
        assert direct == general


def answer(reply: Reply) -> tuple[int, list[tuple[str, str]], str]:
    headers = sorted((name.lower(), value) for name, value in reply.headers.items())
    return reply.status, [(name, value) for name, value in headers if name not in VARYING], reply.text


async def both(
    approvals: SignedApi, routed: SignedApi, method: str, path: str, who: Any, **options: Any
) -> tuple[Reply, Reply]:
    """The same request to each, with one request id (problems name it; it is signed)."""
    request_id = uuid.uuid4().hex
    replies = []
    for api in (approvals, routed):
        headers = {**options.get("headers", {}), "x-request-id": request_id}
        if who is not None:
            url = api.base_url + path
            body = options.get("data", b"")
            headers |= api.caller.headers(who, method, url, body=body, request_id=request_id)
        replies.append(await api.call(method, path, None, **{**options, "headers": headers}))
    return replies[0], replies[1]


@pytest.mark.parametrize(
    "target",
    [
        "/approvals",
        "/approvals?limit=20",
        "/approvals?limit=0",
        "/approvals?limit=x",
        "/approvals?cursor=zzz",
    ],
)
async def test_the_queue_answers_alike(approvals: SignedApi, routed: SignedApi, target: str) -> None:
    bob = manager("bob")
    direct, general = await both(approvals, routed, "GET", target, bob)
    assert answer(direct) == answer(general)
    for who in (employee(), None):  # without the scope; unsigned
        direct, general = await both(approvals, routed, "GET", target, who)
        assert direct.status in (401, 403)
        assert answer(direct) == answer(general)


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        *((body, "application/json") for body in BODIES),
        (b'{"decision":"approved"}', "text/plain"),
        (b'{"decision":"approved"}', "application/json; charset=latin-1"),
        (b'{"decision":"approved"}', "application/merge-patch+json"),
    ],
)
async def test_refused_decisions_answer_alike(
    approvals: SignedApi, routed: SignedApi, timesheets: SignedApi, raw: bytes, content_type: str
) -> None:
    alice, bob = employee("alice"), manager("bob")
    headers = {"content-type": content_type}
    own = await submit(timesheets, bob)
    targets = [f"/approvals/{uuid.uuid4()}", "/approvals/not-an-id", f"/approvals/{own}"]
    for target in targets:
        direct, general = await both(approvals, routed, "PUT", target, bob, data=raw, headers=headers)
        assert direct.status >= 400
        assert answer(direct) == answer(general)
    entry = await submit(timesheets, alice)
    for who in (employee(), None):
        direct, general = await both(
            approvals, routed, "PUT", f"/approvals/{entry}", who, data=raw, headers=headers
        )
        assert direct.status in (401, 403)
        assert answer(direct) == answer(general)


async def test_decisions_answer_alike(approvals: SignedApi, routed: SignedApi, timesheets: SignedApi) -> None:
    alice, bob, carol = employee("alice"), manager("bob"), manager("carol")
    for day, body in enumerate(
        (
            b'{"decision":"approved"}',
            b'{"decision": "rejected"}',
            b'{"decision":"approved","comment":"ok"}',
        ),
        start=23,
    ):
        headers = {"content-type": "application/json"}
        date = f"2026-11-{day}"  # the pair's day (alice's day holds 24 hours: two 8-hour entries)
        first, second = await submit(timesheets, alice, date), await submit(timesheets, alice, date)
        direct = await approvals.call("PUT", f"/approvals/{first}", bob, data=body, headers=headers)
        general = await routed.call("PUT", f"/approvals/{second}", bob, data=body, headers=headers)
        assert direct.status == 200, direct.text
        # the same document but for the ids and instants of each decision and entry
        ids = {direct.body["id"]: "decision", first: "entry", general.body["id"]: "decision", second: "entry"}
        assert masked(answer(direct), ids) == masked(answer(general), ids)
        # a second decision on each: 409 carrying the existing decision, from either path
        for entry in (first, second):
            direct, general = await both(
                approvals, routed, "PUT", f"/approvals/{entry}", carol, data=body, headers=headers
            )
            assert direct.status == 409
            assert answer(direct) == answer(general)


def masked(found: tuple[int, list[tuple[str, str]], str], ids: dict[str, str]) -> Any:
    status, headers, text = found
    for value, name in ids.items():
        text = text.replace(value, name)
    document = _without_instants(json.loads(text))
    return status, [(k, v) for k, v in headers if k != "content-length"], document


def _without_instants(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "instant" if k in ("at", "created_at", "updated_at") else _without_instants(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_instants(item) for item in value]
    return value
