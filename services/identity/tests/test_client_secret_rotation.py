"""A confidential client's secret rotated with an overlap: two secrets valid for a while, then one.

A real provider process (the session's, ``python -m identity serve``) and the admin commands
(``python -m identity rotate-client-secret`` / ``retire-client-secret`` / ``seed``) as the runtime
role; client-credentials grants and revocations over HTTP, the rotation's audit events read from the
provider's outbox (no audit service here: the records wait there). The first rotation is a real
``python -m identity`` process (the secret on its stdout once, never on stderr); the other commands
run in the session's command host (:mod:`testkit.clihost`: the same entry, one interpreter).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from testkit.clihost import CliHost
from testkit.oidc import BATCH_SECRET, run_cli


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A connection per request: the admin commands between requests take longer than the server's
    keep-alive, and a reused connection the server closed meanwhile would fail the test, not the code."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def grant(
    http: aiohttp.ClientSession, base_url: str, client_id: str, secret: str, *, post: bool = False
) -> tuple[int, dict[str, Any]]:
    """A client-credentials grant with ``client_secret_basic`` (or ``client_secret_post``)."""
    form = {"grant_type": "client_credentials"}
    headers = {}
    if post:
        form |= {"client_id": client_id, "client_secret": secret}
    else:
        headers["Authorization"] = aiohttp.encode_basic_auth(client_id, secret)
    async with http.post(base_url + "/oauth/token", data=form, headers=headers) as response:
        return response.status, await response.json()


async def revoke(http: aiohttp.ClientSession, base_url: str, client_id: str, secret: str) -> int:
    headers = {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}
    async with http.post(base_url + "/oauth/revoke", data={"token": "not-a-token"}, headers=headers) as r:
        return r.status


def shown_secret(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "shown once" in line)
    return str(line.rsplit(": ", 1)[1].strip())


def new_client(host: CliHost, env: dict[str, str]) -> tuple[str, str]:
    client_id = "rotating-job-" + secrets.token_hex(4)
    result = host.run(
        "identity", env, "add-client", client_id, "--name", "Rotating", "--confidential",
        "--grant-type", "client_credentials", "--scope", "batch:upload",
    )  # fmt: skip
    return client_id, shown_secret(result)


async def outbox_events(db: asyncpg.Connection, action: str, client_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT payload FROM outbox ORDER BY occurred_at")
    events = [json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"] for r in rows]
    return [e for e in events if e["action"] == action and e["resource"]["id"] == client_id]


async def test_both_secrets_work_during_the_overlap_and_the_old_one_ends_with_it(
    seeded: dict[str, str],
    base_url: str,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
    cli_host: CliHost,
) -> None:
    client_id, old = new_client(cli_host, seeded)
    assert (await grant(http, base_url, client_id, old))[0] == 200

    result = run_cli(seeded, "rotate-client-secret", client_id, "--overlap-seconds", "4")
    started = time.monotonic()
    new = shown_secret(result)
    assert new != old
    assert len(new) >= 40
    assert result.stdout.count(new) == 1, "printed once"
    assert new not in result.stderr, "never logged"

    for secret in (old, new):  # every place the client authenticates takes either
        assert (await grant(http, base_url, client_id, secret))[0] == 200
        assert (await grant(http, base_url, client_id, secret, post=True))[0] == 200
        assert await revoke(http, base_url, client_id, secret) == 200
    made_up = await grant(http, base_url, client_id, "made-up-" + secrets.token_urlsafe(24))
    assert (made_up[0], made_up[1]["error"]) == (401, "invalid_client")
    assert await revoke(http, base_url, client_id, "made-up") == 401

    await asyncio.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
    status, body = await grant(http, base_url, client_id, old)
    assert (status, body["error"]) == (401, "invalid_client"), "the overlap is over"
    assert await revoke(http, base_url, client_id, old) == 401
    assert (await grant(http, base_url, client_id, new))[0] == 200

    events = await outbox_events(db, "identity.client_secret_rotated", client_id)
    assert len(events) == 1, events
    assert (events[0]["outcome"], events[0]["resource"]["type"]) == ("success", "client")
    assert events[0]["details"]["overlap_seconds"] == 4
    assert old not in json.dumps(events)
    assert new not in json.dumps(events)


async def test_retiring_ends_the_overlap_early(
    seeded: dict[str, str],
    base_url: str,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
    cli_host: CliHost,
) -> None:
    client_id, old = new_client(cli_host, seeded)
    new = shown_secret(
        cli_host.run("identity", seeded, "rotate-client-secret", client_id)
    )  # the default overlap
    assert (await grant(http, base_url, client_id, old))[0] == 200
    assert (await grant(http, base_url, client_id, new))[0] == 200

    result = cli_host.run("identity", seeded, "retire-client-secret", client_id)
    assert result.returncode == 0, result.stderr
    status, body = await grant(http, base_url, client_id, old)
    assert (status, body["error"]) == (401, "invalid_client")
    assert (await grant(http, base_url, client_id, new))[0] == 200
    assert len(await outbox_events(db, "identity.client_secret_retired", client_id)) == 1

    again = cli_host.run(
        "identity", seeded, "retire-client-secret", client_id
    )  # nothing left to retire: no event
    assert again.returncode == 0, again.stderr
    assert len(await outbox_events(db, "identity.client_secret_retired", client_id)) == 1
    # a second rotation in a row keeps two secrets, never three: the one before the last ends now
    newer = shown_secret(cli_host.run("identity", seeded, "rotate-client-secret", client_id))
    newest = shown_secret(cli_host.run("identity", seeded, "rotate-client-secret", client_id))
    assert [(await grant(http, base_url, client_id, s))[0] for s in (new, newer, newest)] == [401, 200, 200]


def test_only_confidential_clients_that_exist_rotate(seeded: dict[str, str], cli_host: CliHost) -> None:
    for client_id in ("timesheets-spa", "no-such-client"):
        for command in ("rotate-client-secret", "retire-client-secret"):
            result = cli_host.run("identity", seeded, command, client_id)
            assert result.returncode == 2, (command, client_id, result.stdout)
    assert (
        cli_host.run(
            "identity", seeded, "rotate-client-secret", "timesheets-batch", "--overlap-seconds", "-1"
        ).returncode
        == 2
    )


async def test_the_seed_does_not_undo_a_rotation_by_command(
    seeded: dict[str, str], base_url: str, http: aiohttp.ClientSession, cli_host: CliHost
) -> None:
    """``BATCH_CLIENT_SECRET`` (the upgrade Job's seed, a demo pod's init container) still holding the
    secret of before: the command's secret stays; once the variable holds the current secret it
    manages the secret again, and a change of it is a rotation with the overlap too."""
    batch = "timesheets-batch"
    rotated = shown_secret(cli_host.run("identity", seeded, "rotate-client-secret", batch))
    try:
        reseed = cli_host.run("identity", seeded, "seed")
        assert reseed.returncode == 0, reseed.stderr
        assert "rotate-client-secret" in reseed.stdout + reseed.stderr, "says why it was not applied"
        assert rotated not in reseed.stdout + reseed.stderr
        assert BATCH_SECRET not in reseed.stdout + reseed.stderr
        assert (await grant(http, base_url, batch, rotated))[0] == 200
        assert (await grant(http, base_url, batch, BATCH_SECRET))[0] == 200  # still in the overlap
        assert cli_host.run("identity", seeded, "retire-client-secret", batch).returncode == 0
        assert cli_host.run("identity", seeded, "seed").returncode == 0
        assert (await grant(http, base_url, batch, BATCH_SECRET))[0] == 401, "the seed undid the rotation"
        assert (await grant(http, base_url, batch, rotated))[0] == 200
    finally:
        # the variable catches up with the command (it manages the secret again), then goes back to
        # the session's secret: a rotation with the overlap, ended at once
        assert cli_host.run("identity", {**seeded, "BATCH_CLIENT_SECRET": rotated}, "seed").returncode == 0
        assert cli_host.run("identity", seeded, "seed").returncode == 0
    assert (await grant(http, base_url, batch, BATCH_SECRET))[0] == 200
    assert (await grant(http, base_url, batch, rotated))[0] == 200, (
        "a changed variable rotates with the overlap"
    )
    assert cli_host.run("identity", seeded, "retire-client-secret", batch).returncode == 0
    assert (await grant(http, base_url, batch, rotated))[0] == 401
    assert (await grant(http, base_url, batch, BATCH_SECRET))[0] == 200
