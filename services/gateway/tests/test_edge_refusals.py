"""What the edge refuses, and how, for input found by probing it: DPoP proof claims that are not
ASCII, a ``cnf`` with members besides ``jkt``, several Authorization headers (on the audit trail), and
at the HTTP layer a WebSocket Upgrade, two Host or Content-Type fields, an endless header value (431)
and clients that stall in a head or a body (408). Each case was a defect once; the docstrings say what it was.

DPoP cases run against the in-process gateway of conftest.py; the HTTP-layer cases against a real
``python -m gateway`` process, served exactly as in production (svckit.cli.SERVING_OPTIONS).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from svckit.server import MAX_HEAD_BYTES

from testkit.dpop import DpopKey
from testkit.fixtures import ServiceProcess

from .conftest import Echo, Provider, StartGateway, process_env
from .test_dpop import bound_token, dpop_call

ROUTE = "/api/timesheets"


# --- DPoP: a proof claim that is not ASCII ------------------------------------------------------


async def test_a_proof_whose_ath_is_not_ascii_is_refused_not_a_500(
    http: aiohttp.ClientSession, gateway: str, provider: Provider
) -> None:
    """``hmac.compare_digest`` raises TypeError on a str with non-ASCII characters: a caller with a
    DPoP-bound token (any user) and its own key turned the proof check into a 500."""
    key = DpopKey()
    token = bound_token(provider, key)
    url = f"{gateway}{ROUTE}"
    status, headers, body = await dpop_call(
        http, "GET", url, token, key.proof("GET", url, access_token=token, ath="\u00e9")
    )
    assert status == 401, body
    assert body["reason"] == "dpop_ath"
    assert headers["Content-Type"] == "application/problem+json"


async def test_a_proof_whose_nonce_is_not_ascii_is_refused_not_a_500(
    http: aiohttp.ClientSession, start_gateway: StartGateway, provider: Provider
) -> None:
    """The same with server nonces on (``NonceSource.valid``); the provider's token endpoint runs the
    same check (svckit.dpop), before any token binding."""
    key = DpopKey()
    async with start_gateway(dpop_nonces=True, dpop_nonce_secret="n" * 40) as gateway:
        token = bound_token(provider, key)
        url = f"{gateway}{ROUTE}"
        status, headers, body = await dpop_call(
            http, "GET", url, token, key.proof("GET", url, access_token=token, nonce="\u00e9")
        )
    assert status == 401, body
    assert body["reason"] == "dpop_nonce"
    assert headers["DPoP-Nonce"]


# --- cnf: "any other cnf member is refused" (docs/CONTRACTS.md, DPoP) ------------------------------


async def test_a_confirmation_with_a_member_besides_jkt_is_refused(
    http: aiohttp.ClientSession, gateway: str, provider: Provider
) -> None:
    """A token bound to a DPoP key *and* an mTLS certificate (``x5t#S256``): the gateway checks only
    the DPoP key and lets the certificate binding go unchecked, where the contract refuses any other
    ``cnf`` member (reason ``cnf``)."""
    key = DpopKey()
    token = provider.token(cnf={"jkt": key.jkt, "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    url = f"{gateway}{ROUTE}"
    status, _, body = await dpop_call(http, "GET", url, token, key.proof("GET", url, access_token=token))
    assert status == 401, body
    assert body["reason"] == "cnf"


# --- the HTTP layer of a real gateway process -------------------------------------------------------

#: short, so that a stalled client is answered within the test (the defaults: svckit.server)
STALL_TIMEOUTS = {"REQUEST_HEAD_TIMEOUT_SECONDS": "1", "REQUEST_BODY_TIMEOUT_SECONDS": "1"}


@pytest.fixture(scope="module")
async def process(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> AsyncIterator[ServiceProcess]:
    env = process_env(provider, echo, identity_keys, redis_prefix, **STALL_TIMEOUTS)
    started = ServiceProcess("gateway", env)
    await asyncio.to_thread(started.start)
    try:
        yield started
    finally:
        await asyncio.to_thread(started.stop)


def one_response(received: bytes) -> bool:
    """Whether ``received`` holds a whole response: its head and the ``Content-Length`` bytes after."""
    head, found, body = received.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            return len(body) >= int(value)
    return False


async def exchange(url: str, data: bytes, wait: float, *, answered: bool = False) -> tuple[bytes, bool]:
    """Send ``data``; what came back within ``wait`` seconds, and whether the server closed.
    ``answered``: return as soon as one whole response is there (the server keeps the connection)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    try:
        writer.write(data)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                return received, True
            received += chunk
            if answered and one_response(received):
                break
        return received, False
    finally:
        writer.close()


def problem_status(response: bytes) -> int:
    head = response.partition(b"\r\n\r\n")[0].lower()
    assert b"content-type: application/problem+json" in head, response[:300]
    return int(head.split(b" ", 2)[1])


async def test_a_websocket_upgrade_is_answered_with_a_problem_document(process: ServiceProcess) -> None:
    """uvicorn[standard] brings websockets, and SERVING_OPTIONS leaves ``ws`` on "auto": an Upgrade
    request never reaches the edge and is answered by uvicorn in text/plain (403 with an empty body,
    or 400 "Failed to open a WebSocket connection…"), on /api as on every other path. Without a
    token the edge would answer 401 with a problem document."""
    for extra in (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""):
        response, _ = await exchange(
            process.url,
            b"GET /api/timesheets HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + extra
            + b"\r\n",
            3,
            answered=True,
        )
        assert problem_status(response) == 401


async def test_a_request_with_two_host_fields_is_refused(process: ServiceProcess, provider: Provider) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host field line. The
    gateway serves it, reading the last one (X-Forwarded-Host, the DPoP ``htu``) where a proxy in
    front may have routed on the first."""
    token = provider.token().encode()
    response, _ = await exchange(
        process.url,
        b"GET /api/timesheets HTTP/1.1\r\nHost: gw.example\r\nHost: evil.example\r\n"
        b"Authorization: Bearer " + token + b"\r\n\r\n",
        3,
    )
    assert problem_status(response) == 400


async def test_a_request_with_two_content_type_fields_is_refused(
    process: ServiceProcess, provider: Provider
) -> None:
    """Content-Type is a singleton (RFC 9110 §8.3). The gateway forwarded both lines and every
    service read the first, but a proxy or framework in front may read the last: one body, two media
    types. Refused at the edge, before a token is looked at or anything is forwarded."""
    token = provider.token().encode()
    body = b'{"date": "2026-12-01", "hours": 1}'
    response, _ = await exchange(
        process.url,
        b"POST /api/timesheets HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Content-Type: application/json\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,
        3,
    )
    assert problem_status(response) == 400
    assert b"more than one Content-Type" in response


async def test_a_header_over_the_head_limit_is_refused_before_its_line_ends(process: ServiceProcess) -> None:
    """The 431 for a head over MAX_HEAD_BYTES is checked per complete header line only (httptools
    buffers a field value until the next field begins), so one endless header value is buffered
    without bound — 64 MiB by one connection in a few seconds — and never answered."""
    too_much = b"a" * (4 * MAX_HEAD_BYTES)
    response, _ = await exchange(
        process.url, b"GET /api/timesheets HTTP/1.1\r\nHost: gw\r\nX-Big: " + too_much, 3
    )
    assert response, "no answer while the oversized header value is still open"
    assert problem_status(response) == 431


async def test_a_stalled_request_head_does_not_hold_the_connection_forever(process: ServiceProcess) -> None:
    """A client that sends half a request head and goes quiet is never timed out: the keep-alive timer
    sees a request "in progress" and is not armed again (slowloris: connections and file descriptors
    held for as long as the client likes). Bounded now by REQUEST_HEAD_TIMEOUT_SECONDS: 408."""
    wait = 5
    response, closed = await exchange(process.url, b"GET /api/timesheets HTTP/1.1\r\nHost: gw\r\n", wait)
    assert closed, f"the connection is still open after {wait} s of silence in the middle of a head"
    assert problem_status(response) == 408


async def test_a_stalled_request_body_does_not_hold_the_connection_forever(
    process: ServiceProcess, provider: Provider
) -> None:
    """The same for a body: a declared Content-Length of which only a part arrives held the connection
    (and the edge's task waiting for the rest) for good. Bounded now by REQUEST_BODY_TIMEOUT_SECONDS:
    408, and the request never goes upstream. And on time: the 408 came up to one period of the
    connection's timer late (1 s here, 5 s with the defaults), now when the timeout ends."""
    token = provider.scoped("create:timesheets").encode()
    wait = 5
    started = time.monotonic()
    response, closed = await exchange(
        process.url,
        b"POST /api/timesheets HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + token + b"\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":',
        wait,
    )
    assert closed, f"the connection is still open after {wait} s of silence in the middle of a body"
    assert problem_status(response) == 408
    late = time.monotonic() - started - float(STALL_TIMEOUTS["REQUEST_BODY_TIMEOUT_SECONDS"])
    assert -0.05 < late < 0.5, f"the 408 came {late:+.2f} s after the body timeout"


# --- denials on the audit trail ------------------------------------------------------------------


async def test_several_authorization_headers_are_a_denial_on_the_audit_trail(
    start_gateway: StartGateway, provider: Provider, echo: Echo
) -> None:
    """The gateway README lists "several Authorization headers" under the reason ``malformed``, whose
    codes go to the metric, the problem body *and* the audit trail's ``details.reason``; the refusal
    is counted in gateway_auth_failures_total{reason="malformed"} but never reaches the trail."""
    from multidict import CIMultiDict

    from .test_cors_limits_audit import BEHIND_PROXY, unique_address, wait_for_address

    address = unique_address()
    token = provider.token()
    async with start_gateway(**BEHIND_PROXY) as gateway, aiohttp.ClientSession() as session:
        headers: CIMultiDict[str] = CIMultiDict({"X-Forwarded-For": address})
        headers.add("Authorization", f"Bearer {token}")
        headers.add("Authorization", f"Bearer {token}")
        async with session.get(f"{gateway}{ROUTE}", headers=headers) as response:
            assert response.status == 400
            assert (await response.json())["reason"] == "malformed"
        records = await wait_for_address(echo, address)
    assert [record["details"]["reason"] for record in records] == ["malformed"]


@pytest.mark.parametrize(
    ("coding", "status", "named"),
    [
        (b"xyz, chunked", 501, b"'xyz'"),
        (b"gzip, chunked", 501, b"'gzip'"),
        (b"chunked, chunked", 400, b"Transfer-Encoding"),
    ],
)
async def test_a_transfer_coding_besides_chunked_is_refused_and_nothing_is_forwarded(
    process: ServiceProcess, provider: Provider, echo: Echo, coding: bytes, status: int, named: bytes
) -> None:
    """RFC 9112 §6.1: only chunked is understood. llhttp read ``gzip, chunked`` and ``xyz, chunked``
    as plain chunked, and the gateway forwarded the de-chunked body as if the other coding were not
    there (an entry stored, 201; a body really gzipped a misleading 400 "not UTF-8"). Now a 501 naming
    the coding, the connection ended, nothing forwarded; chunked twice is a 400."""
    token = provider.token(scope="create:timesheets").encode()
    body = gzip.compress(b'{"date": "2026-12-01", "hours": 1}')
    before = echo.requests
    response, closed = await exchange(
        process.url,
        b"POST /api/timesheets HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
        b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
        3,
    )
    assert problem_status(response) == status, response[:400]
    assert named in response, response[:400]
    assert b"connection: close" in response.lower()
    assert closed
    assert echo.requests == before


async def test_chunked_in_any_case_is_forwarded(
    process: ServiceProcess, provider: Provider, echo: Echo
) -> None:
    """A transfer coding is a case-insensitive token: ``Chunked`` is chunked, and served."""
    token = provider.token(scope="create:timesheets").encode()
    body = b'{"date": "2026-12-01", "hours": 1}'
    before = echo.requests
    response, _ = await exchange(
        process.url,
        b"POST /api/timesheets HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding:  Chunked \r\n\r\n"
        b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
        5,
        answered=True,
    )
    assert response.startswith(b"HTTP/1.1 200 "), response[:400]
    assert echo.requests == before + 1
