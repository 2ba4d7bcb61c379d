"""The runbook's Redis command for stale signing keys finds the keys the gateway really writes."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from .conftest import Provider

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "runbook.md"


async def test_runbook_scan_pattern_finds_the_gateways_jwks_keys(
    api: Any, start_gateway: Any, provider: Provider, redis_url: str, redis_prefix: str
) -> None:
    """TimesheetsJWKSKeysTooOld: "the Redis keys under REDIS_KEY_PREFIX
    (`redis-cli --scan --pattern 'tsp:jwks:*'`)" — and "delete the stale Redis keys". With the
    default prefix `tsp:` swapped for this test's prefix, the pattern must match the keys the gateway
    stored for its issuer."""
    (pattern,) = re.findall(r"--scan --pattern '([^']*jwks[^']*)'", RUNBOOK.read_text())
    assert pattern.startswith("tsp:")
    prefix = f"{redis_prefix}runbook:"
    async with start_gateway(redis_key_prefix=prefix) as gateway:
        status, _, body = await api("GET", f"{gateway}/api/timesheets", provider.token())
        assert status == 200, body
    client = aioredis.from_url(redis_url)
    try:
        stored = sorted([key.decode() async for key in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()
    jwks = [key for key in stored if "jwks" in key]
    assert jwks, f"the gateway stored no key set in Redis: {stored}"
    ours = prefix + pattern.removeprefix("tsp:")
    assert [key for key in jwks if fnmatch.fnmatchcase(key, ours)], (
        f"`--pattern {pattern!r}` matches none of the gateway's key-set keys {jwks}"
    )
