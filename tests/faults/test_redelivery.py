"""An audit service that answers later than the relays wait: the relay gives up on a batch the audit
service has received all the same (waiting on a lock while it is slow), and sends the same events
again. The audit service then holds the batch twice in its intake: the one given up on, stored once it
is processed, and the resend. A *frozen* audit service finds the batch given up on in its socket
buffer with the relay's FIN behind it, and drops it unprocessed (svckit.abandoned: the relay closed
the connection when it gave up); before, it stored it late and the resend was a duplicate.

What must hold (docs/runbook.md, "An audit service slower than the relays' delivery timeout"):
every event on the trail exactly once (also when the resend is a batch overlapping the one given
up on: events committed meanwhile join it) (one record, one chain entry per event id), none lost; the
outbox rows deleted once (``outbox_delivered_total`` counts each event once); the receipt the
producer keeps names the record the trail holds (``outbox_audit_receipt_mismatch`` 0, no
``TimesheetsOutboxAuditReceiptMismatch``); ``/audit/verify`` finds the chain intact; no traceback.
The resend is proved to have happened: ``audit_events_duplicates_total`` counts it (without the
audit service's deduplication by event id the same figures show each event recorded twice).

The relay of the stack's timesheets service is restarted with a short ``OUTBOX_REQUEST_TIMEOUT_SECONDS``
(1.5 s instead of 10) to keep the case within seconds.

The gateway's denial feed (``gateway.denials``: no outbox, a queue in memory) is held to the same:
restarted with ``AUDIT_REQUEST_TIMEOUT_SECONDS`` 1.5, its 403s (one record each, named by the request
id the test sends) are each on the trail once after the audit service was frozen or slow past that
timeout, none dropped, and the give-up is proved to have happened (the feed's failed runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import asyncpg
import pytest
from svckit.identity import Identity
from svckit.outbox import enqueue

from testkit.fixtures import ServiceProcess, scrape
from tests.audit.support import created_events

from .conftest import Figures, Stack
from .test_frozen_service import log_faults, log_offsets

pytestmark = pytest.mark.timeout(150)

#: the relay's delivery timeout here (OUTBOX_REQUEST_TIMEOUT_SECONDS; 10 by default)
RELAY_TIMEOUT = 1.5
#: events in flight when the audit service stops answering (one batch: below the relay's 200)
EVENTS = 40
#: events committed after the relay gave up, while the audit service is still frozen: the resend is a
#: batch overlapping the one given up on (its 40 and these)
LATER = 20


@contextlib.asynccontextmanager
async def restarted(service: ServiceProcess, **env: str) -> AsyncIterator[ServiceProcess]:
    """``service`` restarted with ``env`` on top of its own, and restarted as it was afterwards."""
    before = dict(service.env)
    service.env.update(env)
    await asyncio.to_thread(service.stop, 10)
    try:
        await asyncio.to_thread(service.start, "/readyz", 60)
        yield service
    finally:
        service.env = before
        await asyncio.to_thread(service.stop, 10)
        await asyncio.to_thread(service.start, "/readyz", 60)


def counter(text: str, name: str, **labels: str) -> float:
    """A counter summed over its series in an exposition that carry ``labels`` (none: every series,
    labelled or not; 0: not there yet)."""
    total = 0.0
    for found in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        if all(f'{key}="{value}"' in (found.group(1) or "") for key, value in labels.items()):
            total += float(found.group(2))
    return total


async def figures_now(stack: Stack) -> dict[str, float]:
    audit, timesheets = await asyncio.gather(scrape(stack.audit.url), scrape(stack.timesheets.url))
    return {
        "duplicates": counter(audit, "audit_events_duplicates_total", source="timesheets"),
        "delivered": counter(timesheets, "outbox_delivered_total", service="timesheets"),
        "failures": counter(timesheets, "outbox_delivery_failures_total", service="timesheets"),
        "mismatch": counter(timesheets, "outbox_audit_receipt_mismatch", service="timesheets"),
        "abandoned": counter(audit, "http_requests_abandoned_total"),
    }


async def enqueue_events(stack: Stack, count: int) -> list[uuid.UUID]:
    """``count`` events committed to the timesheets outbox at once (as its writes do), relayed at once."""
    events = created_events(Identity.service("timesheets"), count)
    conn = await asyncpg.connect(stack.dsn, server_settings={"search_path": "timesheets"})
    try:
        async with conn.transaction():
            for event in events:
                await enqueue(conn, event)
    finally:
        await conn.close()
    return [event.id for event in events]


async def wait_for(
    conn: asyncpg.Connection, query: str, ids: Sequence[uuid.UUID | str], want: int, timeout: float
) -> float:
    """Seconds until ``query`` (over ``ids``) answers ``want``."""
    started = time.monotonic()
    while (got := await conn.fetchval(query, ids)) != want:
        assert time.monotonic() - started < timeout, f"{query!r}: {got}, not {want}, after {timeout} s"
        await asyncio.sleep(0.05)
    return round(time.monotonic() - started, 2)


GIVEN_UP = "SELECT count(*) FROM timesheets.outbox WHERE id = ANY($1::uuid[]) AND attempts >= 1"
PENDING = "SELECT count(*) FROM timesheets.outbox WHERE id = ANY($1::uuid[])"


async def relaying(stack: Stack) -> None:
    """Until the (restarted) timesheets relay delivers: one event through. Its first pass checks its
    receipt at the audit service before any delivery (svckit.outbox), and a relay that met a frozen
    audit service there never sent the batch the test waits for (a CI run: 0 of 40 attempted in 11 s)."""
    conn = await stack.db()
    try:
        await wait_for(conn, PENDING, await enqueue_events(stack, 1), 0, 30)
    finally:
        await conn.close()


async def trail_check(stack: Stack, ids: list[uuid.UUID], before: dict[str, float]) -> dict[str, Any]:
    """What the trail, the outbox and the metrics say about ``ids`` once delivered."""
    conn = await stack.db()
    try:
        per_id = await conn.fetch(
            "SELECT id, count(*) AS records FROM audit.records WHERE id = ANY($1::uuid[]) GROUP BY id", ids
        )
        receipt = await conn.fetchrow("SELECT event_id, seq, hash FROM timesheets.outbox_receipt")
        held = await conn.fetchrow(
            "SELECT seq, hash FROM audit.records WHERE id = $1", receipt["event_id"] if receipt else None
        )
    finally:
        await conn.close()
    after = await figures_now(stack)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{stack.api}/audit/verify", headers=stack.headers("carol")) as response,
    ):
        verification = await response.json()
        verify_status = response.status
    return {
        "events": len(ids),
        "recorded": len(per_id),
        "lost": len(ids) - len(per_id),
        "recorded_twice": sum(1 for row in per_id if row["records"] > 1),
        "delivered_counted": after["delivered"] - before["delivered"],
        "resent_as_duplicates": after["duplicates"] - before["duplicates"],
        "failed_posts": after["failures"] - before["failures"],
        "dropped_by_audit": after["abandoned"] - before["abandoned"],
        "receipt_mismatch": after["mismatch"],
        "receipt_matches_trail": held is not None
        and receipt is not None
        and (held["seq"], held["hash"]) == (receipt["seq"], receipt["hash"]),
        "verify": (verify_status, verification.get("ok", verification.get("valid"))),
        "verification": verification,
    }


def failures_of(result: dict[str, Any], *, resent: bool = True) -> list[str]:
    """What is wrong with a case's result. ``resent``: the batch given up on was stored all the same
    and the resend met it (a slow audit service); else it was dropped unprocessed (a frozen one)."""
    failures = []
    events = result["events"]
    if result["lost"] or result["recorded_twice"]:
        failures.append(f"{result['lost']} lost, {result['recorded_twice']} recorded twice of {events}")
    if result["delivered_counted"] != events:
        failures.append(f"outbox_delivered_total counted {result['delivered_counted']}, not {events}")
    if result["receipt_mismatch"] or not result["receipt_matches_trail"]:
        failures.append(
            f"receipt: mismatch {result['receipt_mismatch']}, matches {result['receipt_matches_trail']}"
        )
    status, ok = result["verify"]
    if status != 200 or ok is False:
        failures.append(f"/audit/verify: {status} {result['verification']}")
    if result["failed_posts"] < 1:
        failures.append("the relay never gave up on a batch: the case did not happen")
    elif resent and result["resent_as_duplicates"] < EVENTS:
        # the case happened: the relay gave up and sent again what the audit service had stored
        failures.append(f"no redelivery reproduced: {result['resent_as_duplicates']} duplicates")
    elif not resent and (result["dropped_by_audit"] < 1 or result["resent_as_duplicates"]):
        # what the relay gave up on was left unprocessed by the resumed service, not stored late
        failures.append(
            f"the batch given up on was not dropped: {result['dropped_by_audit']} requests dropped,"
            f" {result['resent_as_duplicates']} duplicates"
        )
    return failures


def recorded_once(
    figures: Figures,
    case: str,
    result: dict[str, Any],
    faults: list[str],
    failures: list[str],
    **values: float,
) -> None:
    """The case's figures recorded, then no failure (``failures``: what is wrong with ``result``, every
    event on the trail once among it) and no fault in a log."""
    figures.record(
        case, **values, **{k: v for k, v in result.items() if k != "verification"}, log_faults=faults[:5]
    )
    assert failures == [], result
    assert faults == []


class Held:
    """How long a fault was held (set when it ends)."""

    seconds = 0.0


@contextlib.asynccontextmanager
async def audit_frozen(stack: Stack) -> AsyncIterator[Held]:
    """The audit service stopped (SIGSTOP) until the block ends: it answers nothing, its sockets fill."""
    audit = stack.audit.process
    assert audit is not None
    held, started = Held(), time.monotonic()
    audit.send_signal(signal.SIGSTOP)
    try:
        yield held
    finally:
        audit.send_signal(signal.SIGCONT)
        held.seconds = round(time.monotonic() - started, 2)


@contextlib.asynccontextmanager
async def records_locked(stack: Stack) -> AsyncIterator[Held]:
    """``audit.records`` locked in SHARE MODE until the block ends: reads go on, appends wait."""
    locker = await stack.db()
    try:
        transaction = locker.transaction()
        await transaction.start()
        held, started = Held(), time.monotonic()
        try:
            await locker.execute("LOCK TABLE audit.records IN SHARE MODE")
            yield held
        finally:
            await transaction.rollback()
            held.seconds = round(time.monotonic() - started, 2)
    finally:
        await locker.close()


async def test_a_batch_given_up_on_while_audit_is_frozen_is_dropped_and_recorded_once(
    stack: Stack, figures: Figures
) -> None:
    await stack.ensure_up()
    async with restarted(stack.timesheets, OUTBOX_REQUEST_TIMEOUT_SECONDS=str(RELAY_TIMEOUT)):
        await relaying(stack)
        processes = {"audit": stack.audit, "timesheets": stack.timesheets}
        offsets = log_offsets(processes)
        before = await figures_now(stack)
        conn = await stack.db()
        try:
            async with audit_frozen(stack) as frozen:
                ids = await enqueue_events(stack, EVENTS)
                # the relay sent them (the kernel took the bytes) and gave up after its timeout
                given_up_after = await wait_for(conn, GIVEN_UP, ids, EVENTS, 4 * RELAY_TIMEOUT + 5)
                ids += await enqueue_events(stack, LATER)  # the resend overlaps the batch given up on
                await asyncio.sleep(RELAY_TIMEOUT)  # the relay tries again meanwhile (receipt checks)
            drained_after = await wait_for(conn, PENDING, ids, 0, 20)
        finally:
            await conn.close()
        result = await trail_check(stack, ids, before)
        faults = log_faults(processes, offsets)
    recorded_once(
        figures,
        "audit frozen past the relay timeout (the batch given up on dropped)",
        result,
        faults,
        failures_of(result, resent=False),
        relay_timeout_s=RELAY_TIMEOUT,
        given_up_after_s=given_up_after,
        frozen_for_s=frozen.seconds,
        drained_after_sigcont_s=drained_after,
    )


async def test_a_batch_given_up_on_while_audit_waits_on_a_lock_is_recorded_once(
    stack: Stack, figures: Figures
) -> None:
    await stack.ensure_up()
    # the audit service waits on a lock longer than the relay waits for its answer (but not as long as
    # its own lock bound: the statement completes, late)
    async with (
        restarted(stack.audit, DB_LOCK_TIMEOUT_SECONDS="6", DB_STATEMENT_TIMEOUT_SECONDS="8"),
        restarted(stack.timesheets, OUTBOX_REQUEST_TIMEOUT_SECONDS=str(RELAY_TIMEOUT)),
    ):
        await relaying(stack)
        processes = {"audit": stack.audit, "timesheets": stack.timesheets}
        offsets = log_offsets(processes)
        before = await figures_now(stack)
        conn = await stack.db()
        try:
            async with records_locked(stack) as locked:
                ids = await enqueue_events(stack, EVENTS)
                given_up_after = await wait_for(conn, GIVEN_UP, ids, EVENTS, 4 * RELAY_TIMEOUT + 3)
            drained_after = await wait_for(conn, PENDING, ids, 0, 20)
        finally:
            await conn.close()
        result = await trail_check(stack, ids, before)
        faults = log_faults(processes, offsets)
    recorded_once(
        figures,
        "audit slow past the relay timeout (redelivery)",
        result,
        faults,
        failures_of(result, resent=True),
        relay_timeout_s=RELAY_TIMEOUT,
        given_up_after_s=given_up_after,
        locked_for_s=locked.seconds,
        drained_after_unlock_s=drained_after,
    )


# ---- the gateway's denial feed: its own queue, the same ingest -------------------------------------

#: the gateway's delivery timeout here (AUDIT_REQUEST_TIMEOUT_SECONDS; 10 by default)
FEED_TIMEOUT = 1.5
#: how soon the gateway must have given up on the batch: its flush interval (0.5 s), the timeout and
#: slack for a loaded host, well below the default 10 s (a gateway that ignored the setting fails)
GIVE_UP_WITHIN = FEED_TIMEOUT + 5
DENIED = (
    "SELECT count(DISTINCT request_id) FROM audit.records"
    " WHERE source = 'gateway' AND action = 'access.denied' AND request_id = ANY($1::text[])"
)


async def feed_figures(stack: Stack, *, audit: bool = True) -> dict[str, float]:
    """The feed's counters; ``audit=False``: the gateway's alone (a frozen audit service answers no
    scrape)."""
    gateway = await scrape(stack.gateway.url)
    figures = {
        "given_up": counter(
            gateway, "background_task_runs_total", task="gateway-denial-flush", outcome="error"
        ),
        "dropped": counter(gateway, "gateway_audit_dropped_total"),
    }
    if audit:
        text = await scrape(stack.audit.url)
        figures["duplicates"] = counter(text, "audit_events_duplicates_total", source="gateway")
        figures["abandoned"] = counter(text, "http_requests_abandoned_total")
    return figures


async def deny(stack: Stack, count: int) -> list[str]:
    """``count`` requests refused 403 at the gateway (alice lacks ``read:audit``): one denial record
    each, named by the request id the test sent."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    async with aiohttp.ClientSession() as http:

        async def one(request_id: str) -> int:
            headers = {**stack.headers("alice"), "X-Request-Id": request_id}
            async with http.get(f"{stack.api}/audit/verify", headers=headers) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(request_id) for request_id in ids))
    assert set(statuses) == {403}, statuses
    return ids


