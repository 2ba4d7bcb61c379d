"""The token endpoint in the moment before the provider's signing keys load.

``/readyz`` keeps traffic away while it names ``signing_keys``, but a request that arrives anyway (a
client with a cached address, a balancer that has not looked yet, the first start on a fresh database
while the housekeeping task still waits to make the first key) must get what every other "not now"
gets: 503 with ``Retry-After``, the problem document a database outage gets there, never a 500.

The provider runs in the test's process on a database of its own, seeded, with its signing keys
deleted. The test holds the table lock the start's ``ensure_signing_key`` takes: the housekeeping task
waits there (the first key not made yet), exactly the window of a first start. The other case: keys
that cannot be decrypted (a wrong ``IDENTITY_KEY_ENCRYPTION_KEY``), the provider up and never ready.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from identity import keys as keymod
from identity.app import create_app
from identity.settings import IdentitySettings
from svckit.settings import load_settings

from testkit.client import wait_ready
from testkit.clihost import CliHost
from testkit.fixtures import create_database, drop_database, migrate_schema, runtime_env, serve_app
from testkit.oidc import BATCH_SECRET, hosted_cli

pytestmark = pytest.mark.timeout(60)

GRANT = {
    "grant_type": "client_credentials",
    "client_id": "timesheets-batch",
    "client_secret": BATCH_SECRET,
    "audience": "https://timesheets.abc.example/api",
}


@pytest.fixture
async def fresh(
    seeded: dict[str, str], test_run_id: str, cli_host: CliHost
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A seeded database of its own: its owner's URL and the runtime role's environment."""
    name = f"tsp_test_{test_run_id}_nokeys_{secrets.token_hex(3)}"
    url = await create_database(name)
    try:
        env = {**seeded, "DATABASE_URL": url, "KEY_REFRESH_SECONDS": "60"}
        await migrate_schema(url, "identity", Path(keymod.__file__).parent)
        assert hosted_cli(cli_host, env, "seed").returncode == 0
        yield url, runtime_env(env, "identity")
    finally:
        await drop_database(name)


async def token_answer(base: str) -> tuple[int, str | None, str, dict[str, object]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz") as ready:
            assert ready.status == 503, await ready.text()
            assert "signing_keys" in await ready.text()
        async with http.post(base + "/oauth/token", data=GRANT) as reply:
            body = await reply.json(content_type=None)
            return reply.status, reply.headers.get("Retry-After"), reply.content_type, body


def assert_try_later(answer: tuple[int, str | None, str, dict[str, object]]) -> None:
    status, retry_after, content_type, body = answer
    assert status == 503, body
    assert retry_after is not None, body
    assert retry_after.isdigit(), retry_after
    assert content_type == "application/problem+json", content_type  # as in a database outage
    assert body["status"] == 503, body
    assert "rotate-keys" not in str(body), body  # the reason is for the log, not for the client
    assert "ENCRYPTION" not in str(body), body


async def test_a_token_request_before_the_first_key_is_made_is_503(
    fresh: tuple[str, dict[str, str]],
) -> None:
    owner_url, env = fresh
    owner = await asyncpg.connect(owner_url, server_settings={"search_path": "identity"})
    try:
        await owner.execute("DELETE FROM signing_keys")
        app = create_app(load_settings(IdentitySettings, env=env))
        lock = owner.transaction()
        await lock.start()  # the start's ensure_signing_key waits for this lock
        await owner.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
        async with serve_app(app) as base:
            try:
                answer = await token_answer(base)
            finally:
                await lock.rollback()
            assert_try_later(answer)
            # the first key made, the keys loaded: ready, and the same request is answered
            await wait_ready(base)
            async with aiohttp.ClientSession() as http, http.post(base + "/oauth/token", data=GRANT) as reply:
                assert reply.status == 200, await reply.text()
    finally:
        await owner.close()


async def test_a_token_request_with_keys_that_cannot_be_decrypted_is_503(
    fresh: tuple[str, dict[str, str]],
) -> None:
    _, env = fresh
    wrong = {**env, "IDENTITY_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32)}
    app = create_app(load_settings(IdentitySettings, env=wrong))
    async with serve_app(app) as base:
        assert_try_later(await token_answer(base))
