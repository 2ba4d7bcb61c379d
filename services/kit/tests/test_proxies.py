"""svckit.proxies: believe X-Forwarded-For only from trusted proxies, and only its right part."""

from __future__ import annotations

import pytest
from svckit.proxies import forwarded_client, is_trusted, parse_networks

pytestmark = pytest.mark.unit

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8", "192.168.1.7"])


def test_parse_networks() -> None:
    assert [str(n) for n in TRUSTED] == ["10.0.0.0/8", "fd00::/8", "192.168.1.7/32"]
    with pytest.raises(ValueError, match="'ingress' is not an IP address or CIDR"):
        parse_networks(["10.0.0.0/8", "ingress"])


def test_is_trusted() -> None:
    assert is_trusted("10.200.1.1", TRUSTED)
    assert is_trusted("fd00::9", TRUSTED)
    assert not is_trusted("192.168.1.8", TRUSTED)
    assert not is_trusted("not-an-ip", TRUSTED)
    assert not is_trusted("10.0.0.1", ())


@pytest.mark.parametrize(
    ("peer", "header", "client", "chain"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9", []),  # an untrusted peer is the client
        ("10.1.1.1", [], "10.1.1.1", []),
        (
            "10.1.1.1",
            ["6.6.6.6, 198.51.100.7", "10.9.9.9"],
            "198.51.100.7",
            ["6.6.6.6", "198.51.100.7", "10.9.9.9"],
        ),
        ("10.1.1.1", ["10.3.3.3, 10.4.4.4"], "10.3.3.3", ["10.3.3.3", "10.4.4.4"]),  # all trusted: the origin
        ("10.1.1.1", ["1.1.1.1, <script>"], "10.1.1.1", []),  # garbage is not an address
        ("fd00::1", ["2001:db8::7"], "2001:db8::7", ["2001:db8::7"]),
    ],
)
def test_forwarded_client(peer: str, header: list[str], client: str, chain: list[str]) -> None:
    assert forwarded_client(peer, header, TRUSTED) == (client, chain)


def test_an_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    """A dual-stack listener (BIND_HOST ``::``) sees an IPv4 proxy as ``::ffff:10.1.2.3``: still the
    trusted 10.0.0.0/8, and an X-Forwarded-For hop written so is the client's IPv4 address."""
    assert is_trusted("::ffff:10.1.2.3", TRUSTED)
    assert not is_trusted("::ffff:8.8.8.8", TRUSTED)
    assert forwarded_client("::ffff:10.1.2.3", ["203.0.113.9"], TRUSTED) == ("203.0.113.9", ["203.0.113.9"])
    assert forwarded_client("10.1.2.3", ["::ffff:203.0.113.9"], TRUSTED)[0] == "203.0.113.9"
    assert forwarded_client("::ffff:203.0.113.9", [], TRUSTED)[0] == "203.0.113.9"
