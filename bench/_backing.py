"""The servers a benchmark runs against, and its own database on them.

``DATABASE_URL`` / ``REDIS_URL`` when set, else embedded servers like ``make dev`` starts. Two rules
that ``make bench`` on a fresh machine depends on:

- the benchmark's database is dropped while the server is still running (:func:`fresh_database`
  nests inside :func:`servers`), never after an embedded server was stopped: its socket is gone by
  then (``FileNotFoundError``);
- the environment is restored on the way out: a ``DATABASE_URL`` left pointing at a stopped embedded
  server would make the next benchmark of the same ``python -m bench`` run use it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from testkit.fixtures import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".local" / "bench"
VARIABLES = ("DATABASE_URL", "REDIS_URL")
#: the embedded Postgres's connections: an A/B run of the approvals benchmark holds two pairs of
#: services' pools, the references', the audit service's and pgbench's 32 clients (over the default 100)
MAX_CONNECTIONS = 300


@dataclass(frozen=True, slots=True)
class Servers:
    database_url: str  # the server's maintenance database (``postgres``)
    redis_url: str | None  # None when the benchmark did not ask for Redis
    embedded: bool  # whether this run started its own Postgres (pgbench reaches it through the URL)


@contextmanager
def servers(
    *, redis: bool = False, state: Path = STATE, postgres_port: int = 5435, redis_port: int = 6382
) -> Iterator[Servers]:
    """Postgres (and Redis if asked) from the environment or embedded; ``os.environ`` is as before
    when the block ends, and embedded servers are stopped."""
    saved = {name: os.environ.get(name) for name in VARIABLES}
    started: list[Any] = []
    try:
        dsn, redis_url = saved["DATABASE_URL"], saved["REDIS_URL"] if redis else None
        if not dsn or (redis and not redis_url):
            from devstack.backing import EmbeddedPostgres, EmbeddedRedis

            if not dsn:
                settings = {"max_connections": str(MAX_CONNECTIONS)}
                postgres = EmbeddedPostgres(state, settings, port=postgres_port)
                dsn = postgres.start()
                started.append(postgres)
            if redis and not redis_url:
                redis_server = EmbeddedRedis(state, port=redis_port)
                redis_url = redis_server.start()
                started.append(redis_server)
        os.environ["DATABASE_URL"] = dsn  # testkit's create_database/drop_database read it
        if redis_url:
            os.environ["REDIS_URL"] = redis_url
        yield Servers(dsn, redis_url, embedded=bool(started) and not saved["DATABASE_URL"])
    finally:
        for server in reversed(started):
            server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new database on the server of :func:`servers` (its URL), dropped when the block ends.

    Synchronous on purpose: benchmarks drive processes from the main thread and run their own event
    loops inside; call it inside ``with servers(...)``.
    """
    url = asyncio.run(create_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))


def embedded_postgres(state: Path = STATE) -> int | None:
    """The pid of the benchmark's embedded Postgres (its backends are its children), None when the
    server is someone else's (``DATABASE_URL``): its CPU time is then not this run's alone."""
    data = str(state / "postgres")
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "-D" in command and data in command:
            return int(process.pid)
    return None
