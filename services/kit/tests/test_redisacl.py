"""svckit.redisacl: each component's Redis user may run what the kit does for it, and nothing of the
others'. On the session's Redis, as users of this test's own (testkit.redisusers)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from redis.exceptions import NoPermissionError
from svckit import redisacl
from svckit.dpop import Proof, ReplayGuard
from svckit.identity import new_nonce
from svckit.redisguard import RedisGuard
from svckit.replay import ReplayMemory


@pytest.mark.unit
def test_the_prefix_is_escaped_and_every_user_ends_without_dangerous_commands() -> None:
    assert redisacl.pattern("a*b?[c]\\:", "x:*") == "a\\*b\\?\\[c\\]\\\\:x:*"
    for component in redisacl.COMPONENTS:
        rules = redisacl.rules(component, "p:").split(" ")
        assert rules[:2] == ["resetchannels", "-@all"]
        commands = [rule for rule in rules if rule[0] in "+-"]
        assert commands[-2:] == ["-@dangerous", "-@admin"]
        assert "+@all" not in rules
        assert all(rule.startswith(("~p:", "%R~p:")) for rule in rules if "~" in rule), rules
    with pytest.raises(ValueError, match="spaces"):
        redisacl.rules("gateway", "a b:")


@pytest.mark.unit
def test_the_admin_user_names_its_diagnostics_one_by_one_and_no_key() -> None:
    """The bundled Redis's operators' user (tests/packaging/test_redis_acl.py runs it on a real Redis):
    ``-@all`` then single commands or subcommands, no category, no key or channel pattern."""
    rules = redisacl.ADMIN_RULES.split(" ")
    assert rules[:2] == ["resetchannels", "-@all"]
    granted = rules[2:]
    assert all(rule.startswith("+") and "@" not in rule for rule in granted), granted
    for never in (
        "+config",
        "+config|set",
        "+acl",
        "+acl|setuser",
        "+acl|list",
        "+flushall",
        "+monitor",
        "+client",
        "+client|kill",
        "+slowlog",
        "+slowlog|reset",
        "+get",
        "+scan",
        "+keys",
    ):
        assert never not in granted
    assert {"+info", "+slowlog|get", "+client|list", "+memory|stats"} <= set(granted)


async def test_a_service_records_its_own_nonces_only(
    redis_user: Callable[..., str], redis_prefix: str
) -> None:
    """The replay memory (svckit.replay: its own RESP wire, AUTH with the user's name) works as the
    timesheets user, which may not write the audit service's memory nor read its own."""
    prefix = f"{redis_prefix}acl-{uuid.uuid4().hex}:"  # deleted with the session's keys
    url = await asyncio.to_thread(redis_user, "timesheets", prefix)
    guard = RedisGuard(url, prefix, timeout=1.0, retry_seconds=1.0)
    try:
        memory = ReplayMemory(guard, "timesheets", 60)
        nonce = new_nonce()
        assert await memory.first_use(nonce, "POST") == "fresh"
        assert await ReplayMemory(guard, "timesheets", 60).first_use(nonce, "POST") == "replay"
        assert guard.available, "no command was refused"
        with pytest.raises(NoPermissionError):
            await guard.client.set(f"{prefix}identity-replay:audit:{nonce}", "1", nx=True)
        with pytest.raises(NoPermissionError):
            await guard.client.get(f"{prefix}identity-replay:timesheets:{nonce}")
        # EXISTS of its own keys (the lookup while Redis refuses writes), nobody else's
        assert await guard.client.exists(f"{prefix}identity-replay:timesheets:{nonce}") == 1
        with pytest.raises(NoPermissionError):
            await guard.client.exists(f"{prefix}identity-replay:audit:{nonce}")
        memory.close()
    finally:
        await guard.close()


async def test_the_dpop_memories_are_the_gateways_and_the_providers(
    redis_user: Callable[..., str], redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}acl-{uuid.uuid4().hex}:"  # deleted with the session's keys
    urls = [await asyncio.to_thread(redis_user, c, prefix) for c in ("gateway", "identity")]
    gateway, identity = (RedisGuard(url, prefix, timeout=1.0, retry_seconds=30.0) for url in urls)
    try:
        proof = Proof("jkt", "jti-1", time.time())
        assert await ReplayGuard(gateway, "dpop-jti", 65).first_use(proof)
        assert await ReplayGuard(identity, "identity-dpop-jti", 65).first_use(proof)
        assert gateway.available, "no command was refused"
        assert identity.available, "no command was refused"
        # the provider's user may not write the gateway's memory: refused (the circuit opens)
        await ReplayGuard(identity, "dpop-jti", 65).first_use(Proof("jkt", "jti-2", time.time()))
        assert not identity.available
    finally:
        await gateway.close()
        await identity.close()


def test_user_url_keeps_an_ipv6_literal_in_brackets() -> None:
    """``make dev`` and the test Redis build each component's URL from the server's: an IPv6 server
    (``redis://[::1]:6379/0``) lost its brackets (``redis://u:p@::1:6379/0``, no URL at all)."""
    for server, host in (("redis://[::1]:6380/0", "[::1]"), ("rediss://admin:x@[fd00::7]/2", "[fd00::7]")):
        url = redisacl.user_url(server, "gateway", "p w")
        assert url.split("@", 1)[1].startswith(host), url
        parts = urlsplit(url)
        assert parts.hostname == host.strip("[]"), url
        assert (parts.username, parts.password) == ("gateway", "p%20w")
    assert redisacl.user_url("redis://127.0.0.1:6379/0", "audit", "p") == "redis://audit:p@127.0.0.1:6379/0"
