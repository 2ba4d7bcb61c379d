"""Denials (401, 403, 429) to the audit trail: asynchronous, batched, aggregated, never blocking a request.

Two kinds of record, both audit events with action ``access.denied`` and outcome ``denied``:

* **one per request** for a caller whose token verified and who lacks a scope (403): attributable,
  and bounded by that caller's rate limit. ``details``: ``status``, ``reason``, ``method``, ``route``,
  ``client_ip``, ``required_scope``; the event's ``request_id`` is the request's.
* **aggregated per window** for everything a flood is made of — *anonymous* denials (no token, a
  token that did not verify: 401, and the per-address limit's 429) and rate-limit refusals (429) —
  one record per (status, reason, route, method, caller, address) and window of
  ``AUDIT_DENIAL_WINDOW_SECONDS``, with ``details`` ``count``, ``window_start`` and ``window_end``
  (RFC 3339, UTC) besides ``status``, ``reason``, ``method``, ``route`` and ``address``; the event's
  ``request_id`` is the first denied request's. However many requests a flood sends, the trail grows
  by at most ``AUDIT_DENIAL_MAX_KEYS`` records per window and worker (further callers share the
  address ``*``), and the counts add up to what was refused. The aggregation is the kit's
  (:class:`svckit.denials.DenialWindows`), which the services behind the gateway use for their own
  refusals too; the shape is in ``docs/CONTRACTS.md``.

The request path only updates a dictionary (aggregated) or appends to a bounded queue
(``AUDIT_QUEUE_SIZE``, per request); a supervised background task (:class:`svckit.tasks.PeriodicTask`)
closes finished windows and sends batches of up to ``AUDIT_BATCH_SIZE`` events to the audit
service's ``POST /internal/events``, signed as the service principal ``gateway``. While the audit
service is down, or answers later than ``AUDIT_REQUEST_TIMEOUT_SECONDS``, the batch stays queued and
is sent again, the same events with the same ids, after a capped exponential back-off (the queue keeps
filling meanwhile; aggregated windows keep counting): the audit service records an event id once, also
when it stored the batch given up on after all (``tests/faults/test_redelivery.py``). Events that
do not fit in the queue, or that the audit service refuses as malformed, are dropped and counted in
``gateway_audit_dropped_total`` — the gateway has no database, and a flood of bad tokens must not
be able to exhaust its memory. The token itself never goes into an event: only the reason, the route
template and, when the token verified, the caller's identity.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import aiohttp
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.denials import ACTION, DenialWindows, actor_of
from svckit.http import SignedClient
from svckit.identity import Identity
from svckit.outbox import INGEST_PATH, AuditEvent
from svckit.tasks import PeriodicTask

from . import metrics

log = logging.getLogger("gateway.denials")

REFUSED_STATUSES = frozenset({400, 413, 422})


class DeliveryFailed(Exception):
    """The audit service did not take a batch (the periodic task backs off)."""


class DenialAuditor:
    def __init__(
        self,
        client: SignedClient,
        *,
        queue_size: int,
        batch_size: int,
        flush_seconds: float,
        request_timeout: float = 10.0,
        window_seconds: float = 60.0,
        max_keys: int = 1000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        self.batch_size = batch_size
        self.request_timeout = request_timeout
        self.windows = DenialWindows(window_seconds, max_keys, clock, source="gateway")
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._identity = Identity.service("gateway")
        self.delivered = 0
        self.task = PeriodicTask(
            "gateway-denial-flush",
            flush_seconds,
            self.deliver,
            clock=clock,
            expected=(DeliveryFailed,),
            backoff_base=0.5,
            max_backoff=30.0,
            logger=log,
        )

    def record(
        self,
        *,
        status: int,
        reason: str,
        route: str,
        method: str,
        request_id: str,
        identity: Identity | None,
        client_ip: str,
        required_scope: str = "",
    ) -> None:
        """Queue one denial as its own record (no I/O; drops and counts when the queue is full)."""
        details: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "method": method,
            "route": route,
            "client_ip": client_ip,
        }
        if required_scope:
            details["required_scope"] = required_scope
        event = AuditEvent.create(
            action=ACTION,
            resource_type="route",
            resource_id=f"{method} {route}",
            outcome="denied",
            actor=actor_of(identity),
            source="gateway",
            details=details,
            request_id=request_id,
        )
        self._enqueue([event.to_json()])

    def aggregate(
        self,
        *,
        status: int,
        reason: str,
        route: str,
        method: str,
        request_id: str,
        identity: Identity | None,
        address: str,
    ) -> None:
        """Count one denial towards its window's record (no I/O, no allocation when the key exists:
        :class:`svckit.denials.DenialWindows`, shared with the services behind the gateway)."""
        self.windows.add(
            status=status,
            reason=reason,
            route=route,
            method=method,
            identity=identity,
            address=address,
            request_id=request_id,
        )
        if self.windows.open_windows > 2:
            # windows ended while the delivery task backs off (up to 30 s; a short window ends many
            # times meanwhile): their records join the bounded queue now (as svckit.denials does)
            self._enqueue([event.to_json() for event in self.windows.close()])

    def _enqueue(self, documents: list[dict[str, Any]]) -> None:
        room = self._queue_size - len(self._queue)
        if len(documents) > room:
            metrics.audit_dropped.inc(len(documents) - max(0, room))
            documents = documents[: max(0, room)]
        self._queue.extend(documents)
        if len(self._queue) >= self.batch_size:
            self.task.wake()

    async def _send(self, batch: list[dict[str, Any]]) -> int:
        async with self.client.request(
            "POST", INGEST_PATH, self._identity, json={"events": batch}, timeout=self.request_timeout
        ) as response:
            await response.read()
            return int(response.status)

    async def deliver(self) -> bool:
        """Close ended windows, send one batch; ``True`` when more is queued. Raises DeliveryFailed."""
        self._enqueue([event.to_json() for event in self.windows.close()])
        if not self._queue:
            return False
        batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
        try:
            status = await self._send(batch)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}; {len(self._queue)} queued") from None
        if status == 200:
            for _ in batch:
                self._queue.popleft()
            self.delivered += len(batch)
            return bool(self._queue)
        if status in REFUSED_STATUSES:
            log.error("audit service refused denial events; dropping them", extra={"status": status})
            for _ in batch:
                self._queue.popleft()
            metrics.audit_dropped.inc(len(batch))
            return bool(self._queue)
        raise DeliveryFailed(f"HTTP {status}; {len(self._queue)} queued")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self.task.start()

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Try once to deliver what is queued (open windows included), bounded in time; count the rest."""
        await self.task.stop(timeout=flush_timeout)
        self._enqueue([event.to_json() for event in self.windows.close(everything=True)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        while self._queue and loop.time() < deadline:
            try:
                more = await asyncio.wait_for(self.deliver(), max(0.1, deadline - loop.time()))
            except (DeliveryFailed, TimeoutError):
                break
            if not more:
                break
        if self._queue:
            metrics.audit_dropped.inc(len(self._queue))
            self._queue.clear()
