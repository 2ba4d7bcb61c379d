"""Client addresses behind trusted proxies (``GATEWAY_TRUSTED_PROXIES``), and only behind them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from gateway.forwarded import ForwardedHeaders
from gateway.settings import GatewaySettings
from pydantic import ValidationError

from testkit.fixtures import ServiceProcess

from .conftest import Echo, Provider, process_env

INGRESS = ForwardedHeaders(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.unit
def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    fwd = INGRESS.resolve("203.0.113.9", "http", b"api.example", [b"6.6.6.6"], b"https", b"evil.example")
    assert fwd.client_ip == "203.0.113.9"
    assert fwd.forwarded_for == b"203.0.113.9"
    assert fwd.proto == b"http"
    assert fwd.host == b"api.example"


@pytest.mark.unit
def test_nothing_is_trusted_by_default() -> None:
    fwd = ForwardedHeaders([]).resolve("10.1.2.3", "http", None, [b"6.6.6.6"], b"https", None)
    assert (fwd.client_ip, fwd.forwarded_for, fwd.proto) == (
        "10.1.2.3",
        b"10.1.2.3",
        b"http",
    )


@pytest.mark.unit
def test_trusted_peer_reveals_the_first_untrusted_hop_from_the_right() -> None:
    # the client wrote "1.1.1.1" itself; 198.51.100.7 is who connected to our ingress (10.2.0.5)
    fwd = INGRESS.resolve(
        "10.9.0.1", "http", b"gw:8080", [b"1.1.1.1, 198.51.100.7", b"10.2.0.5"], b"https", b"app.example"
    )
    assert fwd.client_ip == "198.51.100.7"
    assert fwd.forwarded_for == b"1.1.1.1, 198.51.100.7, 10.2.0.5, 10.9.0.1"
    assert fwd.proto == b"https"
    assert fwd.host == b"app.example"


@pytest.mark.unit
def test_trusted_peer_without_header_or_with_garbage() -> None:
    assert INGRESS.resolve("10.9.0.1", "http", None, [], None, None).client_ip == "10.9.0.1"
    fwd = INGRESS.resolve("10.9.0.1", "http", None, [b"<script>"], b"gopher", None)
    assert (fwd.client_ip, fwd.forwarded_for, fwd.proto) == (
        "10.9.0.1",
        b"10.9.0.1",
        b"http",
    )
    ipv6 = INGRESS.resolve("fd00::1", "https", None, [b"2001:db8::7"], None, None)
    assert (ipv6.client_ip, ipv6.proto) == ("2001:db8::7", b"https")


@pytest.mark.unit
def test_only_all_trusted_chain_falls_back_to_its_leftmost_hop() -> None:
    fwd = INGRESS.resolve("10.9.0.1", "http", None, [b"10.3.3.3, 10.4.4.4"], None, None)
    assert fwd.client_ip == "10.3.3.3"


BEHIND_RFC7239 = ForwardedHeaders(["10.0.0.0/8", "fd00::/8"], "forwarded")


@pytest.mark.unit
def test_behind_proxies_that_write_forwarded_its_last_element_says_client_proto_and_host() -> None:
    """RFC 7239 ``Forwarded`` (``GATEWAY_PROXY_HEADER=forwarded``): the elements' ``for`` values read
    from the right, ``proto`` and ``host`` from the element the trusted peer wrote; the chain goes
    upstream as ``X-Forwarded-For`` (the services' one header)."""
    fwd = BEHIND_RFC7239.resolve(
        "10.9.0.1",
        "http",
        b"gw:8080",
        [],
        None,
        None,
        [b'for=1.1.1.1;proto=http, for="[2001:db8::7]:4711"', b"for=10.2.0.5;proto=https;host=app.example"],
    )
    assert fwd.client_ip == "2001:db8::7"
    assert fwd.forwarded_for == b"1.1.1.1, [2001:db8::7]:4711, 10.2.0.5, 10.9.0.1"
    assert (fwd.proto, fwd.host) == (b"https", b"app.example")


@pytest.mark.unit
def test_behind_proxies_that_write_forwarded_the_x_forwarded_headers_are_the_clients_own() -> None:
    """A proxy that writes ``Forwarded`` passes a client's ``X-Forwarded-*`` on untouched: read, its
    rightmost hop (the client's choice) was the client — any address, for the audit trail and every
    per-address budget (reproduced before the setting: the only header read was X-Forwarded-For)."""
    fwd = BEHIND_RFC7239.resolve(
        "10.9.0.1", "http", b"gw", [b"6.6.6.6"], b"https", b"evil.example", [b"for=198.51.100.7"]
    )
    assert (fwd.client_ip, fwd.proto, fwd.host) == ("198.51.100.7", b"http", b"gw")
    assert b"6.6.6.6" not in fwd.forwarded_for
    # and the other way round: behind X-Forwarded-For proxies a client's Forwarded is not read
    fwd = INGRESS.resolve("10.9.0.1", "http", None, [b"198.51.100.7"], None, None, [b"for=6.6.6.6"])
    assert fwd.client_ip == "198.51.100.7"
    # an element that names no address (RFC 7239 "unknown") leaves the peer, as IPv4 when it came mapped
    fwd = BEHIND_RFC7239.resolve("::ffff:10.9.0.1", "http", None, [], None, None, [b"for=unknown"])
    assert fwd.client_ip == "10.9.0.1"


@pytest.mark.unit
def test_the_proxy_header_setting() -> None:
    assert GatewaySettings().gateway_proxy_header == "x-forwarded-for"
    assert GatewaySettings(gateway_proxy_header=" Forwarded ").gateway_proxy_header == "forwarded"
    with pytest.raises(ValidationError, match="'x-forwarded-for' or 'forwarded'"):
        GatewaySettings(gateway_proxy_header="x-real-ip")


@pytest.mark.unit
def test_setting_refuses_what_is_not_a_network() -> None:
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        GatewaySettings(gateway_trusted_proxies="10.0.0.0/8,ingress")


async def seen_upstream(
    provider: Provider,
    echo: Echo,
    identity_keys: dict[str, str],
    redis_prefix: str,
    headers: dict[str, str],
    **settings: str,
) -> dict[str, str]:
    """The forwarding headers the upstream receives when a gateway (behind a trusted loopback proxy,
    with ``settings``) is sent ``headers`` and a valid token."""
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        GATEWAY_WORKERS="1",
        GATEWAY_TRUSTED_PROXIES="127.0.0.1/32",
        **settings,
    )
    process = ServiceProcess("gateway", env)
    await asyncio.to_thread(process.start)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                process.url + "/api/timesheets",
                headers={"Authorization": f"Bearer {provider.token()}", **headers},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            body = await response.json()
    finally:
        await asyncio.to_thread(process.stop)
    return {k: v for k, v in body["headers"] if k.startswith(("x-forwarded-", "forwarded"))}


async def test_process_behind_a_trusted_proxy(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    sent = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7", "X-Forwarded-Proto": "https"}
    seen = await seen_upstream(provider, echo, identity_keys, redis_prefix, sent)
    assert seen["x-forwarded-for"] == "6.6.6.6, 198.51.100.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"


async def test_process_behind_a_proxy_that_writes_forwarded(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str
) -> None:
    """The same through a running gateway: the upstream sees the client the proxy named in
    ``Forwarded``, not the one the client put in ``X-Forwarded-For``, and no ``Forwarded`` header."""
    sent = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "http",
        "Forwarded": 'for="198.51.100.7:50312";proto=https;host=timesheets.example',
    }
    seen = await seen_upstream(
        provider, echo, identity_keys, redis_prefix, sent, GATEWAY_PROXY_HEADER="forwarded"
    )
    assert seen == {
        "x-forwarded-for": "198.51.100.7:50312, 127.0.0.1",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "timesheets.example",
    }, seen
