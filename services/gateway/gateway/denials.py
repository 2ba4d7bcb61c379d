"""Denials (401, 403, 429) to the audit trail: asynchronous, batched, never blocking a request.

The request path only appends to a bounded in-memory queue (``AUDIT_QUEUE_SIZE``); a background task
sends batches of up to ``AUDIT_BATCH_SIZE`` events to the audit service's ``POST /internal/events``,
signed as the service principal ``gateway``. While the audit service is down, the batch is retried
with capped exponential backoff and jitter (the queue keeps filling meanwhile). Events that do not
fit in the queue, or that the audit service refuses as malformed, are dropped and counted in
``gateway_audit_dropped_total`` — the gateway has no database, and a flood of bad tokens must not be
able to exhaust its memory. The token itself never goes into an event: only the reason, the route
template and, when the token verified, the caller's identity.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import aiohttp
from svckit.http import SignedClient
from svckit.identity import Identity
from svckit.outbox import INGEST_PATH, Actor, AuditEvent, backoff_delay

from . import metrics

log = logging.getLogger("gateway.denials")

ANONYMOUS = Actor(issuer="", subject="anonymous", kind="anonymous")
REFUSED_STATUSES = frozenset({400, 413, 422})


class DenialAuditor:
    def __init__(
        self,
        client: SignedClient,
        *,
        queue_size: int,
        batch_size: int,
        flush_seconds: float,
    ) -> None:
        self.client = client
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._identity = Identity.service("gateway")
        self._stopping = False
        self._stop_event = asyncio.Event()
        self.delivered = 0

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
        """Queue one denial (no I/O; drops and counts when the queue is full)."""
        if len(self._queue) >= self._queue_size:
            metrics.audit_dropped.inc()
            return
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
            action="access.denied",
            resource_type="route",
            resource_id=f"{method} {route}",
            outcome="denied",
            actor=identity or Identity("", "anonymous"),
            source="gateway",
            details=details,
            request_id=request_id,
        )
        document = event.to_json()
        if identity is None:
            document["actor"] = ANONYMOUS.to_json()
        self._queue.append(document)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    async def _send(self, batch: list[dict[str, Any]]) -> int:
        async with self.client.request(
            "POST", INGEST_PATH, self._identity, json={"events": batch}, timeout=10.0
        ) as response:
            await response.read()
            return int(response.status)

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            if not self._queue:
                self._wake.clear()
                # not wait_for: in Python 3.11 it can swallow a cancellation racing with its timeout
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter}, timeout=self.flush_seconds)
                waiter.cancel()
                if not self._queue:
                    continue
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            try:
                status = await self._send(batch)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status = 0
                error = type(exc).__name__
            else:
                error = f"HTTP {status}"
            if status == 200:
                for _ in batch:
                    self._queue.popleft()
                self.delivered += len(batch)
                failures = 0
                continue
            if status in REFUSED_STATUSES:
                log.error("audit service refused denial events; dropping them", extra={"status": status})
                for _ in batch:
                    self._queue.popleft()
                metrics.audit_dropped.inc(len(batch))
                continue
            failures += 1
            delay = backoff_delay(failures, 0.5, 30.0)
            log.warning(
                "delivering denial events failed; retrying",
                extra={"error": error, "retry_in": round(delay, 2), "queued": len(self._queue)},
            )
            # only stop() cuts the backoff short (not new denials: that would hammer a down service)
            waiter = asyncio.ensure_future(self._stop_event.wait())
            await asyncio.wait({waiter}, timeout=delay)
            waiter.cancel()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Try once to deliver what is queued, bounded in time; count the rest as dropped."""
        self._stopping = True
        self._wake.set()
        self._stop_event.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=flush_timeout)
            if not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
        deadline = time.monotonic() + flush_timeout
        while self._queue and time.monotonic() < deadline:
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            try:
                status = await asyncio.wait_for(self._send(batch), max(0.1, deadline - time.monotonic()))
            except (aiohttp.ClientError, TimeoutError, OSError):
                break
            if status != 200:
                break
            for _ in batch:
                self._queue.popleft()
        if self._queue:
            metrics.audit_dropped.inc(len(self._queue))
            self._queue.clear()
