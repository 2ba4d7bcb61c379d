"""Redis ACL users for the services under test, as in production: one per component (svckit.redisacl).

The machine's Redis is shared by every test run and has no password; a test gets users of its own,
with random names (``tsp-test-<hex>-<component>``) and key patterns under its own prefix, and deletes
them afterwards. The rules are svckit.redisacl's, so a service that starts using a command or a key its
user is not granted fails its tests here (``NOPERM``) before it fails in a cluster.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError
from svckit import redisacl


class RedisUsers:
    """Creates component users on the server at ``admin_url``; :meth:`close` deletes every one."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    async def create(self, component: str, prefix: str, *, any_suffix: bool = False) -> str:
        """A new user with ``component``'s rules for keys under ``prefix`` (``any_suffix``: under any
        prefix that starts so, for a fixture that draws a prefix per test); returns its URL."""
        name = f"tsp-test-{secrets.token_hex(6)}-{component}"
        password = secrets.token_urlsafe(24)
        args = redisacl.setuser_args(component, password, prefix)
        if any_suffix:
            exact = redisacl.pattern(prefix, "")
            args = [arg.replace(exact, exact + "*", 1) if "~" in arg else arg for arg in args]
        client = aioredis.Redis.from_url(self.admin_url)
        try:
            await client.execute_command("ACL", "SETUSER", name, *args)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        self.names.append(name)
        return redisacl.user_url(self.admin_url, name, password)

    async def close(self) -> None:
        if not self.names:
            return
        client = aioredis.Redis.from_url(self.admin_url)
        try:
            await client.execute_command("ACL", "DELUSER", *self.names)  # type: ignore[no-untyped-call]
            self.names.clear()
        finally:
            await client.aclose()


# ---- checks that a service under test runs as its user (testkit.fixtures.ServiceRedis) ----------------


async def connections_of(admin_url: str, username: str) -> int:
    """How many connections the server holds for ``username`` (``CLIENT LIST``, as the admin): a
    service connected as its own user shows there under that name, one connected as the admin does not."""
    client = aioredis.Redis.from_url(admin_url)
    try:
        return sum(1 for entry in await client.client_list() if entry.get("user") == username)
    finally:
        await client.aclose()


async def replay_keys(admin_url: str, prefix: str, service: str) -> set[bytes]:
    """The nonces ``service``'s replay memory (svckit.replay) holds under ``prefix``."""
    client = aioredis.Redis.from_url(admin_url)
    try:
        match = redisacl.pattern(prefix, f"identity-replay:{service}:*")
        return {key async for key in client.scan_iter(match=match, count=1000)}
    finally:
        await client.aclose()


async def refusals(url: str, component: str, prefix: str) -> list[str]:
    """What ``url`` (``component``'s user, keys under ``prefix``) may NOT do, tried: each other replay
    service's memory, a key outside the prefix, reading its own memory, and commands that reach past
    keys (``KEYS``, ``CONFIG GET``). Every one is harmless if it were allowed. Returns those that were
    not refused with ``NOPERM`` (empty: confined as svckit.redisacl says)."""
    others = [c for c in ("timesheets", "approvals", "audit") if c != component]
    attempts: list[tuple[str, ...]] = [
        *(("SET", f"{prefix}identity-replay:{other}:probe", "1", "NX", "EX", "5") for other in others),
        ("SET", f"not-{prefix}identity-replay:{component}:probe", "1", "NX", "EX", "5"),
        ("KEYS", f"{prefix}no-such-key-*"),
        ("CONFIG", "GET", "port"),
    ]
    if "get" not in redisacl.GRANTS[component].commands:
        attempts.append(("GET", f"{prefix}identity-replay:{component}:probe"))
    allowed: list[str] = []
    client = aioredis.Redis.from_url(url, driver_info=None)
    try:
        for command in attempts:
            try:
                await client.execute_command(*command)  # type: ignore[no-untyped-call]
            except NoPermissionError:
                continue
            allowed.append(" ".join(command))
    finally:
        await client.aclose()
    return allowed
