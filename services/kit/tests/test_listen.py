"""BIND_HOST as every listener binds it (svckit.listen): ``::`` takes both families, whatever the
kernel's ``net.ipv6.bindv6only`` default, and falls back to ``0.0.0.0`` where there is no IPv6."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from svckit import listen
from svckit.metrics import MetricsServer
from svckit.server import ServingConfig

needs_ipv6 = pytest.mark.skipif(not socket.has_ipv6, reason="this Python has no IPv6")


def reaches(family: socket.AddressFamily, address: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == 0


def both_families(sock: socket.socket) -> dict[str, bool]:
    port = sock.getsockname()[1]
    return {
        "::1": reaches(socket.AF_INET6, "::1", port),
        "127.0.0.1": reaches(socket.AF_INET, "127.0.0.1", port),
    }


@needs_ipv6
def test_all_addresses_is_one_socket_for_both_families() -> None:
    sock = listen.bind_tcp("::", 0)
    try:
        sock.listen()
        assert sock.family == socket.AF_INET6
        # set, not the kernel's default: a node with net.ipv6.bindv6only=1 would take IPv6 only
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert both_families(sock) == {"::1": True, "127.0.0.1": True}
    finally:
        sock.close()


@needs_ipv6
def test_one_address_is_that_address_only() -> None:
    for host, expected in (
        ("0.0.0.0", {"::1": False, "127.0.0.1": True}),
        ("127.0.0.1", {"::1": False, "127.0.0.1": True}),
        ("::1", {"::1": True, "127.0.0.1": False}),
    ):
        sock = listen.bind_tcp(host, 0)
        try:
            sock.listen()
            assert both_families(sock) == expected, host
        finally:
            sock.close()


def no_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel booted with ipv6.disable=1: no IPv6 socket can be made."""
    real = socket.socket

    def made(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", made)


def test_all_addresses_fall_back_to_ipv4_without_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    no_ipv6(monkeypatch)
    sock = listen.bind_tcp("::", 0)
    try:
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()
    metrics = MetricsServer("::", 0).start()
    try:
        assert metrics.url.startswith("http://127.0.0.1:"), metrics.url
    finally:
        metrics.stop()


@needs_ipv6
def test_a_taken_port_is_an_error_not_a_fallback() -> None:
    taken = listen.bind_tcp("::", 0)
    try:
        taken.listen()
        with pytest.raises(OSError, match="in use") as refused:
            listen.bind_tcp("::", taken.getsockname()[1])
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        taken.close()


@needs_ipv6
def test_the_api_and_metrics_listeners_take_both_families() -> None:
    config = ServingConfig("svckit.app:nothing", host="::", port=0)
    api = config.bind_socket()
    metrics = MetricsServer("::", 0).start()
    try:
        api.listen()
        assert both_families(api) == {"::1": True, "127.0.0.1": True}
        assert reaches(socket.AF_INET, "127.0.0.1", metrics.port)
        assert reaches(socket.AF_INET6, "::1", metrics.port)
        assert metrics.url.startswith("http://[::1]:"), metrics.url
    finally:
        api.close()
        metrics.stop()


def test_url_host_brackets_ipv6_literals() -> None:
    assert listen.url_host("::1") == "[::1]"
    assert listen.url_host("[::1]") == "[::1]"
    assert listen.url_host("fd00::1") == "[fd00::1]"
    assert listen.url_host("127.0.0.1") == "127.0.0.1"
    assert listen.url_host("audit.ns.svc") == "audit.ns.svc"


@needs_ipv6
async def test_an_ipv4_peer_of_the_dual_stack_listener_is_seen_as_ipv4() -> None:
    """On ``::`` an IPv4 peer arrives as ``::ffff:10.0.0.7``: the application must see ``10.0.0.7``, as
    it did on ``0.0.0.0``, or an IPv4 trusted proxy (``10.0.0.0/8``) is no longer recognised and
    every log, audit record and per-address throttle keys on a form nothing else writes."""
    import asyncio

    import aiohttp
    import uvicorn
    from svckit.server import ProblemHttpProtocol

    seen: list[tuple[str, int] | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get("client"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = ServingConfig(
        app, host="::", port=0, http=ProblemHttpProtocol, lifespan="off", log_config=None, proxy_headers=False
    )
    sock = config.bind_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:
            for url in (f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/"):
                async with http.get(url) as reply:
                    assert reply.status == 200
    finally:
        server.should_exit = True
        await task
        sock.close()
    assert [client[0] if client else None for client in seen] == ["127.0.0.1", "::1"], seen
