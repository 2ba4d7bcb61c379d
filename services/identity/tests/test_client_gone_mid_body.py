"""A client that stops sending its body is not a failure of the provider.

A POST declaring ``Content-Length: 100`` that sends ``grant_type=`` and closes: the provider's body
readers (:mod:`identity.bodies`: Starlette's ``request.form()`` and ``request.body()``) raised
``ClientDisconnect``, which reached the kit's last-resort handler: a level=error ``unhandled error``
line with a traceback, an access line ``POST /oauth/token 500`` and
``http_requests_total{status="500"}`` counted (what the availability alerts count), on ``/oauth/token``
(form, JSON, a form in ISO-8859-1), ``/oauth/revoke`` and ``/login``. Now it is counted as the kit
counts a client gone (``http_requests_abandoned_total``), with no error line and no 500.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest

from testkit.fixtures import ServiceProcess, scrape

from .conftest import own_provider_process

CASES = [
    ("/oauth/token", "application/x-www-form-urlencoded"),
    ("/oauth/token", "application/json"),
    ("/oauth/token", "application/x-www-form-urlencoded; charset=iso-8859-1"),
    ("/oauth/revoke", "application/x-www-form-urlencoded"),
    ("/login", "application/x-www-form-urlencoded"),
]


ABANDONED = "http_requests_abandoned_total"


@pytest.fixture(scope="module")
def provider(seeded: dict[str, str]) -> Iterator[ServiceProcess]:
    """A provider of the module's own: its log and its metrics are this test's alone."""
    with own_provider_process(seeded) as process:
        yield process


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def truncated(process: ServiceProcess, path: str, content_type: str) -> None:
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as conn:
        conn.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: localhost:{process.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: 100\r\n\r\ngrant_type="
            ).encode()
        )
        time.sleep(0.5)


async def test_a_body_cut_short_is_a_client_gone_not_a_500(provider: ServiceProcess) -> None:
    before = await scrape(provider.url)
    for path, content_type in CASES:
        await asyncio.to_thread(truncated, provider, path, content_type)
    deadline = time.monotonic() + 10
    while True:
        after = await scrape(provider.url)
        gone = metric(after, ABANDONED) - metric(before, ABANDONED)
        if gone >= len(CASES) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    log = provider.logs(tail=None)
    assert "ClientDisconnect" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "unhandled error" not in log, log[-3000:]
    levels = [json.loads(line).get("level") for line in log.splitlines() if line.startswith("{")]
    assert "error" not in levels, log[-3000:]
    for path in ("/oauth/token", "/oauth/revoke", "/login"):
        assert f"POST {path} 500" not in log
        assert metric(after, "http_requests_total", route=path, status="500") == 0, path
    assert gone == len(CASES)
