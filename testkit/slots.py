"""Backing stores that are up but refuse new connections: Postgres out of connection slots
(``too many clients already`` when ``max_connections`` is full, ``too many connections for role``
at a role's ``CONNECTION LIMIT``: SQLSTATE 53300 both, asyncpg's ``TooManyConnectionsError``) and
Redis at ``maxclients`` (``ERR max number of clients reached``: redis-py's ``ConnectionError``).

Only on servers of the test's own (:mod:`testkit.pgproc`, :mod:`testkit.redisproc`). Filling the
slots by connecting until refused and then ending the services' sessions is a race the services win
(their pools reconnect within milliseconds of losing a connection), so the limit is lowered instead,
below what is connected, and then the services' connections are ended: what was connected is cut,
whatever connects is refused, until :meth:`release` — as on a server whose slots a leak elsewhere
filled while the services ran. Postgres: ``CONNECTION LIMIT 0`` on the services' runtime roles
(superusers are exempt, so the services must run as their runtime roles); Redis: ``maxclients`` 1,
the test's own connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis


class PostgresSlots:
    """The services' runtime ``roles`` out of connection slots; ``dsn``: the owner's (the test's)."""

    def __init__(self, dsn: str, roles: Sequence[str]) -> None:
        self.dsn = dsn
        self.roles = list(roles)
        self.exhausted = False

    async def _as_admin(self, *statements: str) -> None:
        admin = await asyncpg.connect(self.dsn)
        try:
            for statement in statements:
                await admin.execute(statement)
        finally:
            await admin.close()

    async def exhaust(self) -> None:
        limits = [f'ALTER ROLE "{role}" CONNECTION LIMIT 0' for role in self.roles]
        roles = ", ".join(f"'{role}'" for role in self.roles)
        end = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ({roles})"
        self.exhausted = True
        await self._as_admin(*limits, end)
        # the ended sessions' backends exit on their own time (later on a busy machine)
        deadline = asyncio.get_running_loop().time() + 15
        while await self.sessions():
            assert asyncio.get_running_loop().time() < deadline, "the services' sessions did not end"
            await asyncio.sleep(0.05)

    async def sessions(self) -> int:
        """The services' sessions on the server (none while exhausted)."""
        admin = await asyncpg.connect(self.dsn)
        try:
            return int(
                await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY($1::text[])", self.roles
                )
            )
        finally:
            await admin.close()

    async def release(self) -> None:
        if self.exhausted:
            await self._as_admin(*(f'ALTER ROLE "{role}" CONNECTION LIMIT -1' for role in self.roles))
            self.exhausted = False


class RedisSlots:
    """A private Redis at ``maxclients``: lowered to 1 (the test's own connection, ``url``: the
    default user), the ``users``' connections killed; their reconnections are refused."""

    def __init__(self, url: str, users: Sequence[str]) -> None:
        self.admin = aioredis.Redis.from_url(url, max_connections=1)
        self.users = list(users)
        self.maxclients: str | None = None

    async def exhaust(self) -> None:
        config = await self.admin.config_get("maxclients")
        self.maxclients = self.maxclients or str(config["maxclients"])
        await self.admin.config_set("maxclients", 1)
        for user in self.users:
            await self.admin.client_kill_filter(user=user)

    async def clients(self) -> int:
        """Connected clients, the test's own included."""
        return int((await self.admin.info("clients"))["connected_clients"])

    async def release(self) -> None:
        if self.maxclients is not None:
            await self.admin.config_set("maxclients", self.maxclients)
            self.maxclients = None

    async def close(self) -> None:
        await self.release()
        await self.admin.aclose()