async def wait_for_figure(stack: Stack, name: str, above: float, timeout: float) -> float:
    """Seconds until the feed's figure ``name`` exceeds ``above``."""
    started = time.monotonic()
    while (await feed_figures(stack, audit=name != "given_up"))[name] <= above:
        assert time.monotonic() - started < timeout, f"{name} not above {above} after {timeout} s"
        await asyncio.sleep(0.1)
    return round(time.monotonic() - started, 2)


async def feeding(stack: Stack, conn: asyncpg.Connection) -> None:
    """Until the (restarted) gateway's feed delivers: one denial on the trail."""
    ids = await deny(stack, 1)
    await wait_for(conn, DENIED, ids, 1, 30)


async def feed_check(
    stack: Stack, conn: asyncpg.Connection, ids: list[str], before: dict[str, float]
) -> dict[str, Any]:
    per_id = await conn.fetch(
        "SELECT request_id, count(*) AS records FROM audit.records"
        " WHERE source = 'gateway' AND action = 'access.denied' AND request_id = ANY($1::text[])"
        " GROUP BY request_id",
        ids,
    )
    after = await feed_figures(stack)
    return {
        "events": len(ids),
        "recorded": len(per_id),
        "lost": len(ids) - len(per_id),
        "recorded_twice": sum(1 for row in per_id if row["records"] > 1),
        **{name: after[name] - before[name] for name in ("given_up", "dropped", "duplicates", "abandoned")},
    }


