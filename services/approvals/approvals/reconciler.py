"""Finishes decisions left ``pending`` by a crash, a timeout or an unreachable timesheets service.

Every replica runs one. Each round leases a batch of decisions that have been pending and untouched
for ``after`` seconds (longer than a live request's own attempts) and drives each through the
idempotent apply step of :mod:`workflow`. A decision the timesheets service cannot be reached for
stays pending and is retried next round; nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from svckit.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable

from . import store
from .metrics import oldest_pending, pending, reconciliations
from .store import DecisionRow
from .workflow import Workflow

log = logging.getLogger("approvals.reconciler")

DB_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class Reconciler:
    def __init__(
        self,
        database: Database,
        workflow: Workflow,
        *,
        interval: float,
        after: float,
        batch: int = 50,
        concurrency: int = 8,
    ) -> None:
        self.database = database
        self.workflow = workflow
        self.interval = interval
        self.after = after
        self.batch = batch
        self.concurrency = concurrency
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="approvals-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> dict[str, int]:
        """One round: returns how many leased decisions ended applied, void, or still pending."""
        async with self.database.transaction() as conn:
            leased = await store.lease_stale(conn, self.after, self.batch)
        counts = {"applied": 0, "void": 0, "retry": 0}
        gate = asyncio.Semaphore(self.concurrency)

        async def one(decision: DecisionRow) -> None:
            async with gate:
                result = await self.workflow.drive(decision, 1, via="reconciler")
            outcome = "retry" if result.state == "pending" else result.state
            counts[outcome] += 1
            reconciliations.labels(outcome).inc()
            log.info(
                "pending decision reconciled",
                extra={"decision_id": str(decision.id), "outcome": outcome, "reason": result.reason},
            )

        # Bounded concurrency: a black-holed peer costs a few timeouts per round, not one per decision.
        await asyncio.gather(*(one(decision) for decision in leased))
        await self.update_metrics()
        return counts

    async def update_metrics(self) -> None:
        async with self.database.connection() as conn:
            stats = await store.pending_stats(conn)
        pending.set(stats.pending)
        oldest_pending.set(max(0.0, stats.oldest))

    async def _run(self) -> None:
        while True:
            try:
                counts = await self.run_once()
                if counts["applied"] + counts["void"] == self.batch:
                    continue  # a full batch settled: more may be waiting
            except DB_ERRORS as exc:
                log.warning("reconciler cannot reach its database", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("reconciler round failed")
            await asyncio.sleep(self.interval)
