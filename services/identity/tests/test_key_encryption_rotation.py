"""IDENTITY_KEY_ENCRYPTION_KEY rotating while the provider's pods roll (docs/runbook.md, "Rotate the
provider's key-encryption key").

The key encrypts the provider's private signing keys in the database; every pod decrypts every
published one. With one key only it could not change at all: a pod given another key cannot decrypt
the stored keys and stays unready for good. Real provider processes on a database of their own, one
rotation step after the other, as the pods of a rolling Deployment meet them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import pytest
from identity.keys import KeyCipher
from svckit.keyring import KeyRing

from testkit.clihost import CliHost
from testkit.fixtures import IsolatedEnv, ServiceProcess, migrate_schema, runtime_env
from testkit.oidc import BATCH_SECRET, hosted_cli

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "identity"
OLD = secrets.token_urlsafe(32)
NEW = secrets.token_urlsafe(32)
#: IDENTITY_KEY_ENCRYPTION_KEY through a rotation: one key as earlier releases take it; the same key
#: named, the new one added (decrypts only); the new one first (encrypts new signing keys); the old dropped
ROTATION = [OLD, f"old:{OLD},new:{NEW}", f"new:{NEW},old:{OLD}", f"new:{NEW}"]


@pytest.fixture(scope="module")
def owner_env(isolated_env: IsolatedEnv, identity_env: dict[str, str], cli_host: CliHost) -> dict[str, str]:
    """A database of its own (signing keys nobody else encrypted), migrated and seeded as the owner
    with the key of before."""
    own = isolated_env("kekrotation")
    env = {
        **identity_env,
        "DATABASE_URL": own["DATABASE_URL"],
        "REDIS_KEY_PREFIX": own["REDIS_KEY_PREFIX"],
        "IDENTITY_KEY_ENCRYPTION_KEY": OLD,
    }
    asyncio.run(migrate_schema(env["DATABASE_URL"], "identity", PACKAGE_DIR))
    result = hosted_cli(cli_host, env, "seed")
    assert result.returncode == 0, result.stderr
    return env


def pod(owner_env: dict[str, str], value: str) -> ServiceProcess:
    env = {**runtime_env(owner_env, "identity"), "IDENTITY_KEY_ENCRYPTION_KEY": value}
    return ServiceProcess("identity", env)


def ready(process: ServiceProcess) -> bool:
    try:
        with urllib.request.urlopen(process.url + "/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def becomes_ready(process: ServiceProcess, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ready(process):
            return True
        time.sleep(0.2)
    return False


def refused_loads(process: ServiceProcess) -> int:
    """How many times the pod's key loading failed on a key it cannot decrypt (each attempt logs it)."""
    lines = process.log_path.read_text(errors="replace").splitlines()
    return sum("identity-housekeeping failed" in line and "KeyEncryptionError" in line for line in lines)


def stays_unready(process: ServiceProcess, attempts: int, within: float) -> bool:
    """Not ready at any time until the pod has tried to load the keys ``attempts`` times and failed:
    what it refuses is seen refused, not merely not reached yet."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ready(process):
            return False
        if refused_loads(process) >= attempts:
            return not ready(process)
        time.sleep(0.1)
    raise AssertionError(f"the pod did not try to load the keys {attempts} times in {within} s")


async def signing_kid(process: ServiceProcess) -> str:
    auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(process.url + "/oauth/token", data={"grant_type": "client_credentials"}, headers=auth) as r,
    ):
        assert r.status == 200, await r.text()
        kid: str = jwt.get_unverified_header((await r.json())["access_token"])["kid"]
        return kid


@pytest.fixture
def started() -> Iterator[list[ServiceProcess]]:
    processes: list[ServiceProcess] = []
    yield processes
    for process in processes:
        process.stop()


async def test_the_key_encryption_key_rotates_pod_by_pod(
    owner_env: dict[str, str], started: list[ServiceProcess], cli_host: CliHost
) -> None:
    """Each step's pods serve beside the step before's, signing with the same key; a new signing key
    (rotate-keys) is encrypted with the new key; the old key may go once no published signing key is
    encrypted with it, and a pod without it before then stays unready (what it cannot decrypt it
    never signs with)."""

    def start(value: str, *, wait_ready: bool = True) -> ServiceProcess:
        process = pod(owner_env, value)
        started.append(process)
        return process.start(wait_path="/readyz" if wait_ready else "/healthz")

    # two pods rolling side by side: started together
    before, adding = await asyncio.gather(
        asyncio.to_thread(start, ROTATION[0]), asyncio.to_thread(start, ROTATION[1])
    )
    old_kid = await signing_kid(before)
    assert await signing_kid(adding) == old_kid

    first = start(ROTATION[2])
    assert await signing_kid(first) == old_kid
    before.stop()  # step 2's rollout is over: no pod holds the old key alone
    result = hosted_cli(
        cli_host,
        {**runtime_env(owner_env, "identity"), "IDENTITY_KEY_ENCRYPTION_KEY": ROTATION[2]},
        "rotate-keys",
        "--grace-seconds",
        "0",
    )
    assert result.returncode == 0, result.stderr
    new_kid = result.stdout.split()[2]
    conn = await asyncpg.connect(owner_env["DATABASE_URL"], server_settings={"search_path": "identity"})
    try:
        blob = bytes(await conn.fetchval("SELECT private_key FROM signing_keys WHERE kid = $1", new_kid))
        assert KeyCipher(KeyRing.parse(f"new:{NEW}")).decrypt(blob, new_kid)  # encrypted with the new key
        for process in (adding, first):  # both reload it (KEY_REFRESH_SECONDS=1) and sign with it
            for _ in range(50):
                if await signing_kid(process) == new_kid:
                    break
                await asyncio.sleep(0.2)
            assert await signing_kid(process) == new_kid

        # the old signing key is still published (tokens it signed are still valid): its key-encryption
        # key cannot go yet
        early = start(ROTATION[3], wait_ready=False)
        assert stays_unready(early, attempts=2, within=30)  # the second after a back-off of 1 s
        # the old signing key's publication ends (in production: its tokens' lifetime + a minute)
        await conn.execute("UPDATE signing_keys SET publish_until = now() WHERE kid = $1", old_kid)
    finally:
        await conn.close()
    assert becomes_ready(early, within=40)
    assert await signing_kid(early) == new_kid
    assert await signing_kid(start(ROTATION[3])) == new_kid


def test_a_single_key_encrypts_as_before_and_a_named_key_says_which() -> None:
    """One key without a name writes the blobs of earlier releases (nonce and ciphertext), so a pod of
    the release before reads what this one writes while an upgrade rolls; a named key's blob names it,
    and is read with that key only."""
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    legacy = KeyCipher(old).encrypt(b"pem", "kid-a")
    assert not legacy.startswith(KeyCipher.MAGIC)
    assert len(legacy) == 12 + 3 + 16
    rotating = KeyCipher(KeyRing((("new", new), ("old", old))))
    assert rotating.decrypt(legacy, "kid-a") == b"pem"
    named = rotating.encrypt(b"pem", "kid-b")
    assert named.startswith(KeyCipher.MAGIC + b"\x03new")
    assert KeyCipher(KeyRing((("new", new),))).decrypt(named, "kid-b") == b"pem"
    with pytest.raises(Exception, match="IDENTITY_KEY_ENCRYPTION_KEY"):
        KeyCipher(old).decrypt(named, "kid-b")