def feed_failures(result: dict[str, Any], *, resent: bool) -> list[str]:
    failures = []
    if result["lost"] or result["recorded_twice"]:
        failures.append(
            f"{result['lost']} lost, {result['recorded_twice']} recorded twice of {result['events']}"
        )
    if result["dropped"]:
        failures.append(f"the gateway dropped {result['dropped']} denial records")
    if result["given_up"] < 1:
        failures.append("the gateway never gave up on a batch: the case did not happen")
    elif resent and result["duplicates"] < EVENTS:
        failures.append(f"no redelivery reproduced: {result['duplicates']} duplicates")
    return failures


async def test_denials_the_gateway_gave_up_on_while_audit_is_frozen_are_recorded_once(
    stack: Stack, figures: Figures
) -> None:
    await stack.ensure_up()
    async with restarted(stack.gateway, AUDIT_REQUEST_TIMEOUT_SECONDS=str(FEED_TIMEOUT)):
        conn = await stack.db()
        try:
            await feeding(stack, conn)
            processes = {"audit": stack.audit, "gateway": stack.gateway}
            offsets = log_offsets(processes)
            before = await feed_figures(stack)
            async with audit_frozen(stack) as frozen:
                ids = await deny(stack, EVENTS)
                given_up_after = await wait_for_figure(stack, "given_up", before["given_up"], GIVE_UP_WITHIN)
                ids += await deny(stack, LATER)  # queued behind the batch given up on
                await asyncio.sleep(FEED_TIMEOUT)  # the feed tries again meanwhile
            drained_after = await wait_for(conn, DENIED, ids, len(ids), 40)
            result = await feed_check(stack, conn, ids, before)
        finally:
            await conn.close()
        faults = log_faults(processes, offsets)
    recorded_once(
        figures,
        "gateway's denial feed, audit frozen past its timeout",
        result,
        faults,
        feed_failures(result, resent=False),
        feed_timeout_s=FEED_TIMEOUT,
        given_up_after_s=given_up_after,
        frozen_for_s=frozen.seconds,
        drained_after_sigcont_s=drained_after,
    )


