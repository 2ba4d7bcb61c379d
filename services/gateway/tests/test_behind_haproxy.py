"""A real proxy in front of the gateway: HAProxy writing the client's address as proxies do on the wire.

The unit tests of :mod:`gateway.forwarded` feed the header values a proxy would write; here HAProxy
writes them — its own header line beside the one the client forged (``option forwardfor`` adds
``X-Forwarded-For``; ``Forwarded`` added by a rule, as a proxy that appends RFC 7239 elements does) —
from its own address, the only one trusted. What the gateway takes for the client's address is what
its audit record of a denial says (``client_ip``): the address the client connected to HAProxy from,
never the one it wrote itself. Every party has its own loopback address: the client 127.0.0.5, HAProxy
127.0.0.2 (connecting onwards from 127.0.0.3), the gateway 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from testkit.fixtures import free_port

from .conftest import Echo, Provider
from .test_cors_limits_audit import wait_for_events

CLIENT = "127.0.0.5"
PROXY_LISTENS = "127.0.0.2"
PROXY_CONNECTS_FROM = "127.0.0.3"
#: what each kind of proxy writes, in HAProxy's words
WRITES = {
    "x-forwarded-for": "option forwardfor",
    "forwarded": 'http-request add-header Forwarded "for=%[src];proto=https"',
}


@contextlib.contextmanager
def haproxy_before(gateway: str, writes: str) -> Iterator[str]:
    """HAProxy in front of ``gateway``, writing the client's address in ``writes``; yields its URL."""
    target = urlsplit(gateway)
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="haproxy-before-gateway-"))
    config = directory / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n"
        f"frontend edge\n  bind {PROXY_LISTENS}:{port}\n  {WRITES[writes]}\n  default_backend gateway\n"
        f"backend gateway\n  server gw {target.hostname}:{target.port} source {PROXY_CONNECTS_FROM}\n"
    )
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            with socket.socket() as probe:
                if probe.connect_ex((PROXY_LISTENS, port)) == 0:
                    break
            assert time.monotonic() < deadline, "haproxy did not listen"
            time.sleep(0.05)
        yield f"http://{PROXY_LISTENS}:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("writes", sorted(WRITES))
async def test_behind_haproxy_the_client_is_where_it_connected_from_not_what_it_wrote(
    start_gateway: Any, provider: Provider, echo: Echo, writes: str
) -> None:
    forged = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.7;proto=https"}
    request_id = f"behind-haproxy-{uuid.uuid4().hex}"
    async with start_gateway(
        gateway_trusted_proxies=[PROXY_CONNECTS_FROM], gateway_proxy_header=writes
    ) as gateway:
        with haproxy_before(gateway, writes) as proxy:
            connector = aiohttp.TCPConnector(local_addr=(CLIENT, 0))
            async with (
                aiohttp.ClientSession(connector=connector) as http,
                http.get(
                    f"{proxy}/api/audit/events",  # read:audit is missing: a 403, recorded with its address
                    headers={
                        "Authorization": f"Bearer {provider.token(sub='mallory')}",
                        "X-Request-Id": request_id,
                        **forged,
                    },
                ) as response,
            ):
                assert response.status == 403, await response.text()
            [event] = await wait_for_events(echo, request_id)
    assert event["details"]["client_ip"] == CLIENT
