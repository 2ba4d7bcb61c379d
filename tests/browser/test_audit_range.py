"""A trail too long to verify whole on request: the auditor's page verifies it from the newest signed
checkpoint instead, and says so, naming the checkpoint.

"Too long" is made cheaply rather than with the hundreds of thousands of records that outgrow the
default 25 s: only this test's audit service runs with ``AUDIT_VERIFY_TIMEOUT_SECONDS`` 0.3 s (the
platform's audit process is restarted with it, and restarted as it was afterwards: the shared platform
fixture stays as every other browser test has it), and the trail gets 30,000 records (a whole walk of
~1 s per 10,000, far past 0.3 s; the range from the newest checkpoint, signed every second here, is
a few records). Real parts throughout: the platform's processes, Chromium, the SPA's fallback
(``GET /api/audit/verify`` → 422 ``chain_too_long`` → ``?from_checkpoint=latest``).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from playwright.async_api import expect
from svckit.identity import Identity

from devstack.platform import SERVICES, Platform
from testkit.fixtures import pair_signer
from tests.browser.support import NewPage, Shots, sign_in

RECORDS = 30_000
BATCH = 500
TIMESHEETS = Identity.service("timesheets")
AUDIT = next(spec for spec in SERVICES if spec.name == "audit")


async def restart_audit(platform: Platform, extra: Mapping[str, str]) -> None:
    """The platform's audit process stopped and started again with ``extra`` over its environment."""
    process = platform.processes["audit"]
    process.terminate()
    await asyncio.to_thread(process.wait, 25)
    platform.spawn("audit", [sys.executable, "-m", "audit"], {**platform.service_env(AUDIT), **extra})
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            assert platform.processes["audit"].poll() is None, "audit exited on restart (see its log)"
            try:
                async with session.get(f"http://127.0.0.1:{AUDIT.port}/readyz") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "audit not ready after restart"
            await asyncio.sleep(0.3)


@pytest.fixture
async def short_verifications(platform: Platform) -> AsyncIterator[None]:
    await restart_audit(platform, {"AUDIT_VERIFY_TIMEOUT_SECONDS": "0.3"})
    try:
        yield
    finally:
        await restart_audit(platform, {})


def event(n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "timesheets",
        "actor": {
            "issuer": "http://localhost:9000/",
            "subject": "loadgen",
            "kind": "user",
            "client_id": "timesheets-spa",
            "name": "Load Generator",
        },
        "action": "timesheet.created",
        "resource": {"type": "timesheet", "id": str(uuid.uuid4())},
        "outcome": "success",
        "details": {"n": n},
    }


async def lengthen_trail(platform: Platform, count: int) -> None:
    """``count`` records through the audit service's intake, signed as the timesheets service signs."""
    signer = pair_signer(platform.env, "timesheets", "audit")
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, BATCH):
            body = json.dumps({"events": [event(start + n) for n in range(BATCH)]}).encode()
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


async def test_a_trail_too_long_to_verify_whole_is_verified_from_the_newest_checkpoint(
    platform: Platform, short_verifications: None, new_page: NewPage, shot: Shots
) -> None:
    await lengthen_trail(platform, RECORDS)
    for _ in range(60):  # signed every second (AUDIT_CHECKPOINT_INTERVAL_SECONDS=1 on this platform)
        number, head = await newest_checkpoint(platform)
        conn = await asyncpg.connect(platform.env["DATABASE_URL"])
        try:
            signed = await conn.fetchval("SELECT seq FROM audit.checkpoints WHERE number = $1", number)
        finally:
            await conn.close()
        if signed >= head - 10:
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("no checkpoint covered the lengthened trail")

    carol, _ = await new_page()
    await sign_in(carol, shot, "carol")
    await expect(carol.get_by_role("heading", name="Audit trail")).to_be_visible()
    chain = carol.get_by_test_id("chain-status")
    await carol.get_by_role("button", name="Verify again").click()
    ranged = carol.get_by_test_id("chain-range")
    await expect(ranged).to_contain_text("Chain verified from the newest checkpoint.", timeout=30_000)
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
    checked = re.search(r"(\d+) events checked", text)
    assert checked, text
    assert int(checked[1]) < 1000, text  # the range, not the 30,000 records
    await shot(carol, "carol-audit-verified-from-checkpoint")