async def test_denials_the_gateway_gave_up_on_while_audit_waits_on_a_lock_are_recorded_once(
    stack: Stack, figures: Figures
) -> None:
    await stack.ensure_up()
    async with (
        restarted(stack.audit, DB_LOCK_TIMEOUT_SECONDS="6", DB_STATEMENT_TIMEOUT_SECONDS="8"),
        restarted(stack.gateway, AUDIT_REQUEST_TIMEOUT_SECONDS=str(FEED_TIMEOUT)),
    ):
        conn = await stack.db()
        try:
            await feeding(stack, conn)
            processes = {"audit": stack.audit, "gateway": stack.gateway}
            offsets = log_offsets(processes)
            before = await feed_figures(stack)
            async with records_locked(stack) as locked:
                ids = await deny(stack, EVENTS)
                given_up_after = await wait_for_figure(stack, "given_up", before["given_up"], GIVE_UP_WITHIN)
            drained_after = await wait_for(conn, DENIED, ids, EVENTS, 40)
            # the resend is answered after the batch given up on is stored: its events acknowledged
            # as duplicates (counted once the answer is in)
            with contextlib.suppress(AssertionError):
                await wait_for_figure(stack, "duplicates", before["duplicates"] + EVENTS - 1, 20)
            result = await feed_check(stack, conn, ids, before)
        finally:
            await conn.close()
        faults = log_faults(processes, offsets)
    recorded_once(
        figures,
        "gateway's denial feed, audit slow past its timeout (redelivery)",
        result,
        faults,
        feed_failures(result, resent=True),
        feed_timeout_s=FEED_TIMEOUT,
        given_up_after_s=given_up_after,
        locked_for_s=locked.seconds,
        drained_after_unlock_s=drained_after,
    )
