"""Finishes decisions left ``pending`` by a crash, a timeout or an unreachable timesheets service.

Every replica runs one. Each round leases a batch of decisions that have been pending and untouched
for ``after`` seconds (longer than a live request's own attempts) and drives each through the
idempotent apply step of :mod:`workflow`. A decision the timesheets service cannot be reached for
stays pending and is retried next round; nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable
from svckit.tasks import PeriodicTask

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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.database = database
        self.workflow = workflow
        self.interval = interval
        self.after = after
        self.batch = batch
        self.concurrency = concurrency
        self.task = PeriodicTask(
            "approvals-reconciler",
            interval,
            self._round,
            clock=clock,
            initial_delay=0,
            expected=DB_ERRORS,
            stop_timeout=1.0,  # every step of a round is idempotent: cancelling one loses nothing
            logger=log,
        )

    def start(self) -> None:
        self.task.start()

    async def stop(self) -> None:
        await self.task.stop()

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

    async def _round(self) -> bool:
        """One round; True when a full batch settled (more may be waiting: run again at once)."""
        counts = await self.run_once()
        return counts["applied"] + counts["void"] == self.batch
