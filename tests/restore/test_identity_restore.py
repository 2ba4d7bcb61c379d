"""The identity schema restored to an earlier point: nothing issued before the restore works again.

A provider's database holds which refresh tokens were used, which sessions ended, which codes were
redeemed and which tokens were revoked. A backup taken before those changes brings them back undone:
a refresh token its owner has since rotated (and a thief copied) is fresh again, a signed-out
session's cookie signs in again, a redeemed code redeems again, a revoked token is no longer revoked
in the source of truth. Nothing outside the database remembers them, so the provider cannot tell by
itself: the operator runs ``python -m identity after-restore`` before the provider serves again
(docs/runbook.md, "Backup and restore"), which ends everything issued before the restore.

Real processes on loopback: the identity service, a gateway (forwarding to an echo upstream) and a
private Redis, which is kept across the restore (the runbook's procedure); the backup and the restore
are ``pg_dump`` / ``pg_restore`` of the schema (``testkit.backup``). The first test's
``after-restore`` is a real ``python -m identity`` process; the other tests run the runbook's commands
in the session's command host (:mod:`testkit.clihost`: the same entry, one interpreter).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from testkit.backup import dump_schema, restore_schema
from testkit.clihost import CliHost
from testkit.fixtures import IsolatedEnv, ServiceProcess
from testkit.oidc import (
    SPA,
    Browser,
    code_request,
    exchange_code,
    params_of,
    pkce_pair,
    refresh,
    run_cli,
    sign_in_tokens,
)
from testkit.providerstack import (
    ComponentRedis,
    ProviderStack,
    component_redis,
    echo_upstream,
    provider_and_gateways,
)

REPO = Path(__file__).resolve().parents[2]
SCOPE = "openid offline_access read:timesheets"


Stack = ProviderStack


@pytest.fixture(scope="module")
def restore_env(isolated_env: IsolatedEnv) -> dict[str, str]:
    return isolated_env("restore_identity")


@pytest.fixture(scope="module")
def redis_users(restore_env: dict[str, str]) -> Iterator[ComponentRedis]:
    with component_redis(restore_env["REDIS_KEY_PREFIX"]) as users:
        yield users


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[str]:
    async with echo_upstream() as url:
        yield url


@pytest.fixture(scope="module")
async def stack(
    restore_env: dict[str, str],
    redis_users: ComponentRedis,
    upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    logs = tmp_path_factory.mktemp("restore-identity-logs")
    async with provider_and_gateways(restore_env, redis_users.urls, upstream, logs) as provider:
        yield provider


def new_session() -> aiohttp.ClientSession:
    """A browser's or client's session; no connection outlives a request (the provider restarts)."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), connector=aiohttp.TCPConnector(force_close=True)
    )


