"""Write load through the gateway, as a careful client writes: every create carries an
``Idempotency-Key`` and is retried with the same key after a 502/503/504 or a broken connection, until
it is acknowledged (201), and after a 429 once its ``Retry-After`` has passed (the user's requests in
flight at the limit: tests/faults/test_frozen_service.py); decisions (idempotent by nature) are retried
the same way. What the clients
saw is counted per attempt, and :func:`check_invariants` compares what was acknowledged with what the
database holds: no acknowledged write lost, none stored twice, every change on the audit trail once.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

RETRY = {502, 503, 504}
PROJECT = "Fault load"


@dataclass
class LoadReport:
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    acked: dict[str, str] = field(default_factory=dict)  # tag → entry id
    decided: set[str] = field(default_factory=set)  # entry ids whose approval was acknowledged
    successes: list[float] = field(default_factory=list)  # monotonic times of acknowledged writes
    failures: list[float] = field(default_factory=list)  # monotonic times of failed attempts
    unresolved: list[str] = field(default_factory=list)  # gave up retrying (deadline)
    unexpected: list[str] = field(default_factory=list)
    #: the longest attempt per outcome, in seconds (a hung backend must not hang its clients)
    longest: dict[str, float] = field(default_factory=dict)
    #: every attempt: (monotonic start, monotonic end, "METHOD outcome")
    timings: list[tuple[float, float, str]] = field(default_factory=list)
    #: the problem documents' ``reason`` per failed attempt: "METHOD status reason" (none: "-")
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def first_success_after(self, moment: float) -> float | None:
        later = [t for t in self.successes if t > moment]
        return min(later) - moment if later else None

    def errors_for(self, start: float, end: float) -> float:
        """How long after ``start`` clients still saw failures (0: none at all)."""
        seen = [t for t in self.failures if start <= t <= end]
        return max(seen) - start if seen else 0.0

    def failed_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.failures if start <= t <= end)

    @property
    def server_errors(self) -> int:
        """Attempts answered with a 5xx that is not 'retry later' (a 500 above all): must be 0."""
        total = 0
        for outcome, count in self.attempts.items():
            status = outcome.rsplit(" ", 1)[-1]
            if status.isdigit() and int(status) >= 500 and int(status) not in RETRY:
                total += count
        return total


#: how many days one load may fill (20 writes a day: 20,000 writes), and where the first load's begin
DAYS_PER_LOAD = 1000
FIRST_LOAD_DAY = dt.date(2040, 1, 1)


_next_day = FIRST_LOAD_DAY


def reserve_days(count: int) -> dt.date:
    """The first of ``count`` days that nothing else in this process writes the same person's entries
    on (a person's day holds at most 24 hours): each load takes :data:`DAYS_PER_LOAD`, and so must
    anything else that writes on the same stack in the same years (the fault matrix)."""
    global _next_day
    first = _next_day
    _next_day += dt.timedelta(days=count)
    return first


class WriteLoad:
    """``writers`` creating entries back to back, and one approver deciding every third of them."""

    def __init__(
        self,
        api: str,
        employee: dict[str, str],
        approver: dict[str, str] | None,
        *,
        writers: int = 6,
        give_up_after: float = 60.0,
    ) -> None:
        self.api = api
        self.employee = employee
        self.approver = approver
        self.writers = writers
        self.give_up_after = give_up_after
        self.report = LoadReport()
        self._stopping = False
        # Days of its own (a person's day holds at most 24 hours): other tests on the same platform
        # write the same person's entries on dates of their own, and so does an earlier load.
        self._first_day = reserve_days(DAYS_PER_LOAD)
        self._to_decide: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WriteLoad:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=20), connector=aiohttp.TCPConnector(limit=64)
        )
        self._tasks = [asyncio.ensure_future(self._writer(n)) for n in range(self.writers)]
        if self.approver is not None:
            self._tasks.append(asyncio.ensure_future(self._approve()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> LoadReport:
        """Let each client finish the write it is on (retrying until acknowledged), then stop."""
        self._stopping = True
        if self._tasks:
            await asyncio.gather(*self._tasks)
            self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        return self.report

    async def _send(self, method: str, url: str, headers: dict[str, str], body: Any) -> tuple[str, Any]:
        assert self._session is not None
        started = time.monotonic()
        try:
            async with self._session.request(method, url, headers=headers, json=body) as response:
                payload = await response.json(content_type=None) if response.status != 204 else None
                outcome = str(response.status)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            outcome, payload = f"connection:{type(exc).__name__}", None
        ended = time.monotonic()
        took = round(ended - started, 2)
        key = f"{method} {outcome}"
        if outcome.isdigit() and int(outcome) >= 400:
            reason = payload.get("reason") if isinstance(payload, dict) else None
            self.report.reasons[f"{key} {reason or '-'}"] += 1
        self.report.timings.append((started, ended, key))
        self.report.longest[key] = max(self.report.longest.get(key, 0.0), took)
        return outcome, payload

    async def _writer(self, index: int) -> None:
        sequence = 0
        while not self._stopping:
            sequence += 1
            tag = f"w{index}-{sequence}-{uuid.uuid4().hex[:8]}"
            headers = {**self.employee, "Idempotency-Key": str(uuid.uuid4())}
            # A day for every 20 writes, from this load's own days on.
            day = self._first_day + dt.timedelta(days=(sequence * self.writers + index) // 20)
            body = {"date": day.isoformat(), "project": PROJECT, "hours": 1, "notes": tag}
            deadline = time.monotonic() + self.give_up_after
            while True:
                outcome, payload = await self._send("POST", f"{self.api}/timesheets", headers, body)
                self.report.attempts[outcome] += 1
                now = time.monotonic()
                if outcome == "201":
                    self.report.acked[tag] = payload["id"]
                    self.report.successes.append(now)
                    if self.approver is not None and sequence % 3 == 0:
                        self._to_decide.put_nowait(payload["id"])
                    break
                self.report.failures.append(now)
                if outcome == "429" and now <= deadline:  # the user's requests in flight at the limit
                    await asyncio.sleep(1.0)  # its Retry-After
                    continue
                if not (outcome.startswith("connection:") or int(outcome) in RETRY):
                    self.report.unexpected.append(f"create {outcome}: {str(payload)[:200]}")
                    break
                if now > deadline:
                    self.report.unresolved.append(tag)
                    break
                await asyncio.sleep(0.1)

    async def _approve(self) -> None:
        assert self.approver is not None
        while not self._stopping:  # decisions queued but never tried are simply dropped at the end
            try:
                entry_id = await asyncio.wait_for(self._to_decide.get(), 0.2)
            except TimeoutError:
                continue
            deadline = time.monotonic() + self.give_up_after
            while True:
                outcome, payload = await self._send(
                    "PUT", f"{self.api}/approvals/{entry_id}", self.approver, {"decision": "approved"}
                )
                self.report.attempts[f"decision {outcome}"] += 1
                if outcome != "200":
                    self.report.failures.append(time.monotonic())
                if outcome == "200" or (
                    outcome == "409" and ((payload or {}).get("decision") or {}).get("state") == "applied"
                ):
                    self.report.decided.add(entry_id)  # a 409 after a lost answer: applied earlier
                    break
                if outcome == "429" and time.monotonic() <= deadline:  # the user's requests in flight
                    await asyncio.sleep(1.0)  # at the limit: its Retry-After
                    continue
                if not (outcome.startswith("connection:") or int(outcome) in RETRY):
                    self.report.unexpected.append(f"decision {outcome}: {str(payload)[:200]}")
                    break
                if time.monotonic() > deadline:
                    self.report.unresolved.append(f"decision {entry_id}")
                    break
                await asyncio.sleep(0.1)


async def wait_for_outboxes(conn: asyncpg.Connection, timeout: float = 30.0) -> float:
    """Seconds until both outboxes are empty and no decision is pending (every event delivered)."""
    started = time.monotonic()
    while True:
        pending = await conn.fetchval(
            """SELECT (SELECT count(*) FROM timesheets.outbox) + (SELECT count(*) FROM approvals.outbox)
                    + (SELECT count(*) FROM approvals.decisions WHERE state = 'pending')"""
        )
        if pending == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{pending} events or decisions still pending"
        await asyncio.sleep(0.2)


async def check_invariants(conn: asyncpg.Connection, report: LoadReport) -> dict[str, int]:
    """What was acknowledged is stored, once, with its audit records; returns the counts."""
    rows = await conn.fetch(
        "SELECT id::text, notes FROM timesheets.entries WHERE project = $1 AND notes = ANY($2::text[])",
        PROJECT,
        list(report.acked),
    )
    stored = {row["notes"]: row["id"] for row in rows}
    lost = [tag for tag, entry_id in report.acked.items() if stored.get(tag) != entry_id]
    duplicates = await conn.fetchval(
        """SELECT count(*) FROM (SELECT notes FROM timesheets.entries WHERE project = $1
                                 GROUP BY notes HAVING count(*) > 1) AS twice""",
        PROJECT,
    )
    # Every entry of the load that exists (acknowledged or not: a write may commit and lose its
    # answer) has exactly one 'created' record; every applied decision one record on each side.
    missing_created = await conn.fetchval(
        """SELECT count(*) FROM timesheets.entries e WHERE e.project = $1 AND 1 <>
               (SELECT count(*) FROM audit.records r
                WHERE r.action = 'timesheet.created' AND r.resource_id = e.id::text)""",
        PROJECT,
    )
    missing_decided = await conn.fetchval(
        """SELECT count(*) FROM approvals.decisions d WHERE d.state = 'applied' AND (
               1 <> (SELECT count(*) FROM audit.records r WHERE r.action = 'timesheet.decided'
                     AND r.resource_id = d.entry_id::text)
            OR 1 <> (SELECT count(*) FROM audit.records r WHERE r.action = 'approval.decided'
                     AND r.outcome = 'success' AND r.resource_id = d.entry_id::text))"""
    )
    unapplied = await conn.fetchval(
        """SELECT count(*) FROM timesheets.entries e
           LEFT JOIN approvals.decisions d ON d.entry_id = e.id AND d.state = 'applied'
           WHERE e.id = ANY($1::uuid[]) AND (e.status <> 'approved' OR d.id IS NULL)""",
        list(report.decided),
    )
    return {
        "acknowledged": len(report.acked),
        "decisions_acknowledged": len(report.decided),
        "lost": len(lost),
        "duplicates": int(duplicates),
        "entries_without_one_audit_record": int(missing_created),
        "decisions_without_audit_records": int(missing_decided),
        "acknowledged_decisions_not_applied": int(unapplied),
    }


async def settled(dsn: str, report: LoadReport) -> tuple[float, dict[str, int]]:
    """After the load, on a connection of its own: the seconds until every event was delivered
    (:func:`wait_for_outboxes`), and what the acknowledgements left stored (:func:`check_invariants`)."""
    conn = await asyncpg.connect(dsn)
    try:
        drained = await wait_for_outboxes(conn)
        return drained, await check_invariants(conn, report)
    finally:
        await conn.close()


#: what :func:`check_invariants` counts that a fault may never leave above 0
NEVER = (
    "lost",
    "duplicates",
    "entries_without_one_audit_record",
    "decisions_without_audit_records",
    "acknowledged_decisions_not_applied",
)


def assert_stored_once(counts: dict[str, int]) -> None:
    """Every acknowledged write stored once with its audit records, every acknowledged decision
    applied and audited on both sides."""
    assert all(counts[name] == 0 for name in NEVER), counts
