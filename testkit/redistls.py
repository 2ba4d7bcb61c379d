"""A private Redis that speaks TLS only, as a managed Redis with in-transit encryption does.

The certificates come from :mod:`testkit.pgtls` (a CA and a server certificate for the names given),
so a test can point a service at the right CA, at another one, or at a certificate for another name.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from testkit.pgtls import KeyPair
from testkit.redisproc import PrivateRedis


class TlsRedis(PrivateRedis):
    """``redis-server`` with its plain port off (``--port 0``) and TLS on its port, serving ``server``'s
    certificate; clients are not asked for one (``--tls-auth-clients no``). Its URLs are
    ``rediss://localhost:<port>/0``: the name a certificate for ``localhost`` matches."""

    def __init__(self, server: KeyPair, ca_file: Path, *, acl: str | None = None) -> None:
        super().__init__(acl=acl)
        self.cert, self.key = server.write(self.dir, "server")
        self.ca_file = ca_file  # what the test's own client trusts

    @property
    def url(self) -> str:
        return f"rediss://localhost:{self.port}/0"

    def url_for(self, username: str, password: str) -> str:
        return f"rediss://{username}:{password}@localhost:{self.port}/0"

    def listen_args(self) -> list[str]:
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-auth-clients",
            "no",
        ]

    def open_socket(self) -> socket.socket:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False  # the start-up check: only that the server answers over TLS
        raw = socket.create_connection(("127.0.0.1", self.port), 0.5)
        return context.wrap_socket(raw)
