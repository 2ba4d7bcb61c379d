"""Redis ACL users for the services under test, as in production: one per component (svckit.redisacl).

The machine's Redis is shared by every test run and has no password; a test gets users of its own,
with random names (``tsp-test-<hex>-<component>``) and key patterns under its own prefix, and deletes
them afterwards. The rules are svckit.redisacl's, so a service that starts using a command or a key its
user is not granted fails its tests here (``NOPERM``) before it fails in a cluster.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis
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
