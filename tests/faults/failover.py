"""A private primary with a streaming hot standby and the five services behind a TCP proxy that plays
the Service/DNS name a failover moves: the stack of test_standby.py and test_split_brain.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from testkit.fixtures import TcpProxy
from testkit.pgproc import PrivatePostgres, postgres_bin
from testkit.redisproc import PrivateRedis

from .conftest import Stack

#: the services with a database of their own
DB_SERVICES = ("identity", "audit", "timesheets", "approvals")


@contextlib.asynccontextmanager
async def failover_stack(
    redis: PrivateRedis, logs: Path, service_env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[Stack, TcpProxy, PrivatePostgres, PrivatePostgres]]:
    """The stack started, migrated and signed in: (stack, proxy, primary, standby). ``service_env``:
    settings of the services with a database (:data:`DB_SERVICES`) that differ from the stack's."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    primary = PrivatePostgres().start()
    standby: PrivatePostgres | None = None
    proxy: TcpProxy | None = None
    try:
        standby = await asyncio.to_thread(PrivatePostgres, standby_of=primary)
        await asyncio.to_thread(standby.start)
        proxy = TcpProxy("127.0.0.1", primary.port)
        await proxy.start()
        stack = Stack(primary, redis, logs, dsn=proxy.url_for(primary.dsn))
        for name in DB_SERVICES:
            stack.services[name].env.update(service_env or {})
        async with stack.running():
            yield stack, proxy, primary, standby
    finally:
        if proxy is not None:
            await proxy.cut()
        if standby is not None:
            await asyncio.to_thread(standby.remove)
        await asyncio.to_thread(primary.remove)
