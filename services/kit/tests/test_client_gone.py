"""A client that leaves while its request body is still on its way is not a failure of the service.

Starlette raises ``ClientDisconnect`` from ``request.body()``, ``request.form()`` and
``request.stream()`` once the server says the client is gone (it closed the connection, or the body
stopped arriving for ``REQUEST_BODY_TIMEOUT_SECONDS`` and the HTTP layer answered 408 itself). The
exception reached the kit's last-resort handler: an ``unhandled error`` line with a traceback, and the
request counted as a 500 in ``http_requests_total`` (what the availability alerts count) and in the
access log, although no answer could be sent at all. A request read through the identity gate (a
service's signed routes) ended without an answer and was counted as a 500 too.

Now such a request is counted as the kit counts a client that went away elsewhere: closed by the
client, ``http_requests_abandoned_total`` (:mod:`svckit.abandoned`); timed out, the HTTP layer's
``http_refused_total{status="408"}`` alone. Neither is in ``http_requests_total`` (as the HTTP layer's
own drops and refusals are not), and nothing is logged at error level.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from svckit.app import create_service_app
from svckit.server import ProblemHttpProtocol
from svckit.settings import ServiceSettings, load_settings

from testkit.fixtures import Caller, receiver_env, serve_app, user


async def form(request: Request) -> Response:
    return JSONResponse({"fields": len(await request.form())})


async def body(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


class ShortBodyTimeout(ProblemHttpProtocol):
    request_body_timeout = 0.5


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts(route: str) -> dict[str, float]:
    """(A signed request the gate read is counted under the route ``unmatched``: it never reached
    the router.)"""
    return {
        "500": sum(
            sample("http_requests_total", route=name, method="POST", status="500")
            for name in (route, "unmatched")
        ),
        "abandoned": sample("http_requests_abandoned_total"),
        "408": sample("http_refused_total", status="408"),
    }


@pytest.fixture(scope="module")
async def base_url(identity_keys: dict[str, str]) -> AsyncIterator[str]:
    settings = load_settings(ServiceSettings, env=receiver_env(identity_keys))
    routes = [
        Route("/open/form", form, methods=["POST"]),
        Route("/open/body", body, methods=["POST"]),
        Route("/signed", body, methods=["POST"]),
    ]
    app: Any = create_service_app(settings, routes, open_paths=["/open/form", "/open/body"])
    app.http_protocol = ShortBodyTimeout
    async with serve_app(app) as url:
        yield url


async def truncated(url: str, path: str, *, close_after: float | None, headers: str = "") -> bytes:
    """A POST declaring 100 bytes of form that sends 11 of them, then closes (after ``close_after``
    seconds) or waits for the server's answer; what the server sent."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n"
            f"{headers}\r\ngrant_type="
        ).encode()
    )
    await writer.drain()
    answer = b""
    try:
        if close_after is not None:
            await asyncio.sleep(close_after)
        else:
            answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    await asyncio.sleep(0.3)  # the server hears the close, the handler ends, the middleware counts
    return answer


@pytest.mark.parametrize("path", ["/open/form", "/open/body", "/signed"])
async def test_a_client_that_closes_mid_body_is_counted_abandoned_not_500(
    base_url: str, caller: Caller, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """Fails before the fix: ``unhandled error`` with ``ClientDisconnect`` (the open routes) and a
    500 counted for each."""
    signed = ""
    if path == "/signed":
        url = base_url + path
        signed = "".join(
            f"{name}: {value}\r\n"
            for name, value in caller.headers(user("alice"), "POST", url, body=b"x" * 100).items()
        )
    before = counts(path)
    with caplog.at_level(logging.INFO):
        await truncated(base_url, path, close_after=0.3, headers=signed)
    after = counts(path)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "ClientDisconnect" not in caplog.text
    assert after["500"] == before["500"], "a client gone counted as a 500"
    assert after["abandoned"] == before["abandoned"] + 1
    assert after["408"] == before["408"]
    assert f"POST {path} 500" not in caplog.text


@pytest.mark.parametrize("path", ["/open/form", "/open/body"])
async def test_a_body_that_stops_arriving_is_the_http_layers_408_not_500(
    base_url: str, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    before = counts(path)
    with caplog.at_level(logging.INFO):
        answer = await truncated(base_url, path, close_after=None)
    after = counts(path)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert after["500"] == before["500"], "a body timeout counted as a 500"
    assert after["408"] == before["408"] + 1
    assert after["abandoned"] == before["abandoned"], "a timeout is the HTTP layer's 408, not abandoned"
