"""Which address a request came from when load balancers or an Ingress controller sit in front.

The TCP peer is the client unless it is one of the trusted proxies (CIDRs from configuration; none by
default, so nothing a client sends is believed). Behind a trusted peer, the chain of hops its header
names is read right to left and the first address that is not itself a trusted proxy is the client:
entries to its left were written by the client and prove nothing. Used by the gateway (audit,
forwarded headers) and the identity service (per-address throttling).

Which header: the one the trusted proxies write, and only that one (:data:`ProxyHeader`):
``X-Forwarded-For`` (most ingress controllers and cloud load balancers; the default) or RFC 7239's
``Forwarded`` (``for=`` of each element). Reading both, or the other one, believes the client: a
proxy that writes ``Forwarded`` passes a client's ``X-Forwarded-For`` through untouched, so its
rightmost hop is whatever the client wrote.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: the header a deployment's trusted proxies write the client's address in
ProxyHeader = Literal["x-forwarded-for", "forwarded"]


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs or single addresses; raises ``ValueError`` naming the first bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR") from None
    return tuple(networks)


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` as an IP address, an IPv4-mapped IPv6 one (``::ffff:10.1.2.3``: how a dual-stack
    listener, BIND_HOST ``::``, sees an IPv4 peer) as the IPv4 address it is; ``None`` if no address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    ip = ip_of(address)
    return ip is not None and any(ip in network for network in networks)


#: a hop with its port: ``203.0.113.9:49152`` or ``[2001:db8::7]:443`` (and ``[2001:db8::7]``)
_HOP_WITH_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+))(?::(?P<port>[0-9]{1,5}))?")


def hop_ip(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An ``X-Forwarded-For`` hop as an IP address, with or without its port (``None``: not one).

    Why the port: Azure Application Gateway writes every hop as ``IP:port``; read as "not an
    address", each of its clients was taken to be the gateway itself (:func:`forwarded_client`)."""
    if (ip := ip_of(hop)) is not None:
        return ip
    found = _HOP_WITH_PORT.fullmatch(hop)
    if found is None:
        return None
    if found["port"] is not None and not 0 < int(found["port"]) < 65536:
        return None
    if found["v6"] is not None:
        ip = ip_of(found["v6"])
        return ip if ip is not None and ip.version == 6 else None
    if found["port"] is None:
        return None  # a bare IPv4 address was ip_of's
    return ip_of(found["v4"])


def forwarded_client(
    peer: str, values: Iterable[str], networks: tuple[Network, ...], header: ProxyHeader = "x-forwarded-for"
) -> tuple[str, list[str]]:
    """The client's address, and the hops that were believed to get there (each as its header wrote
    it: ``for=`` values for ``Forwarded``).

    ``values`` is every value of ``header``, in order. An all-trusted chain yields its origin; a
    chosen hop that is not an IP address (with or without its port, :func:`hop_ip`; ``unknown`` or an
    obfuscated ``_name`` in ``Forwarded``) yields the peer (garbage is not an address to key on).
    """
    peer = unmapped(peer)
    if not networks or not is_trusted(peer, networks):
        return peer, []
    if header == "forwarded":
        chain = [element.get("for", "") for element in forwarded_elements(values)]
    else:
        chain = [hop.strip() for value in values for hop in value.split(",") if hop.strip()]
    return client_in_chain(peer, chain, networks)


def client_in_chain(peer: str, chain: Sequence[str], networks: tuple[Network, ...]) -> tuple[str, list[str]]:
    """:func:`forwarded_client` once the hops are read: the first from the right not a trusted proxy."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    for hop in reversed(chain):
        ip = hop_ip(hop)
        if ip is None or not any(ip in network for network in networks):
            break
    if ip is None:
        return peer, []
    return str(ip), list(chain)


def forwarded_elements(values: Iterable[str]) -> list[dict[str, str]]:
    """The elements of RFC 7239 ``Forwarded`` header values, in order: each its parameters (names in
    lower case, quoted values unquoted); ``{}`` for an element that is not one (a pair without ``=``,
    a parameter twice, a stray quote).

    Split at every comma and semicolon, quoted or not, on purpose: ``for``, ``proto`` and ``host``
    hold neither, and a client that opens a quote it never closes (``Forwarded: for="``) would
    otherwise swallow the element its proxy appends behind it (``for=", for=198.51.100.7``) and pass
    for the proxy itself. An extension's quoted value with a comma in it makes its element ``{}``,
    which matters only where it is read: at or right of the client's hop."""
    elements: list[dict[str, str]] = []
    for value in values:
        for piece in value.split(","):
            if piece.strip():
                elements.append(_element(piece))
    return elements


def _element(piece: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in piece.split(";"):
        if not pair.strip():
            continue
        name, sep, raw = pair.partition("=")
        name, raw = name.strip().lower(), raw.strip()
        if not sep or not name or name in params or '"' in name:
            return {}
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                return {}
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif '"' in raw:
            return {}
        params[name] = raw
    return params


def unmapped(address: str) -> str:
    """``address`` with an IPv4-mapped IPv6 form written as IPv4; anything else as it is."""
    ip = ip_of(address)
    return str(ip) if ip is not None and ip.version == 4 and ":" in address else address


#: The IPv6 prefix one client is counted under: a /64 is what one subscriber, host or site is given
#: (RFC 6177's end-site assignment is /48 to /64), and a host picks any of its 2**64 addresses at will.
IPV6_CLIENT_PREFIX = 64


def throttle_key(address: str) -> str:
    """The address a per-address limit counts a client under: an IPv4 address itself (an IPv4-mapped
    IPv6 one as IPv4), an IPv6 address as its /64 (``2001:db8:1:2::/64``), anything else unchanged.

    Why: counted per IPv6 address, one host rotating through its own /64 was a new client on every
    request — each limit bypassed (sign-in guesses, Argon2 work, anonymous denials) and each request
    a new Redis counter kept for the limit's window, so one host could fill Redis (runbook, "Redis
    memory") and force the outage a full Redis is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)
