"""Issue 13's attacks on a signed request, performed against the timesheets service as it runs in
production (``python -m timesheets``, two replicas on one Redis), each expected to be refused:

* the captured header set of alice's ``POST /timesheets`` sent again with another body (the signature
  binds ``Content-Digest``);
* the same header set and body sent again within the skew window, to the replica that accepted it and
  to the other one (each signed request is accepted once: svckit.replay);
* with Redis unreachable, a replica cannot know through it what the other accepted: writes are
  recorded in the replicas' shared database instead (svckit.replayfallback), so a replay to the other
  replica is refused still; with the database unreachable too they are refused (503, ``Retry-After``);
  reads go on with the replica's own memory, which still refuses a replay to it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.fixtures import (
    Caller,
    ServiceProcess,
    ServiceRedis,
    create_database,
    drop_database,
    free_port,
    migrate_schema,
    scrape,
    user,
)
from testkit.redisproc import PrivateRedis

SERVICES = Path(__file__).resolve().parents[2] / "services"
ALICE = user("alice", "read:timesheets", "create:timesheets")


@pytest.fixture(scope="module")
async def database(test_run_id: str) -> AsyncIterator[str]:
    name = f"tsp_test_{test_run_id}_replay"
    url = await create_database(name)
    await migrate_schema(url, "timesheets", SERVICES / "timesheets" / "timesheets")
    yield url
    await drop_database(name)


@pytest.fixture(scope="module")
def env(database: str, service_env: dict[str, str], service_redis: ServiceRedis) -> dict[str, str]:
    return service_redis.runtime_env(
        {
            **service_env,
            "DATABASE_URL": database,
            "REDIS_KEY_PREFIX": f"{service_env['REDIS_KEY_PREFIX']}replay-{secrets.token_hex(3)}:",
            "AUDIT_URL": "http://127.0.0.1:9",  # the outbox relay waits; nothing here needs it
        },
        "timesheets",
    )


@pytest.fixture(scope="module")
def replicas(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServiceProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    started = [ServiceProcess("timesheets", env, log_dir=logs).start("/readyz") for _ in range(2)]
    try:
        yield started
    finally:
        for process in started:
            process.stop()


async def send(
    url: str, method: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body or None, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else {}, dict(response.headers)


def entry(project: str) -> bytes:
    # an hour: every test here creates for the same ALICE on one date, and a day holds 24 hours
    return json.dumps({"date": "2026-11-23", "project": project, "hours": 1}).encode()


async def refusals(url: str, reason: str) -> float:
    text = await scrape(url)
    match = re.search(rf'^identity_verification_failures_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_a_changed_body_under_a_valid_signature_is_refused(
    replicas: list[ServiceProcess], caller: Caller
) -> None:
    url = replicas[0].url + "/timesheets"
    body = entry("Original")
    headers = {**caller.headers(ALICE, "POST", url, body=body), "content-type": "application/json"}
    before = await refusals(replicas[0].url, "digest_mismatch")
    for forged in (entry("Attacker's"), entry("Original")[:-1] + b', "notes": "x"}', b""):
        status, problem, _ = await send(url, "POST", headers, forged)
        assert (status, problem["reason"]) == (401, "digest_mismatch"), forged
    assert await refusals(replicas[0].url, "digest_mismatch") == before + 3
    status, created, _ = await send(url, "POST", headers, body)  # the genuine one still goes through once
    assert (status, created["project"]) == (201, "Original")


async def test_a_replay_is_refused_by_the_replica_that_accepted_it_and_by_the_other(
    replicas: list[ServiceProcess], caller: Caller
) -> None:
    first, second = replicas
    body = entry(f"Replayed {secrets.token_hex(3)}")
    headers = {
        **caller.headers(ALICE, "POST", first.url + "/timesheets", body=body),
        "content-type": "application/json",
    }
    status, created, _ = await send(first.url + "/timesheets", "POST", headers, body)
    assert status == 201, created
    before = [await refusals(replica.url, "replay") for replica in replicas]
    for replica in (first, second, second):
        status, problem, _ = await send(replica.url + "/timesheets", "POST", headers, body)
        assert (status, problem["reason"]) == (401, "replay"), replica.url
    assert [await refusals(replica.url, "replay") for replica in replicas] == [before[0] + 1, before[1] + 2]
    # reads too: a captured GET is accepted once, whichever replica it is sent to
    listing = caller.headers(ALICE, "GET", second.url + "/timesheets?limit=1")
    assert (await send(second.url + "/timesheets?limit=1", "GET", listing))[0] == 200
    status, problem, _ = await send(first.url + "/timesheets?limit=1", "GET", listing)
    assert (status, problem["reason"]) == (401, "replay")
    # one entry was created, not two
    mine = caller.headers(ALICE, "GET", first.url + "/timesheets?limit=100")
    status, page, _ = await send(first.url + "/timesheets?limit=100", "GET", mine)
    assert [item["project"] for item in page["items"]].count(json.loads(body)["project"]) == 1


async def fallback_count(url: str, outcome: str) -> float:
    text = await scrape(url)
    match = re.search(rf'^identity_replay_fallback_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_without_redis_a_write_is_accepted_once_by_any_replica_through_the_database(
    env: dict[str, str], caller: Caller, tmp_path: Path
) -> None:
    """Redis stopped: the replicas record unsafe nonces in their shared database instead
    (svckit.replayfallback), so a write is accepted, once; reads go on with each replica's memory."""
    redis = PrivateRedis().start()
    replica_env = {**env, "REDIS_URL": redis.url, "REDIS_RETRY_SECONDS": "0.5"}
    first, second = (ServiceProcess("timesheets", replica_env, log_dir=tmp_path) for _ in range(2))
    try:
        first.start("/readyz")
        second.start("/readyz")
        url = first.url + "/timesheets"
        body = entry("While Redis is up")
        headers = {**caller.headers(ALICE, "POST", url, body=body), "content-type": "application/json"}
        assert (await send(url, "POST", headers, body))[0] == 201
        redis.stop()
        accepted = await fallback_count(first.url, "accepted")
        project = f"While Redis is down {secrets.token_hex(3)}"
        body = entry(project)
        headers = {**caller.headers(ALICE, "POST", url, body=body), "content-type": "application/json"}
        status, created, _ = await send(url, "POST", headers, body)
        assert (status, created.get("project")) == (201, project), created
        assert await fallback_count(first.url, "accepted") == accepted + 1
        before = await refusals(second.url, "replay")
        status, problem, _ = await send(second.url + "/timesheets", "POST", headers, body)
        assert (status, problem["reason"]) == (401, "replay")  # the other replica: the database knew
        assert await refusals(second.url, "replay") == before + 1
        assert await fallback_count(second.url, "replay") >= 1
        read = caller.headers(ALICE, "GET", url + "?limit=100")
        status, page, _ = await send(url + "?limit=100", "GET", read)
        assert status == 200
        assert [item["project"] for item in page["items"]].count(project) == 1  # one entry, not two
        status, problem, _ = await send(url + "?limit=100", "GET", read)  # this replica remembers it
        assert (status, problem["reason"]) == (401, "replay")
        redis.start()
        for _ in range(50):  # back once the guard tries Redis again (REDIS_RETRY_SECONDS)
            body = entry(f"Redis back {secrets.token_hex(3)}")
            headers = {**caller.headers(ALICE, "POST", url, body=body), "content-type": "application/json"}
            status, _, _ = await send(url, "POST", headers, body)
            if status == 201:
                break
            await asyncio.sleep(0.2)
        assert status == 201
    finally:
        first.stop()
        second.stop()
        redis.stop()


