"""The kit's outbound client against the kit's server: an idle keep-alive connection is not used
once the server may be closing it.

CI once failed two POSTs to the timesheets service with ``ServerDisconnectedError``: the client
reused a pooled connection just as the server's keep-alive timer came due; the server closed it
(lingering: what arrives afterwards is discarded) and a POST is not retried. Every client of our
servers therefore lets an idle connection go a second before the server would
(:data:`svckit.server.PEER_IDLE_SECONDS` against :data:`svckit.server.KEEP_ALIVE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svckit.http import HttpClient
from svckit.server import KEEP_ALIVE_SECONDS, PEER_IDLE_SECONDS

from testkit.client import SignedApi
from testkit.fixtures import Caller, serve_app


async def echo(request: Request) -> Response:
    return Response(await request.body())


def echo_app() -> Starlette:
    return Starlette(routes=[Route("/echo", echo, methods=["POST"])])


async def past_the_keep_alive() -> None:
    """The loop busy until the server's keep-alive timer is overdue, then the caller resumed in the
    loop round in which that timer runs: what it writes next goes out just before the server closes."""
    time.sleep(KEEP_ALIVE_SECONDS + 0.3)  # a long callback (a slow machine): nothing else runs
    await asyncio.sleep(0)


async def post_after_keep_alive(session: aiohttp.ClientSession, url: str) -> list[bytes]:
    """Two POSTs on one session, the second :func:`past_the_keep_alive`."""
    answers = []
    async with session.post(url + "/echo", data=b"first") as response:
        answers.append(await response.read())
    await past_the_keep_alive()
    async with session.post(url + "/echo", data=b"second") as response:
        answers.append(await response.read())
    return answers


@pytest.mark.unit
def test_clients_let_idle_connections_go_before_the_server_does() -> None:
    assert PEER_IDLE_SECONDS <= KEEP_ALIVE_SECONDS - 1


async def test_the_kit_client_does_not_post_on_a_connection_the_server_is_closing() -> None:
    client = HttpClient()
    try:
        async with serve_app(echo_app()) as url:
            assert await post_after_keep_alive(client.session(), url) == [b"first", b"second"]
    finally:
        await client.close()


async def test_a_default_aiohttp_session_would_have_lost_that_post() -> None:
    """The failure the above guards against, shown: aiohttp's default keeps idle connections 15 s."""
    async with serve_app(echo_app()) as url, aiohttp.ClientSession() as session:
        try:
            answers = await post_after_keep_alive(session, url)
        except aiohttp.ServerDisconnectedError:
            return
    raise AssertionError(f"the second POST was answered ({answers}); the race was not reproduced")


async def test_the_test_client_does_not_post_on_a_connection_the_server_is_closing(caller: Caller) -> None:
    async with serve_app(echo_app()) as url:
        api = SignedApi(url, caller)
        try:
            first = await api.call("POST", "/echo", None, data=b"first")
            await past_the_keep_alive()
            second = await api.call("POST", "/echo", None, data=b"second")
        finally:
            await api.close()
    assert (first.text, second.text) == ("first", "second")
