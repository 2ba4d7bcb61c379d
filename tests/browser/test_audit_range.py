"""A trail too long to verify whole on request: the auditor's page verifies it from the newest signed
checkpoint instead, and says so, naming the checkpoint.

"Too long" is made cheaply rather than with the hundreds of thousands of records that outgrow the
default 25 s: the trail gets 30,000 records (30,000 more at a time, up to four times, while the two
walks below come out less than 16x apart), and this test times a whole walk and a walk from the
newest checkpoint (a few records) on this machine, then restarts only the platform's audit process
with ``AUDIT_VERIFY_TIMEOUT_SECONDS`` between the two (their geometric mean), and restarts it as it was
afterwards (the shared platform fixture stays as every other browser test has it). A fixed limit made
the test depend on the machine's speed: on a quiet one the whole walk of 30,000 records took less
than the 0.3 s it had been given. Real parts throughout: the platform's processes, Chromium, the SPA's
fallback (``GET /api/audit/verify`` → 422 ``chain_too_long`` → ``?from_checkpoint=latest``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import asyncpg
import pytest
from playwright.async_api import expect
from svckit.identity import Identity

from devstack.platform import SERVICES, Platform
from testkit.auditevents import make_event
from testkit.fixtures import pair_signer, user
from tests.browser.support import NewPage, Shots, sign_in, start_service, stop_service

RECORDS = 30_000
BATCH = 500
TIMESHEETS = Identity.service("timesheets")
AUDITOR = user("carol", "read:audit")
AUDIT = next(spec for spec in SERVICES if spec.name == "audit")


async def restart_audit(platform: Platform, extra: Mapping[str, str]) -> None:
    """The platform's audit process stopped and started again with ``extra`` over its environment."""
    await stop_service(platform, "audit")
    await start_service(platform, "audit", extra)


@pytest.fixture
async def restored_audit(platform: Platform) -> AsyncIterator[None]:
    """The platform's audit process as it was once the test is over (the test restarts it)."""
    try:
        yield
    finally:
        await restart_audit(platform, {})


async def walk_seconds(platform: Platform, query: str) -> float:
    """How long ``GET /audit/verify<query>`` takes, asked directly as an auditor (the best of three)."""
    signer = pair_signer(platform.env, "gateway", "audit")
    target = f"/audit/verify{query}"
    best = float("inf")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            headers = signer.headers(AUDITOR, method="GET", target=target)
            started = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{AUDIT.port}{target}", headers=headers) as reply:
                assert reply.status == 200, await reply.text()
                assert (await reply.json())["ok"] is True
            best = min(best, time.perf_counter() - started)
    return best


def loadgen_event(n: int) -> dict[str, Any]:
    return make_event(subject="loadgen", name="Load Generator", details={"n": n})


async def lengthen_trail(platform: Platform, count: int) -> None:
    """``count`` records through the audit service's intake, signed as the timesheets service signs."""
    signer = pair_signer(platform.env, "timesheets", "audit")
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, BATCH):
            body = json.dumps({"events": [loadgen_event(start + n) for n in range(BATCH)]}).encode()
            headers = signer.headers(TIMESHEETS, method="POST", target="/internal/events", body=body)
            async with session.post(
                f"http://127.0.0.1:{AUDIT.port}/internal/events",
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as reply:
                assert reply.status == 200, await reply.text()


async def newest_checkpoint(platform: Platform) -> tuple[int, int]:
    conn = await asyncpg.connect(platform.env["DATABASE_URL"])
    try:
        row = await conn.fetchrow("SELECT number, seq FROM audit.checkpoints ORDER BY number DESC LIMIT 1")
        head = await conn.fetchval("SELECT max(seq) FROM audit.records")
    finally:
        await conn.close()
    assert row is not None
    assert head is not None
    return int(row["number"]), int(head)


async def checkpoint_covering_the_trail(platform: Platform) -> int:
    """The number of a checkpoint signed at most 10 records behind the trail's head (signed every
    second: AUDIT_CHECKPOINT_INTERVAL_SECONDS=1 on this platform)."""
    for _ in range(60):
        number, head = await newest_checkpoint(platform)
        conn = await asyncpg.connect(platform.env["DATABASE_URL"])
        try:
            signed = await conn.fetchval("SELECT seq FROM audit.checkpoints WHERE number = $1", number)
        finally:
            await conn.close()
        if signed >= head - 10:
            return number
        await asyncio.sleep(0.5)
    pytest.fail("no checkpoint covered the lengthened trail")


async def test_a_trail_too_long_to_verify_whole_is_verified_from_the_newest_checkpoint(
    platform: Platform, restored_audit: None, new_page: NewPage, shot: Shots
) -> None:
    # The limit must fall well between the two walks (4x either side). A whole walk of RECORDS is
    # ~0.3 s and one from the newest checkpoint ~0.02 s, mostly fixed cost; on a busy machine the two
    # came out 15x apart once, so the trail grows by RECORDS more until they are 16x apart.
    for _ in range(4):
        await lengthen_trail(platform, RECORDS)
        number = await checkpoint_covering_the_trail(platform)
        whole, ranged_walk = (
            await walk_seconds(platform, ""),
            await walk_seconds(platform, "?from_checkpoint=latest"),
        )
        if whole > 16 * ranged_walk:
            break
        print(f"whole walk {whole:.3f} s, ranged {ranged_walk:.4f} s: not 16x apart, lengthening the trail")
    else:
        pytest.fail(f"a whole walk ({whole:.3f} s) stays within 16x of a ranged one ({ranged_walk:.3f} s)")
    limit = (whole * ranged_walk) ** 0.5  # at least 4x either side of both
    print(f"whole walk {whole:.3f} s, from the newest checkpoint {ranged_walk:.4f} s: limit {limit:.3f} s")
    await restart_audit(platform, {"AUDIT_VERIFY_TIMEOUT_SECONDS": f"{limit:.4f}"})

    carol, _ = await new_page()
    await sign_in(carol, shot, "carol")
    await expect(carol.get_by_role("heading", name="Audit trail")).to_be_visible()
    chain = carol.get_by_test_id("chain-status")
    ranged = carol.get_by_test_id("chain-range")
    # The walk from the newest checkpoint is mostly fixed cost, and a load spike on the CI host once
    # stretched it past the limit measured minutes before ("took longer than 0.0275 s"): as a user
    # would, press Verify again; a whole walk is 4x over the limit and never passes this way.
    for attempt in range(3):
        await carol.get_by_role("button", name="Verify again").click()
        try:
            await expect(ranged).to_contain_text("Chain verified from the newest checkpoint.", timeout=30_000)
            break
        except AssertionError:
            if attempt == 2 or "took longer than" not in await chain.inner_text():
                raise
    await expect(chain).to_have_attribute("data-ok", "true")
    text = await ranged.inner_text()
    found = re.search(r"From checkpoint #(\d+) \(event (\d+), signed .* with key \S+\) to the newest", text)
    assert found, text
    shown, seq = int(found[1]), int(found[2])
    # the newest checkpoint when the page verified: at least the one that covered the trail above, and
    # the database's checkpoint of that number signs the event the page names
    assert shown >= number, (shown, number)
    conn = await asyncpg.connect(platform.env["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT seq FROM audit.checkpoints WHERE number = $1", shown) == seq
    finally:
        await conn.close()
    checked = re.search(r"(\d+) events? checked", text)
    assert checked, text
    assert int(checked[1]) < 1000, text  # the range, not the trail's tens of thousands of records
    await shot(carol, "carol-audit-verified-from-checkpoint")