async def test_without_redis_and_postgres_writes_wait_and_reads_need_no_shared_memory(
    env: dict[str, str], caller: Caller, tmp_path: Path
) -> None:
    """Both memories unavailable (the database too: nobody listens on its port): an unsafe request is
    refused 503 ``replay_store_unavailable`` with ``Retry-After``, as before the fallback."""
    redis = PrivateRedis().start()
    process = ServiceProcess(
        "timesheets",
        {
            **env,
            "REDIS_URL": redis.url,
            "REDIS_RETRY_SECONDS": "0.5",
            "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        },
        log_dir=tmp_path,
    )
    try:
        process.start("/healthz")  # not ready: its database is away
        redis.stop()
        url = process.url + "/timesheets"
        before = await refusals(process.url, "replay_store_unavailable")
        unavailable = await fallback_count(process.url, "unavailable")
        body = entry("While both are down")
        headers = {**caller.headers(ALICE, "POST", url, body=body), "content-type": "application/json"}
        status, problem, answer = await send(url, "POST", headers, body)
        assert (status, problem["reason"]) == (503, "replay_store_unavailable")
        assert answer["Content-Type"].startswith("application/problem+json")
        assert answer["Retry-After"] == "2"
        assert await refusals(process.url, "replay_store_unavailable") == before + 1
        assert await fallback_count(process.url, "unavailable") == unavailable + 1
    finally:
        process.stop()
        redis.stop()
