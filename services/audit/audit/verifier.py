"""Background verification of the chain, so that ``audit_chain_ok`` is current for alerting."""

from __future__ import annotations

import logging
import random
import time

from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.contracts.audit import Anchor
from svckit.db import UNAVAILABLE_ERRORS, DatabaseUnavailable
from svckit.tasks import PeriodicTask

from . import metrics
from .checkpoints import PublicKeys
from .keygrace import UnknownKeyGrace
from .store import AuditStore, Verification
from .trail import CheckpointTrail, TrailState
from .watermark import TrailWatermark

log = logging.getLogger("audit.verifier")

UNREACHABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)


class BackgroundVerifier:
    """Keeps ``audit_chain_ok`` current: cheap incremental walks, a full walk now and then.

    An incremental run starts at the head the previous run verified (which must still be there,
    unchanged) and recomputes only what was appended since; a full run walks from seq 1 and so also
    catches tampering with older records. A broken chain is logged as an error and forces the next
    run to be a full one.

    After each run it checks the trail's watermark in Redis (:mod:`audit.watermark`): a restored
    trail verifies, and only the watermark says that it lost signed records. That keeps
    ``audit_trail_rolled_back`` current on the replicas that do not sign.

    The newest checkpoints signed by a key this replica was not given (a newer pod's, while the
    Deployment rolls a key rotation) are not yet a broken chain: for the grace of
    :mod:`audit.keygrace` they are left unchecked, with a warning, and looked at again by every run
    (the trail does not move past them); past it they are reported like a forged checkpoint.
    """

    def __init__(
        self,
        store: AuditStore,
        interval: float,
        full_interval: float,
        keys: PublicKeys | None = None,
        clock: Clock = SYSTEM_CLOCK,
        watermark: TrailWatermark | None = None,
    ) -> None:
        self.store = store
        self.watermark = watermark
        self.grace = UnknownKeyGrace(clock, since=metrics.unknown_key_since.labels("audit-verifier"))
        self.interval = interval
        self.full_interval = full_interval
        self.keys = keys
        self.head: Anchor | None = None
        self.trail_state = TrailState()  # where the checkpoints verified so far end
        self.last_full = -float("inf")

    async def run_once(self) -> Verification:
        now = time.monotonic()
        full = self.head is None or now - self.last_full >= self.full_interval
        trail = None
        if self.keys is not None:  # an incremental run goes on from the checkpoints verified before
            state = TrailState() if full else self.trail_state
            trail = CheckpointTrail(self.keys, state=state, tolerate=self.grace.tolerates)
        result = await self.store.verify(since=None if full else self.head, trail=trail)
        if result.ok:
            self.head = result.head or self.head
            if trail is not None and trail.tolerated:
                log.warning(
                    "audit checkpoints signed by a key this replica was not given are left unchecked "
                    "for now (a newer replica's, while the audit Deployment rolls?)",
                    extra={"checkpoints": trail.tolerated},
                )
            elif trail is not None:
                self.trail_state = trail.state
                self.grace.forget()
            if full:
                self.last_full = now
            log.info("audit chain verified", extra={"checked": result.checked, "full": full})
        else:
            self.head = None
            self.trail_state = TrailState()
            log.error(
                "audit chain is broken",
                extra={"first_bad": result.first_bad, "reason": result.reason, "checked": result.checked},
            )
        if self.watermark is not None:  # a trail consistent with itself may still have been rolled back
            async with self.store.database.connection() as conn:
                await self.watermark.check(conn)
        return result

    def task(self, clock: Clock = SYSTEM_CLOCK) -> PeriodicTask:
        """The supervised background task: the first run within ``min(interval, 30)`` seconds
        (replicas started together spread out), then every ``interval`` ± 10 %."""
        return PeriodicTask(
            "audit-verifier",
            self.interval,
            self.run_once,
            clock=clock,
            initial_delay=min(self.interval, 30.0) * random.uniform(0.5, 1.0),
            jitter=0.1,
            expected=UNREACHABLE,
            stop_timeout=1.0,  # a walk only reads: cancelling it loses nothing
            logger=log,
        )
