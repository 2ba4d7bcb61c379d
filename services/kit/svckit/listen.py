"""Where a service listens: ``BIND_HOST`` as every listener of the kit binds it (the API's and the metrics').

``::`` means every address of both families: one IPv6 socket with ``IPV6_V6ONLY`` off, so IPv4 peers
arrive on it as IPv4-mapped addresses (``::ffff:10.0.0.7``). The option is set, not left to the
kernel's default (``net.ipv6.bindv6only``, which a node may have turned on: the socket would then
take IPv6 only, and an IPv4 cluster's probes would fail). An IPv6-only pod has no IPv4 address but
its loopback, and a dual-stack pod has both: ``::`` serves all of them, which ``0.0.0.0`` (IPv4 only,
what the chart set before) did not. On a node whose kernel has no IPv6 at all (booted with
``ipv6.disable=1``: no IPv6 socket can be made) ``::`` falls back to ``0.0.0.0``, which is then every
address there is.

Any other value is one address, of the family its form says (a colon: IPv6), bound as given:
``0.0.0.0`` stays IPv4 only, ``127.0.0.1`` (the local default) the loopback only.
"""

from __future__ import annotations

import errno
import socket

#: BIND_HOST's value for every address of both families
ALL_ADDRESSES = "::"
#: what ``::`` becomes where the kernel has no IPv6
ALL_IPV4_ADDRESSES = "0.0.0.0"
#: the errors that mean "no IPv6 here", not "this port is taken"
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


def _bound(family: socket.AddressFamily, host: str, port: int, *, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` as the module says (not yet listening: uvicorn's server
    listens on what it is given). ``OSError`` when the port is taken or the address is not here."""
    if host == ALL_ADDRESSES:
        try:
            return _bound(socket.AF_INET6, host, port, dual_stack=True)
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise
        return _bound(socket.AF_INET, ALL_IPV4_ADDRESSES, port)
    return _bound(socket.AF_INET6 if ":" in host else socket.AF_INET, host, port)


def url_host(host: str) -> str:
    """``host`` as the host part of a URL: an IPv6 literal in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


__all__ = ["ALL_ADDRESSES", "ALL_IPV4_ADDRESSES", "bind_tcp", "url_host"]
