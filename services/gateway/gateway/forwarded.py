"""The forwarding headers the gateway sends upstream, and the client address it audits.

Which peer to believe is :mod:`svckit.proxies` (``GATEWAY_TRUSTED_PROXIES``, none by default), and
which header it writes (``GATEWAY_PROXY_HEADER``). From a trusted peer, ``X-Forwarded-Proto`` and
``-Host`` are believed too — or, behind proxies that write RFC 7239 ``Forwarded``, the ``proto`` and
``host`` of its last element (the one the peer wrote) — and the chain is passed on upstream as
``X-Forwarded-For`` with the peer appended, as every proxy in it did; from anyone else the gateway
starts the chain itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from svckit.proxies import (
    ProxyHeader,
    client_in_chain,
    forwarded_client,
    forwarded_elements,
    is_trusted,
    parse_networks,
    unmapped,
)


class Forwarding(NamedTuple):  # a tuple: built for every request, and a frozen dataclass costs ~1 µs more
    client_ip: str
    forwarded_for: bytes  # the X-Forwarded-For value to send upstream
    proto: bytes
    host: bytes | None


_DIRECT_CACHE = 4096
#: the longest ``Host`` whose forwarding is kept: a DNS name (253) with a port, or an IPv6 literal with
#: one; a longer value (the head limit allows 64 KiB) is no host any client reaches us by, and keeping
#: 4,096 of them was ~256 MiB per worker, for requests that need no token
_CACHED_HOST_BYTES = 270


class ForwardedHeaders:
    def __init__(self, trusted: Iterable[str], header: ProxyHeader = "x-forwarded-for") -> None:
        self.networks = parse_networks(trusted)
        self.header = header
        # peers that are no proxy: the answer depends on (peer, scheme, Host) only, and the same few
        # clients make most requests — one look-up instead of a tuple and an encoding per request
        self._direct: dict[tuple[str, str, bytes | None], Forwarding] = {}

    @property
    def direct_only(self) -> bool:
        """No proxy is trusted: the forwarding headers depend on the peer, the scheme and ``Host``
        only (never on the ``X-Forwarded-*`` a client sends)."""
        return not self.networks

    def resolve(
        self,
        peer: str,
        scheme: str,
        host: bytes | None,
        forwarded_for: list[bytes],
        forwarded_proto: bytes | None,
        forwarded_host: bytes | None,
        forwarded: Sequence[bytes] = (),
    ) -> Forwarding:
        """``forwarded_for``/``_proto``/``_host``: the ``X-Forwarded-*`` values; ``forwarded``: the
        ``Forwarded`` ones. Only those of :attr:`header` are read."""
        if not self.networks:
            key = (peer, scheme, host)
            direct = self._direct.get(key)
            if direct is None:
                proto = b"https" if scheme == "https" else b"http"
                direct = Forwarding(peer, peer.encode(), proto, host)
                if host is None or len(host) <= _CACHED_HOST_BYTES:
                    if len(self._direct) >= _DIRECT_CACHE:
                        self._direct.clear()
                    self._direct[key] = direct
            return direct
        proto = b"https" if scheme == "https" else b"http"
        if not is_trusted(peer, self.networks):
            return Forwarding(peer, peer.encode(), proto, host)
        if self.header == "forwarded":
            return self._rfc7239(peer, proto, host, forwarded)
        client, chain = forwarded_client(
            peer, (value.decode("latin-1") for value in forwarded_for), self.networks
        )
        if forwarded_proto is not None:
            last = forwarded_proto.split(b",")[-1].strip().lower()
            if last in (b"http", b"https"):
                proto = last
        if forwarded_host is not None:
            host = forwarded_host.split(b",")[-1].strip() or host
        return Forwarding(client, ", ".join([*chain, peer]).encode(), proto, host)

    def _rfc7239(self, peer: str, proto: bytes, host: bytes | None, values: Sequence[bytes]) -> Forwarding:
        elements = forwarded_elements(value.decode("latin-1") for value in values)
        client, chain = client_in_chain(
            unmapped(peer), [element.get("for", "") for element in elements], self.networks
        )
        if elements:
            last = elements[-1]  # the trusted peer's own element
            if last.get("proto", "").lower() in ("http", "https"):
                proto = last["proto"].lower().encode()
            if last.get("host"):
                host = last["host"].encode("latin-1")
        return Forwarding(client, ", ".join([*chain, peer]).encode("latin-1"), proto, host)
