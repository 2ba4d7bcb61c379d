"""The app factory over real HTTP: problem documents, identity refusal, metrics, request ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.body import parse_body
from svckit.db import DatabaseUnavailable
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import Caller, metrics_url, receiver_env, serve_app, user


class Entry(BaseModel):
    project: str = Field(min_length=1, max_length=100)
    hours: float = Field(gt=0, le=24)


async def create(request: Request) -> Response:
    entry = await parse_body(request, Entry)
    return JSONResponse(entry.model_dump(), status_code=201)


async def show(request: Request) -> Response:
    identity = request.state.identity
    return JSONResponse({"id": request.path_params["id"], "subject": identity.subject})


async def crash(request: Request) -> Response:
    raise RuntimeError("internal detail: password=hunter2")


@pytest.fixture(scope="module")
async def base_url(identity_keys: dict[str, str]) -> AsyncIterator[str]:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    routes = [
        Route("/things", create, methods=["POST"]),
        Route("/things/{id}", show, methods=["GET"]),
        Route("/crash", crash, methods=["GET"]),
    ]
    app = create_service_app(settings, routes, max_body_size=1024, openapi={"openapi": "3.1.0"})
    async with serve_app(app) as url:
        yield url


async def call(
    caller: Caller, method: str, url: str, *, signed: bool = True, **kwargs: object
) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
    if "json" in kwargs:  # sent as the bytes that are signed
        kwargs["data"] = json.dumps(kwargs.pop("json")).encode()
        headers.setdefault("content-type", "application/json")
    data = kwargs.get("data", b"")
    body = data.encode() if isinstance(data, str) else data if isinstance(data, bytes) else b""
    if signed:
        headers.update(caller.headers(user("alice", "read:timesheets"), method, url, body=body))
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url,
            headers=headers,
            **kwargs,  # type: ignore[arg-type]
        ) as response,
    ):
        body = await response.json(content_type=None)
        return response.status, response.headers.copy(), body  # type: ignore[return-value]


async def test_signed_request_reaches_handler(base_url: str, caller: Caller) -> None:
    status, headers, body = await call(caller, "GET", f"{base_url}/things/42")
    assert status == 200
    assert body == {"id": "42", "subject": "alice"}
    assert len(headers["x-request-id"]) >= 8


async def test_unsigned_request_refused(base_url: str, caller: Caller) -> None:
    status, headers, body = await call(caller, "GET", f"{base_url}/things/42", signed=False)
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert body["reason"] == "missing"


async def test_identity_header_that_is_not_utf8_is_a_malformed_401(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /things/42 HTTP/1.1\r\nHost: x\r\nX-Identity-Subject: \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert b"application/problem+json" in head
    assert json.loads(body)["reason"] == "malformed"


async def test_request_id_kept_when_well_formed(base_url: str, caller: Caller) -> None:
    url = f"{base_url}/things/1"
    headers = caller.headers(user("alice"), "GET", url)
    headers["x-request-id"] = "trace-abcdef123"
    signer_headers = caller.signer("timesheets").headers(
        user("alice"), method="GET", target="/things/1", request_id="trace-abcdef123"
    )
    async with aiohttp.ClientSession() as session, session.get(url, headers=signer_headers) as response:
        assert response.headers["x-request-id"] == "trace-abcdef123"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/nowhere", {}, 404),
        ("DELETE", "/things/1", {}, 405),
        ("POST", "/things", {"data": b"x" * 5000, "headers": {"content-type": "application/json"}}, 413),
        ("POST", "/things", {"data": b"project=x", "headers": {"content-type": "text/plain"}}, 415),
        (
            "POST",
            "/things",
            {"data": b"{}", "headers": {"content-type": "application/json", "content-encoding": "gzip"}},
            415,
        ),
        ("POST", "/things", {"data": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ("POST", "/things", {"json": {"project": "", "hours": 30}}, 422),
        ("GET", "/crash", {}, 500),
    ],
)
async def test_errors_are_problem_documents(
    base_url: str, caller: Caller, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    got, headers, body = await call(caller, method, base_url + path, **kwargs)
    assert got == status
    assert headers["content-type"] == "application/problem+json"
    assert body["status"] == status
    assert "title" in body
    assert body.get("detail"), body  # every refusal says what was wrong, the router's 404/405 too
    if status == 405:
        assert set(headers["allow"].split(", ")) == {"GET", "HEAD"}
    text = str(body)
    assert "Traceback" not in text
    assert "hunter2" not in text
    if status == 422:
        fields = {error["field"] for error in body["errors"]}  # type: ignore[attr-defined]
        assert fields == {"project", "hours"}


async def test_metrics_use_route_templates(base_url: str, caller: Caller) -> None:
    await call(caller, "GET", f"{base_url}/things/777")
    async with aiohttp.ClientSession() as session, session.get(metrics_url(base_url)) as response:
        text = await response.text()
    assert 'route="/things/{id}"' in text
    assert "/things/777" not in text
    assert "http_request_duration_seconds_bucket" in text
    assert "process_cpu_seconds_total" in text


async def test_operational_paths_are_open(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz", "/openapi.json"):
            async with session.get(base_url + path) as response:
                assert response.status == 200, path


async def test_a_500_keeps_the_connection_usable(base_url: str, caller: Caller) -> None:
    """uvicorn closes a connection whose application raised, without ``Connection: close``: a pooled
    client (the gateway) would send the next request, maybe another user's, into a closing socket.
    The kit answers the 500 itself, so the same connection serves the next request."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for path in ("/crash", "/things/1", "/crash", "/things/2"):
            headers = caller.headers(user("alice"), "GET", base_url + path)
            lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(
                next(
                    line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            body = json.loads(await reader.readexactly(length))
            assert b"connection: close" not in head.lower()
            if path == "/crash":
                assert head.startswith(b"HTTP/1.1 500")
                assert b"application/problem+json" in head
                assert body["status"] == 500
            else:
                assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        writer.close()


async def test_a_catch_all_route_does_not_shadow_the_operational_paths(identity_keys: dict[str, str]) -> None:
    """The service's routes are tried first (the busy ones), but a catch-all after /healthz and /readyz
    (the gateway serves its SPA through one)."""

    async def anything(request: Request) -> Response:
        return JSONResponse({"caught": request.path_params["path"]})

    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    app = create_service_app(
        settings, [Route("/{path:path}", anything, methods=["GET"])], require_identity=False
    )
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(url + path) as response:
                assert response.status == 200
                assert "caught" not in await response.json()
        async with session.get(url + "/anything/else") as response:
            assert await response.json() == {"caught": "anything/else"}


async def test_a_chunked_body_over_the_limit_is_a_413_on_signed_and_open_routes(
    base_url: str, caller: Caller, identity_keys: dict[str, str]
) -> None:
    """Without a Content-Length the limit is counted as the body arrives: where the identity check
    reads it (a signed route) and where the application does (a service that verifies nobody)."""
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    open_app = create_service_app(
        settings, [Route("/things", create, methods=["POST"])], max_body_size=1024, require_identity=False
    )
    body = b'{"project": "' + b"x" * 1500 + b'", "hours": 1}'
    chunked = (
        b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:700], body[700:])) + b"0\r\n\r\n"
    )
    async with serve_app(open_app) as open_url:
        for url, signed in ((base_url, True), (open_url, False)):
            headers = caller.headers(user("alice"), "POST", url + "/things", body=body) if signed else {}
            lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(
                    b"POST /things HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n" + lines.encode() + b"\r\n" + chunked
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 413"), (url, head)
                assert b"application/problem+json" in head
                assert b"x-request-id" in head.lower()
            finally:
                writer.close()


class RawEndpoint:
    """A raw ASGI endpoint: what a service serves as a direct route."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        if request.query_params.get("fail") == "db":
            raise DatabaseUnavailable("down")
        if request.query_params.get("fail") == "crash":
            raise RuntimeError("internal detail: password=hunter2")
        entry = await parse_body(request, Entry)
        await JSONResponse(entry.model_dump(), status_code=201)(scope, receive, send)


async def test_a_direct_route_answers_as_through_the_router(
    identity_keys: dict[str, str], caller: Caller
) -> None:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    answers = []
    for direct in (False, True):
        route = Route("/raw", RawEndpoint(), methods=["POST"])
        app = create_service_app(settings, [route], direct_routes=[route] if direct else [])
        async with serve_app(app) as url:
            seen = []
            for query, kwargs in (
                ("", {"json": {"project": "p", "hours": 2}}),
                ("", {"json": {"project": "", "hours": 30}}),
                ("", {"data": b"{not json", "headers": {"content-type": "application/json"}}),
                ("", {"data": b"{}", "headers": {"content-type": "text/plain"}}),
                ("?fail=db", {"json": {}}),
                ("?fail=crash", {"json": {}}),
            ):
                status, headers, body = await call(caller, "POST", f"{url}/raw{query}", **kwargs)
                assert isinstance(body, dict)
                body.pop("request_id", None)
                seen.append((status, headers["content-type"], headers.get("retry-after"), body))
            got, _, _ = await call(caller, "GET", f"{url}/raw")
            seen.append((got, "", None, {}))
            async with aiohttp.ClientSession() as session, session.get(metrics_url(url)) as response:
                text = await response.text()
            assert 'route="/raw"' in text  # the route template, served directly or not
        answers.append(seen)
    assert answers[0] == answers[1]
    assert [answer[0] for answer in answers[1]] == [201, 422, 400, 415, 503, 500, 405]


class Named:
    """A raw ASGI endpoint that says which one it is (and through which way in it was reached)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # the router notes the path parameters in the scope; the front layer, serving directly, does not
        via = "router" if "path_params" in scope else "front"
        await JSONResponse({"endpoint": self.name, "route": scope["route"].path, "via": via})(
            scope, receive, send
        )


async def test_one_path_has_a_direct_route_per_method(identity_keys: dict[str, str], caller: Caller) -> None:
    """A list and a create on the same path, both direct: each method reaches its own endpoint, and a
    method neither serves is answered as the router answers it (405 with the allowed methods)."""
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    answers = []
    for direct in (False, True):
        listing = Route("/items", Named("list"), methods=["GET"])
        making = Route("/items", Named("create"), methods=["POST"])
        routes = [listing, making]
        app = create_service_app(settings, routes, direct_routes=routes if direct else [])
        async with serve_app(app) as url:
            seen = []
            for method in ("GET", "POST", "PUT", "DELETE"):
                status, headers, body = await call(caller, method, f"{url}/items", json={})
                body.pop("request_id", None)
                assert body.pop("via", "front" if direct else "router") == ("front" if direct else "router")
                seen.append((status, headers.get("allow"), body))
        answers.append(seen)
    assert answers[0] == answers[1]
    assert [answer[0] for answer in answers[1]] == [200, 200, 405, 405]
    assert answers[1][0][2] == {"endpoint": "list", "route": "/items"}
    assert answers[1][1][2] == {"endpoint": "create", "route": "/items"}


class ParamEndpoint:
    """A raw ASGI endpoint of a route with a path parameter: answers with what it was given."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        if request.path_params["id"] == 13:
            raise DatabaseUnavailable("down")
        await JSONResponse({"id": request.path_params["id"], "path": request.url.path})(scope, receive, send)


async def test_a_direct_route_with_a_path_parameter_answers_as_through_the_router(
    identity_keys: dict[str, str], caller: Caller
) -> None:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    answers = []
    for direct in (False, True):
        exact = Route("/items", RawEndpoint(), methods=["POST"])
        param = Route("/items/{id:int}", ParamEndpoint(), methods=["PUT"])
        routes = [exact, param]
        app = create_service_app(settings, routes, direct_routes=routes if direct else [])
        async with serve_app(app) as url:
            seen = []
            for method, path in (
                ("PUT", "/items/7"),
                ("PUT", "/items/13"),
                ("PUT", "/items/x"),  # no match for the convertor: the router's 404
                ("GET", "/items/7"),  # the router's 405
                ("PUT", "/items/7/more"),
                ("POST", "/items"),
            ):
                status, headers, body = await call(
                    caller, method, f"{url}{path}", json={"project": "p", "hours": 1}
                )
                body.pop("request_id", None)
                seen.append((status, headers.get("content-type"), headers.get("allow"), body))
            async with aiohttp.ClientSession() as session, session.get(metrics_url(url)) as response:
                text = await response.text()
            assert 'route="/items/{id:int}"' in text
        answers.append(seen)
    assert answers[0] == answers[1]
    assert [answer[0] for answer in answers[1]] == [200, 503, 404, 405, 404, 201]
    assert answers[1][0][3] == {"id": 7, "path": "/items/7"}


@pytest.mark.parametrize(
    "timestamp",
    [
        "²",  # str.isdigit() says yes (a superscript two), int() says no
        "9" * 5000,  # digits past Python's 4,300-digit limit for int()
        "١٧٨٠٠٠٠٠٠٠",  # Arabic-Indic digits: int() reads them, but the contract sends ASCII digits
    ],
)
async def test_an_identity_timestamp_that_is_not_ascii_digits_is_a_401_not_a_500(
    base_url: str, caller: Caller, timestamp: str
) -> None:
    """Anyone who can reach a service (no key needed) sends an otherwise well-formed identity whose
    X-Identity-Timestamp is digits to ``str.isdigit`` that ``int()`` refuses: it was a 500 (the
    refusal then neither counted nor on the audit trail); it is a 401 ``malformed``, as is any
    timestamp that is not ASCII digits."""
    headers = caller.headers(user("alice", "read:timesheets"), "GET", f"{base_url}/things/42")
    headers["x-identity-timestamp"] = timestamp
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head_lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET /things/42 HTTP/1.1\r\nHost: x\r\n{head_lines}Connection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["reason"] == "malformed"
