"""The signing-key schedule is written in the database's time (``now()``: the first key, rotations,
retirements); a replica decides which key signs and which are published. Replicas' clocks and the
database's differ a little: a replica must not find itself without a signing key, or drop a key
from its JWKS early, because its clock is a few seconds off the database's.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from identity.keys import KeyCipher, rotate_keys
from identity.keystore import KeyStore
from svckit.migrations import migrate

from testkit.clock import SkewedClock
from testkit.fixtures import free_port

from .conftest import PACKAGE_DIR


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A schema of the provider's own, empty: no signing key yet (a first install)."""
    schema = f"identity_keys_{secrets.token_hex(4)}"
    await migrate(database_url, schema, PACKAGE_DIR / "migrations")
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"search_path": schema}
    )
    try:
        yield pool
    finally:
        await pool.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


async def test_a_replica_whose_clock_is_behind_the_databases_signs_from_the_first_key_on(
    pool: asyncpg.Pool,
) -> None:
    """The first key signs from the database's ``now()``; a replica 5 s behind it found no key that
    signs at its own time (NoSigningKey: not ready, and a 500 at the token endpoint) until its clock
    caught up."""
    cipher = KeyCipher(secrets.token_bytes(32))
    behind = KeyStore(cipher, "ES256", 30, clock=SkewedClock(-5.0))
    await behind.start(pool)
    first = behind.signer()
    async with pool.acquire() as conn:  # a rotation with no grace: the new key signs at once
        kid, _ = await rotate_keys(conn, "ES256", cipher, grace_seconds=0, max_token_ttl_seconds=60)
    await behind.refresh(pool)
    assert behind.signer().kid == kid != first.kid  # on the schedule's time, not 5 s late


async def test_the_keys_last_loaded_stay_published_while_the_database_is_away(pool: asyncpg.Pool) -> None:
    """The JWKS is served from memory, but each request re-read the keys once they were older than
    ``key_refresh_seconds`` (30 s): 30 s into a Postgres outage the provider's JWKS answered 503, so
    a gateway could not fetch a key set (a new replica, an unknown ``kid``) although the provider
    held it. Now the keys last loaded stay in use until a read succeeds again, tried once per
    ``refresh_seconds`` rather than on every request; with none loaded yet the error is the caller's
    (the kit's 503)."""
    cipher = KeyCipher(secrets.token_bytes(32))
    store = KeyStore(cipher, "ES256", 0.05)
    await store.start(pool)
    published = store.jwks()
    await asyncio.sleep(0.1)  # stale
    away = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none", min_size=0)
    try:
        await store.refresh_if_stale(away)
        assert store.jwks() == published
        assert store.signer().kid == published["keys"][0]["kid"]
        await asyncio.sleep(0.1)
        await store.refresh_if_stale(pool)  # back: read again
        assert store.jwks() == published
        with pytest.raises(ConnectionRefusedError):  # nothing loaded yet: nothing to serve
            await KeyStore(cipher, "ES256", 0.05).refresh_if_stale(away)
    finally:
        await away.close()
