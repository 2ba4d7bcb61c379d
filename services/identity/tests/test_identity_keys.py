"""Signing keys: encrypted at rest, rotated safely (published before signing, kept until expiry)."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from identity import keys as keymod
from identity.settings import IdentitySettings
from svckit.settings import load_settings

from testkit.clihost import CliHost
from testkit.oidc import BATCH_SECRET, hosted_cli

from .conftest import own_provider_process, provider_url

pytestmark = pytest.mark.usefixtures("identity_service")


async def cc_token_kid(http: aiohttp.ClientSession, base_url: str) -> str:
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    async with http.post(
        base_url + "/oauth/token", data={"grant_type": "client_credentials"}, headers=auth
    ) as r:
        assert r.status == 200
        token = (await r.json())["access_token"]
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


async def published_kids(http: aiohttp.ClientSession, base_url: str) -> list[str]:
    async with http.get(base_url + "/.well-known/jwks.json") as r:
        return [k["kid"] for k in (await r.json())["keys"]]


async def test_private_keys_are_encrypted_at_rest(db: asyncpg.Connection, seeded: dict[str, str]) -> None:
    rows = await db.fetch("SELECT kid, private_key, public_jwk FROM signing_keys")
    assert rows
    for row in rows:
        blob = bytes(row["private_key"])
        assert b"PRIVATE KEY" not in blob
        assert "d" not in json.loads(row["public_jwk"])
    settings = load_settings(IdentitySettings, env=seeded)
    loaded = await keymod.load_keys(db, keymod.KeyCipher(settings.key_encryption_keys))
    assert {k.kid for k in loaded} >= {rows[0]["kid"]}
    with pytest.raises(keymod.KeyEncryptionError, match="IDENTITY_KEY_ENCRYPTION_KEY"):
        await keymod.load_keys(db, keymod.KeyCipher(secrets.token_bytes(32)))


async def test_a_ciphertext_cannot_be_moved_to_another_key_id() -> None:
    cipher = keymod.KeyCipher(secrets.token_bytes(32))
    blob = cipher.encrypt(b"secret key material", "kid-a")
    assert cipher.decrypt(blob, "kid-a") == b"secret key material"
    with pytest.raises(keymod.KeyEncryptionError):
        cipher.decrypt(blob, "kid-b")


async def test_rotation_publishes_first_then_signs_and_keeps_the_old_key(
    http: aiohttp.ClientSession,
    base_url: str,
    seeded: dict[str, str],
    db: asyncpg.Connection,
    cli_host: CliHost,
) -> None:
    old_kid = await cc_token_kid(http, base_url)
    result = hosted_cli(cli_host, seeded, "rotate-keys", "--grace-seconds", "8")
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    new_kid, signs_from = words[2], datetime.fromisoformat(words[-1])
    assert new_kid != old_kid

    # within a refresh period the new key is in the JWKS while tokens are still signed by the old one
    for _ in range(30):
        if new_kid in await published_kids(http, base_url):
            break
        await asyncio.sleep(0.2)
    assert new_kid in await published_kids(http, base_url)
    assert datetime.now(UTC) < signs_from, "the machine is too slow for this test's grace period"
    assert await cc_token_kid(http, base_url) == old_kid

    # after the grace period the new key signs, and the old one is still published
    await asyncio.sleep((signs_from - datetime.now(UTC)).total_seconds() + 0.5)
    assert await cc_token_kid(http, base_url) == new_kid
    assert old_kid in await published_kids(http, base_url)
    row = await db.fetchrow(
        "SELECT extract(epoch FROM publish_until - retired_at) AS kept FROM signing_keys WHERE kid = $1",
        old_kid,
    )
    assert row is not None
    assert float(row["kept"]) >= 3600  # the longest token lifetime (ID token, 1 h) + leeway


async def test_expired_keys_leave_the_jwks(
    db: asyncpg.Connection, http: aiohttp.ClientSession, base_url: str
) -> None:
    await db.execute(
        """INSERT INTO signing_keys (kid, alg, public_jwk, private_key, signs_from, retired_at, publish_until)
           SELECT 'gone-' || kid, alg, public_jwk, private_key, signs_from - interval '2 days',
                  now() - interval '2 days', now() - interval '1 day' FROM signing_keys LIMIT 1"""
    )
    await asyncio.sleep(1.5)
    assert not [k for k in await published_kids(http, base_url) if k.startswith("gone-")]


def test_es256_keys_sign_and_verify() -> None:
    key = keymod.generate_private_key("ES256")
    jwk = keymod.public_jwk(key, "", "ES256")
    kid = keymod.jwk_thumbprint_kid(jwk)
    token = jwt.encode({"sub": "x"}, key, algorithm="ES256", headers={"kid": kid})
    public: Any = jwt.PyJWK({**jwk, "kid": kid}).key
    assert jwt.decode(token, public, algorithms=["ES256"])["sub"] == "x"
    assert jwk["crv"] == "P-256"
    assert "d" not in jwk


def test_discovery_is_cacheable_and_jwks_short_lived(base_url: str) -> None:
    with urllib.request.urlopen(base_url + "/.well-known/jwks.json") as response:
        assert response.headers["Cache-Control"] == "public, max-age=60"


async def test_an_es256_deployment_signs_access_and_id_tokens(
    seeded: dict[str, str], test_run_id: str, cli_host: CliHost
) -> None:
    """SIGNING_ALG=ES256 on a database of its own: both token kinds verify against the JWKS."""
    from testkit.fixtures import (
        ServiceProcess,
        create_database,
        drop_database,
        free_port,
        migrate_schema,
        runtime_env,
    )
    from testkit.oidc import DEMO_PASSWORD, SPA, Browser, sign_in_tokens

    name = f"tsp_test_{test_run_id}_es256"
    url = await create_database(name)
    port = free_port()
    env = {
        **seeded,
        "DATABASE_URL": url,
        "SIGNING_ALG": "ES256",
        "IDENTITY_ISSUER": f"http://localhost:{port}/",
    }
    process: ServiceProcess | None = None
    try:
        await migrate_schema(url, "identity", Path(keymod.__file__).parent)
        assert hosted_cli(cli_host, env, "seed").returncode == 0
        served = runtime_env(env, "identity")  # seeded as the owner, served as the runtime role
        process = ServiceProcess("identity", served, port=port).start(wait_path="/readyz")
        base = f"http://localhost:{port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            browser = Browser(base, session)
            body = await sign_in_tokens(
                browser, session, base, redirect_uri=f"{SPA}/", scope="openid read:timesheets", nonce="es"
            )
            async with session.get(base + "/.well-known/jwks.json") as r:
                jwks = (await r.json())["keys"]
        assert {k["alg"] for k in jwks} == {"ES256"}
        assert jwt.get_unverified_header(body["access_token"])["alg"] == "ES256"
        assert jwt.get_unverified_header(body["id_token"])["alg"] == "ES256"
        public = jwt.PyJWK(jwks[0]).key
        claims = jwt.decode(body["id_token"], public, algorithms=["ES256"], audience="timesheets-spa")
        assert claims["nonce"] == "es"
        assert DEMO_PASSWORD not in process.logs()
    finally:
        if process is not None:
            process.stop()
        await drop_database(name)


async def test_a_wrong_key_encryption_key_leaves_the_service_up_but_not_ready(seeded: dict[str, str]) -> None:
    """The keys' housekeeping task cannot decrypt them: /healthz 200, /readyz 503 naming
    signing_keys, and a log line naming the variable (never the key)."""
    wrong = secrets.token_urlsafe(32)
    with own_provider_process(seeded, wait_path="/healthz", IDENTITY_KEY_ENCRYPTION_KEY=wrong) as process:
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                if "IDENTITY_KEY_ENCRYPTION_KEY does not match" in process.logs():
                    break
                await asyncio.sleep(0.1)
            async with http.get(provider_url(process.port) + "/readyz") as r:
                assert r.status == 503
                assert "signing_keys" in await r.text()
        logs = process.logs()
        assert "IDENTITY_KEY_ENCRYPTION_KEY does not match" in logs
        assert wrong not in logs


async def test_two_replicas_starting_together_on_a_fresh_database_make_one_signing_key(
    test_run_id: str,
) -> None:
    """Every replica runs ``ensure_signing_key`` at start, serialised by the table lock. A replica
    whose transaction began before another's (its ``BEGIN``, then the lock it waits for) but took the
    lock second must find the key the first one made: with ``now()`` (its own transaction's start)
    that key seemed not to sign yet, and it made a second one, published for ever and never used."""
    from testkit.fixtures import create_database, drop_database, migrate_schema, runtime_url

    name = f"tsp_test_{test_run_id}_twokeys"
    url = await create_database(name)
    cipher = keymod.KeyCipher(secrets.token_bytes(32))
    try:
        await migrate_schema(url, "identity", Path(keymod.__file__).parent)
        settings = {"search_path": "identity"}
        first, second = [
            await asyncpg.connect(runtime_url(url, "identity"), server_settings=settings) for _ in range(2)
        ]
        try:
            async with second.transaction():
                await second.execute("SELECT 1")  # the second replica's transaction has begun
                await asyncio.sleep(0.01)
                assert await keymod.ensure_signing_key(first, "RS256", cipher) is not None
                made = await keymod.ensure_signing_key(second, "RS256", cipher)
            assert made is None, "a second signing key was made"
            assert await first.fetchval("SELECT count(*) FROM signing_keys") == 1
        finally:
            await first.close()
            await second.close()
    finally:
        await drop_database(name)


class CountingCipher(keymod.KeyCipher):
    """The provider's cipher, counting what it decrypts."""

    decrypted = 0

    def decrypt(self, blob: bytes, kid: str) -> bytes:
        self.decrypted += 1
        return super().decrypt(blob, kid)


async def test_a_reload_parses_only_keys_it_has_not_seen(
    db: asyncpg.Connection, seeded: dict[str, str]
) -> None:
    """The provider reloads its keys every ``KEY_REFRESH_SECONDS``: a key stored as the last load
    found it is not decrypted and parsed again (an RSA-2048 parse: ~40 ms of CPU, every second per
    key in the suite's providers: 40% of the pod's CPU request, taken from the sign-in storm's loop);
    one not remembered by its kid and sealed blob (new, or sealed anew) is, and what is remembered
    afterwards is what this load returned (fails before: every load decrypted every key)."""
    settings = load_settings(IdentitySettings, env=seeded)
    cipher = CountingCipher(settings.key_encryption_keys)
    stored = {
        row["kid"]: bytes(row["private_key"])
        for row in await db.fetch("SELECT kid, private_key FROM signing_keys")
    }
    parsed: keymod.Parsed = {}
    first = await keymod.load_keys(db, cipher, parsed)
    assert first
    assert cipher.decrypted == len(first)
    assert set(parsed) == {(k.kid, stored[k.kid]) for k in first}
    again = await keymod.load_keys(db, cipher, parsed)
    assert cipher.decrypted == len(first)  # nothing decrypted again
    assert [(k.kid, k.private_key) for k in again] == [(k.kid, k.private_key) for k in first]
    # the newest key remembered under another blob, and a key no longer published
    newest = first[0]
    del parsed[(newest.kid, stored[newest.kid])]
    parsed[(newest.kid, b"sealed before")] = newest.private_key
    parsed[("gone", b"x")] = newest.private_key
    third = await keymod.load_keys(db, cipher, parsed)
    assert cipher.decrypted == len(first) + 1
    assert [k.kid for k in third] == [k.kid for k in first]
    assert set(parsed) == {(k.kid, stored[k.kid]) for k in first}
