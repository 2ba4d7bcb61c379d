"""svckit.proxies: believe X-Forwarded-For only from trusted proxies, and only its right part."""

from __future__ import annotations

import pytest
from svckit.proxies import forwarded_client, forwarded_elements, is_trusted, parse_networks

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


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (["203.0.113.9:49152"], "203.0.113.9"),  # Azure Application Gateway: "IP:port" hops
        (["198.51.100.7:1234, 10.9.9.9:5678"], "198.51.100.7"),  # a trusted hop with its port too
        (["[2001:db8::7]:443"], "2001:db8::7"),  # an IPv6 hop with a port, bracketed
        (["[2001:db8::7]"], "2001:db8::7"),
        (["203.0.113.9:65536"], "10.1.1.1"),  # no such port: not an address
        (["203.0.113.9:"], "10.1.1.1"),
        (["[203.0.113.9]:80"], "10.1.1.1"),  # brackets are for IPv6
        (["2001:db8::7:443"], "2001:db8::7:443"),  # an IPv6 address, not one with a port
    ],
)
def test_hops_with_ports_are_their_addresses(header: list[str], client: str) -> None:
    """Azure Application Gateway writes every X-Forwarded-For hop as ``IP:port`` (its documentation:
    "a comma-separated list of IP:Port"). Before, such a hop was "not an IP address" and the peer — the
    application gateway itself — was taken for the client: every client behind it shared one address,
    one set of per-address sign-in and token-failure budgets (one client's failures locked out all),
    one anonymous-denial counter, and the audit trail named the proxy."""
    assert forwarded_client("10.1.1.1", header, TRUSTED)[0] == client


@pytest.mark.parametrize(
    ("values", "client"),
    [
        (["for=198.51.100.7"], "198.51.100.7"),
        (["for=6.6.6.6, for=198.51.100.7;proto=https", "for=10.9.9.9"], "198.51.100.7"),
        (['For="198.51.100.7"'], "198.51.100.7"),  # names are case-insensitive, values may be quoted
        (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),  # RFC 7239 §6: IPv6 bracketed, a port
        (['for="198.51.100.7:4711";by=10.9.9.9'], "198.51.100.7"),
        (["for=10.3.3.3, for=10.4.4.4"], "10.3.3.3"),  # all trusted: the origin
        (["for=unknown"], "10.1.1.1"),  # §6.2: the proxy does not know; not an address to key on
        (["for=_hidden, for=10.9.9.9"], "10.1.1.1"),  # §6.3: an obfuscated identifier
        (["proto=https"], "10.1.1.1"),  # an element without "for"
        (["for=1.1.1.1;for=198.51.100.7"], "10.1.1.1"),  # a parameter twice: no element
        (['for="', "for=198.51.100.7"], "198.51.100.7"),
        # a quote the client opened and never closed does not swallow what its proxy appended
        (['for=", for=198.51.100.7'], "198.51.100.7"),
        (['for="1.1.1.1, for=198.51.100.7'], "198.51.100.7"),
    ],
)
def test_forwarded_header_elements(values: list[str], client: str) -> None:
    """RFC 7239 ``Forwarded``, behind proxies configured to write it: the same right-to-left reading
    as ``X-Forwarded-For`` over the elements' ``for`` values."""
    assert forwarded_client("10.1.1.1", values, TRUSTED, "forwarded")[0] == client


def test_forwarded_elements_parameters() -> None:
    assert forwarded_elements(
        ['for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8::1]";HOST="a.example"']
    ) == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[2001:db8::1]", "host": "a.example"},
    ]
    assert forwarded_elements(['for="a\\"b"', "x", "for=1.2.3.4;", " , "]) == [
        {"for": 'a"b'},
        {},
        {"for": "1.2.3.4"},
    ]


def test_each_header_reads_only_its_own_values() -> None:
    """What a proxy that writes the other header passes through untouched is the client's own text."""
    assert forwarded_client("10.1.1.1", ["for=6.6.6.6"], TRUSTED, "x-forwarded-for")[0] == "10.1.1.1"
    assert forwarded_client("10.1.1.1", ["6.6.6.6"], TRUSTED, "forwarded")[0] == "10.1.1.1"