async def api_status(http: aiohttp.ClientSession, stack: Stack, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(stack.gateways[0].url + "/api/timesheets", headers=headers) as response:
        return response.status


async def refused_within(http: aiohttp.ClientSession, stack: Stack, token: str, limit: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await api_status(http, stack, token) == 401:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway still accepts the token {limit}s after the restore was acknowledged")


async def a_code(browser: Browser) -> tuple[str, str]:
    """An authorization code of ``browser``'s signed-in session and its PKCE verifier."""
    verifier, challenge = pkce_pair()
    response = await browser.authorize(**code_request(challenge))
    assert response.status == 302, browser.last_html
    return params_of(response.headers["Location"])["code"], verifier


async def silently_authorized(browser: Browser) -> bool:
    """Does ``browser``'s session cookie still get a code without signing in?"""
    response = await browser.authorize(**code_request(pkce_pair()[1]))
    location = response.headers.get("Location", "")
    return response.status == 302 and location.startswith(SPA) and "code=" in location


async def signing_kids(http: aiohttp.ClientSession, stack: Stack) -> set[str]:
    async with http.get(stack.base + "/.well-known/jwks.json") as response:
        body: dict[str, Any] = await response.json()
    return {key["kid"] for key in body["keys"]}


async def test_nothing_issued_before_an_identity_restore_works_after_it(stack: Stack, tmp_path: Path) -> None:
    async with (
        new_session() as alice_http,
        new_session() as bob_http,
        new_session() as thief_http,
    ):
        alice = Browser(stack.base, alice_http)
        bob = Browser(stack.base, bob_http)
        alice_tokens = await sign_in_tokens(alice, alice_http, stack.base, "alice", scope=SCOPE)
        bob_tokens = await sign_in_tokens(bob, bob_http, stack.base, "bob", scope=SCOPE)
        code, verifier = await a_code(alice)  # redeemed after the backup
        assert await api_status(alice_http, stack, alice_tokens["access_token"]) == 200
        assert await api_status(bob_http, stack, bob_tokens["access_token"]) == 200
        kids_before = await signing_kids(alice_http, stack)

        backup = dump_schema(stack.owner_url, "identity", tmp_path / "identity.dump")

        # --- after the backup: a rotation (a thief copied the token it replaced), a sign-out, a code
        status, rotated = await refresh(alice_http, stack.base, alice_tokens["refresh_token"])
        assert status == 200, rotated
        stolen_refresh = alice_tokens["refresh_token"]
        status, _ = await refresh(thief_http, stack.base, stolen_refresh)
        assert status == 400, "before the restore, the rotated token is refused (reuse detection)"
        thief_http.cookie_jar.update_cookies(bob_http.cookie_jar.filter_cookies(URL(stack.base)))
        thief = Browser(stack.base, thief_http)
        response = await bob.get(f"/v2/logout?client_id=timesheets-spa&returnTo={SPA}/")
        assert response.status == 302
        await refused_within(bob_http, stack, bob_tokens["access_token"])
        status, redeemed = await exchange_code(alice_http, stack.base, code, verifier)
        assert status == 200, redeemed

        # --- the runbook's procedure: stop the provider, restore, acknowledge the restore, start
        stack.identity.stop()
        restore_schema(stack.owner_url, backup)
        done = run_cli(stack.identity_env, "after-restore")
        assert done.returncode == 0, done.stdout + done.stderr
        print(done.stdout)
        stack.identity = ServiceProcess(
            "identity", stack.identity_env, port=stack.identity.port, log_dir=stack.logs
        ).start(wait_path="/readyz")

        # the refresh token alice rotated after the backup (fresh again in the restored rows): refused
        status, error = await refresh(thief_http, stack.base, stolen_refresh)
        assert status == 400, f"a refresh token rotated before the restore works again: {error}"
        assert error["error"] == "invalid_grant"
        # and so is every other refresh token issued before the restore (bob's was revoked by his
        # sign-out, alice's newest is unknown to the restored database)
        for token in (bob_tokens["refresh_token"], rotated["refresh_token"]):
            status, error = await refresh(thief_http, stack.base, token)
            assert status == 400, error
        # bob's signed-out session cookie, copied before his sign-out, signs nobody in
        assert not await silently_authorized(thief), "a signed-out session signs in again after the restore"
        assert not await silently_authorized(alice), "sessions of before the restore must sign in again"
        # the code redeemed after the backup is not redeemed again
        status, error = await exchange_code(thief_http, stack.base, code, verifier)
        assert status == 400, f"an authorization code redeemed before the restore redeems again: {error}"
        # every access token of before the restore is refused at the gateway, bob's (revoked after the
        # backup, a revocation the restored rows lack) and alice's (issued before the backup) alike
        for token in (bob_tokens["access_token"], alice_tokens["access_token"]):
            await refused_within(alice_http, stack, token)

        # a new key is published; a new sign-in works end to end
        assert await signing_kids(alice_http, stack) - kids_before, "after-restore publishes a new key"
        async with new_session() as fresh_http:
            fresh = await sign_in_tokens(
                Browser(stack.base, fresh_http), fresh_http, stack.base, "alice", scope=SCOPE
            )
            assert await api_status(fresh_http, stack, fresh["access_token"]) == 200
            status, renewed = await refresh(fresh_http, stack.base, fresh["refresh_token"])
            assert status == 200, renewed


async def restart_after_restore(stack: Stack, backup: Path, host: CliHost) -> None:
    """The runbook's procedure: stop the provider, restore, acknowledge the restore, start."""
    stack.identity.stop()
    restore_schema(stack.owner_url, backup)
    done = host.run("identity", stack.identity_env, "after-restore")
    assert done.returncode == 0, done.stdout + done.stderr
    stack.identity = ServiceProcess(
        "identity", stack.identity_env, port=stack.identity.port, log_dir=stack.logs
    ).start(wait_path="/readyz")


async def test_an_access_token_issued_after_the_backup_is_refused_after_the_restore(
    stack: Stack, redis_users: ComponentRedis, tmp_path: Path, cli_host: CliHost
) -> None:
    """The restored ledger does not know the access tokens issued after the backup, so revoking its
    rows cannot reach them: after-restore records a cutoff ("not before") that the provider publishes
    on the revocation stream, and the gateways refuse every token of the issuer issued before it,
    verified-token cache hits included — a fresh sign-in after the restore works. Redis losing
    everything afterwards changes nothing: the provider re-publishes the cutoff, and a gateway started
    then refuses the token too."""
    backup = dump_schema(stack.owner_url, "identity", tmp_path / "identity.dump")
    async with new_session() as http:
        issued_after = await sign_in_tokens(Browser(stack.base, http), http, stack.base, "alice", scope=SCOPE)
        token = issued_after["access_token"]
        for _ in range(2):  # the gateway verifies it, then serves it from its verified-token cache
            assert await api_status(http, stack, token) == 200

        await restart_after_restore(stack, backup, cli_host)

        await refused_within(http, stack, token)
        async with http.get(
            stack.gateways[0].url + "/api/timesheets", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 401
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    async with new_session() as fresh_http:
        fresh = await sign_in_tokens(
            Browser(stack.base, fresh_http), fresh_http, stack.base, "alice", scope=SCOPE
        )
        assert await api_status(fresh_http, stack, fresh["access_token"]) == 200

        redis_users.server.restart()  # Redis loses the stream and its marker
        late = ServiceProcess("gateway", stack.gateway_env, log_dir=stack.logs).start(wait_path="/readyz")
        try:
            late_stack = ProviderStack(
                stack.identity,
                stack.identity_env,
                stack.issuer,
                [late],
                stack.gateway_env,
                stack.owner_url,
                stack.logs,
            )
            await refused_within(fresh_http, late_stack, token, limit=10.0)
            assert await api_status(fresh_http, late_stack, fresh["access_token"]) == 200
        finally:
            late.stop()


async def test_after_restore_is_recorded_and_repeatable(stack: Stack, cli_host: CliHost) -> None:
    """Run twice (an operator unsure whether the first run finished): the second finds nothing more
    to end and succeeds; the restore is recorded in the provider's outbox for the audit trail."""
    first = cli_host.run("identity", stack.identity_env, "after-restore")
    assert first.returncode == 0, first.stdout + first.stderr
    conn = await asyncpg.connect(stack.owner_url, server_settings={"search_path": "identity"})
    try:
        actions = [
            row["action"]
            for row in await conn.fetch(
                "SELECT payload->>'action' AS action FROM outbox ORDER BY position DESC LIMIT 5"
            )
        ]
        unrevoked = await conn.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL AND created_at < now()"
        )
        details = await conn.fetchval(
            "SELECT payload->'details' FROM outbox WHERE payload->>'action' = 'identity.restored' "
            "ORDER BY position DESC LIMIT 1"
        )
        cutoff = await conn.fetchrow(
            "SELECT issued_before, keep_until, reason, extract(epoch FROM issued_before) AS seconds "
            "FROM revocation_cutoffs ORDER BY issued_before DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert "identity.restored" in actions, actions
    assert unrevoked == 0
    # the cutoff: a whole second (iat is whole seconds), held for the access-token lifetime + 300 s
    assert cutoff is not None
    assert cutoff["reason"] == "restore"
    assert cutoff["seconds"] == int(cutoff["seconds"])
    assert (cutoff["keep_until"] - cutoff["issued_before"]).total_seconds() == 900 + 300
    assert "the gateways refuse every access token issued before" in first.stdout
    assert json.loads(details)["tokens_issued_before"] == cutoff["issued_before"].isoformat()


def add_user(host: CliHost, stack: Stack, username: str, password: str) -> None:
    """The runbook's ``python -m identity add-user`` (the whole user: it overwrites every field)."""
    done = host.run(
        "identity",
        {**stack.identity_env, "NEW_PASSWORD": password},
        "add-user",
        username,
        "--name",
        username.title(),
        "--email",
        f"{username}@example.com",
        "--role",
        "employee",
        "--password-env",
        "NEW_PASSWORD",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def add_client(host: CliHost, stack: Stack, client_id: str, secret: str) -> None:
    """The runbook's ``python -m identity add-client`` with the secret the client holds now."""
    done = host.run(
        "identity",
        {**stack.identity_env, "CLIENT_SECRET": secret},
        "add-client",
        client_id,
        "--name",
        "Restore batch",
        "--confidential",
        "--scope",
        "read:timesheets",
        "--secret-env",
        "CLIENT_SECRET",
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def signs_in(stack: Stack, username: str, password: str) -> bool:
    async with new_session() as http:
        response = await Browser(stack.base, http).login(username, password)
        assert response.status in (303, 401), response.status
        return response.status == 303


async def client_token(stack: Stack, client_id: str, secret: str) -> int:
    async with new_session() as http:
        data = {
            "grant_type": "client_credentials",
            "scope": "read:timesheets",
            "client_id": client_id,
            "client_secret": secret,
        }
        async with http.post(stack.base + "/oauth/token", data=data) as response:
            return response.status


async def set_disabled(stack: Stack, username: str, disabled: bool) -> None:
    """What the runbook gives for disabling a user (there is no command for it)."""
    conn = await asyncpg.connect(stack.owner_url)
    try:
        await conn.execute(
            "UPDATE identity.users SET disabled = $2, updated_at = now() WHERE username = $1",
            username,
            disabled,
        )
    finally:
        await conn.close()


async def test_account_changes_after_the_backup_come_back_undone_until_reapplied(
    stack: Stack, tmp_path: Path, cli_host: CliHost
) -> None:
    """docs/runbook.md: a password changed, a user disabled and a client secret rotated after the
    backup are as they were at the backup once it is restored — after-restore does not (cannot) know
    them — until the operator applies them again with the commands the runbook lists."""
    erin, frank, client = f"erin{secrets.token_hex(3)}", f"frank{secrets.token_hex(3)}", "restore-batch"
    add_user(cli_host, stack, erin, "erin-old-password")
    add_user(cli_host, stack, frank, "frank-password")
    add_client(cli_host, stack, client, "old-client-secret")
    backup = dump_schema(stack.owner_url, "identity", tmp_path / "identity.dump")

    # after the backup: erin's password changed, frank disabled, the client's secret rotated
    add_user(cli_host, stack, erin, "erin-new-password")
    await set_disabled(stack, frank, True)
    add_client(cli_host, stack, client, "new-client-secret")
    assert not await signs_in(stack, erin, "erin-old-password")
    assert not await signs_in(stack, frank, "frank-password")
    assert await client_token(stack, client, "old-client-secret") == 401

    stack.identity.stop()
    restore_schema(stack.owner_url, backup)
    done = cli_host.run("identity", stack.identity_env, "after-restore")
    assert done.returncode == 0, done.stdout + done.stderr
    stack.identity = ServiceProcess(
        "identity", stack.identity_env, port=stack.identity.port, log_dir=stack.logs
    )
    stack.identity.start(wait_path="/readyz")

    # as at the backup: the old password, the disabled user, the old secret all work again
    assert await signs_in(stack, erin, "erin-old-password")
    assert not await signs_in(stack, erin, "erin-new-password")
    assert await signs_in(stack, frank, "frank-password")
    assert await client_token(stack, client, "old-client-secret") == 200
    assert await client_token(stack, client, "new-client-secret") == 401

    # re-applied from the change records, with the runbook's commands (no restart needed)
    add_user(cli_host, stack, erin, "erin-new-password")
    await set_disabled(stack, frank, True)
    add_client(cli_host, stack, client, "new-client-secret")
    assert await signs_in(stack, erin, "erin-new-password")
    assert not await signs_in(stack, erin, "erin-old-password")
    assert not await signs_in(stack, frank, "frank-password")
    assert await client_token(stack, client, "new-client-secret") == 200
    assert await client_token(stack, client, "old-client-secret") == 401
