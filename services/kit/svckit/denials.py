"""Denials to the audit trail, aggregated per window: bounded in memory and on the trail, whatever a
flood sends, with counts that add up to what was refused.

Every denial of a credential or a permission is an audit event with action ``access.denied`` and
outcome ``denied`` (resource ``{"type": "route", "id": "<METHOD> <route template>"}``). What a flood
is made of is not recorded request by request: :class:`DenialWindows` counts denials per key — (status,
reason, route template, method, caller, address) — and fixed window of ``window_seconds`` (aligned to
the epoch), and hands out **one event per key** when its window has ended, with ``details``
``status``, ``reason``, ``method``, ``route``, ``address``, ``count``, ``window_start`` and
``window_end`` (RFC 3339, UTC); the event's ``request_id`` is the first denied request's and its
``occurred_at`` the window's end. At most ``max_keys`` keys per window: further callers share one
key per (status, reason, route, method) with the address ``*`` and the anonymous actor. The actor is
the caller when its identity verified, else ``anonymous`` (kind ``anonymous``, empty issuer): a
principal that was only *claimed* is never named. The shape is in ``docs/CONTRACTS.md``.

Two users:

* the gateway (:mod:`gateway.denials`): anonymous and rate-limit denials of its callers, delivered
  over HTTP to the audit service with its own queue;
* every service behind it (:class:`DenialRecorder`, wired by :func:`svckit.app.create_service_app`
  ``denial_sink=``): requests whose signed identity did not verify or was replayed (401, the
  reasons of ``identity_verification_failures_total``) — sent straight to a service from inside the
  cluster, they never passed the gateway — and callers the service itself refused a scope or a route
  for service principals (403, :mod:`svckit.authz`) — and the bundled identity provider's refusals
  (failed sign-ins and client authentications, code replays, refresh-token reuse, DPoP binding
  refusals: ``identity.denials``). The request path only updates a dictionary (no
  I/O); a supervised background task (:class:`svckit.tasks.PeriodicTask`, ``audit-denials-flush``)
  closes ended windows and hands their events to the service's *sink*: the transactional outbox of a
  writer service (:meth:`svckit.outbox.OutboxRelay.record`, relayed to the audit service with
  retries), or the audit service's own trail, appended in process (its refusals are never sent to
  itself over HTTP). While the sink fails (the database away) the events wait, at most
  ``max_pending`` of them; beyond that, and whatever is still waiting when the service stops, they are
  dropped and counted in ``audit_denials_dropped_total{service}``. A failed flush never reaches a
  request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from .clock import SYSTEM_CLOCK, Clock
from .contracts.audit import MAX_BATCH, Actor, AuditEvent
from .identity import Identity
from .metrics import UNMATCHED_ROUTE
from .tasks import PeriodicTask

log = logging.getLogger("svckit.denials")

ACTION = "access.denied"
#: the actor of a denial whose caller did not prove who they are
ANONYMOUS = Actor(issuer="", subject="anonymous", kind="anonymous")
#: the address of the callers beyond ``max_keys`` keys in one window
OTHER_ADDRESS = "*"
#: reasons of the kit's 403s (:mod:`svckit.authz`)
INSUFFICIENT_SCOPE = "insufficient_scope"
SERVICE_ONLY = "service_only"

dropped_total = Counter(
    "audit_denials_dropped_total",
    "Denial records a service could not write to the audit trail: aggregated ones (its sink failed for "
    "longer than the pending bound, or it stopped with records still waiting) and its own refusals' "
    "(approvals: an approver's own entry, when its write failed twice).",
    ["service"],
)
written_total = Counter(
    "audit_denials_written_total",
    "Denial records a service wrote to the audit trail (its outbox, or the audit service's own trail): "
    "aggregated ones, and its own refusals' (approvals: an approver's own entry).",
    ["service"],
)


@dataclass(slots=True)
class Tally:
    """One aggregated record in the making."""

    count: int
    first_request_id: str
    identity: Identity | None


# (window index, status, reason, route, method, issuer, subject, address)
Key = tuple[int, int, str, str, str, str, str, str]


class DenialWindows:
    """Counts denials per key and fixed window; hands out one event per key when its window ends."""

    def __init__(
        self, window_seconds: float, max_keys: int, clock: Clock = SYSTEM_CLOCK, *, source: str
    ) -> None:
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self.source = source
        self._now = clock.time
        self._tallies: dict[Key, Tally] = {}
        self._keys_in: collections.Counter[int] = collections.Counter()  # keys per window

    def add(
        self,
        *,
        status: int,
        reason: str,
        route: str,
        method: str,
        identity: Identity | None,
        address: str,
        request_id: str,
    ) -> None:
        """Count one denial (no I/O; no allocation when its key exists)."""
        window = int(self._now() // self.window_seconds)
        issuer, subject = (identity.issuer, identity.subject) if identity is not None else ("", "")
        key = (window, status, reason, route, method, issuer, subject, address)
        tally = self._tallies.get(key)
        if tally is not None:
            tally.count += 1
            return
        if self._keys_in[window] >= self.max_keys:  # a flood from many callers: one bucket for the rest
            key = (window, status, reason, route, method, "", "", OTHER_ADDRESS)
            identity = None
            tally = self._tallies.get(key)
            if tally is not None:
                tally.count += 1
                return
        self._keys_in[window] += 1
        self._tallies[key] = Tally(1, request_id, identity)

    def close(self, *, everything: bool = False) -> list[AuditEvent]:
        """Events for the windows that have ended (all windows when ``everything``, at shutdown)."""
        if not self._tallies:
            return []
        now = self._now()
        current = int(now // self.window_seconds)
        done = [key for key in self._tallies if everything or key[0] < current]
        events = []
        for key in done:
            tally = self._tallies.pop(key)
            window, status, reason, route, method, _, _, address = key
            start = window * self.window_seconds
            end = min(start + self.window_seconds, now)
            events.append(
                aggregated_event(
                    source=self.source,
                    status=status,
                    reason=reason,
                    route=route,
                    method=method,
                    identity=tally.identity,
                    address=address,
                    count=tally.count,
                    window_start=start,
                    window_end=end,
                    request_id=tally.first_request_id,
                )
            )
        for window in [window for window in self._keys_in if everything or window < current]:
            del self._keys_in[window]
        return events

    def __len__(self) -> int:
        return len(self._tallies)

    @property
    def open_windows(self) -> int:
        """Windows holding tallies: the current one, and ended ones not closed yet."""
        return len(self._keys_in)


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def actor_of(identity: Identity | None) -> Identity | Actor:
    """The event's actor: the verified caller, else :data:`ANONYMOUS`."""
    return identity if identity is not None else ANONYMOUS


def aggregated_event(
    *,
    source: str,
    status: int,
    reason: str,
    route: str,
    method: str,
    identity: Identity | None,
    address: str,
    count: int,
    window_start: float,
    window_end: float,
    request_id: str,
) -> AuditEvent:
    """One aggregated denial record (see the module docstring)."""
    return AuditEvent.create(
        action=ACTION,
        resource_type="route",
        resource_id=f"{method} {route}",
        outcome="denied",
        actor=actor_of(identity),
        source=source,
        details={
            "status": status,
            "reason": reason,
            "method": method,
            "route": route,
            "address": address,
            "count": count,
            "window_start": rfc3339(window_start),
            "window_end": rfc3339(window_end),
        },
        request_id=request_id,
        occurred_at=datetime.fromtimestamp(window_end, UTC),
    )


#: where a service's denial records go: its outbox, or (the audit service) its own trail
Sink = Callable[[Sequence[AuditEvent]], Awaitable[object]]


def peer_address(scope: Scope) -> str:
    """The address the request came from (services trust no forwarding headers: the peer itself)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


class DenialRecorder:
    """A service's denials (see the module docstring): counted per window on the request path, written
    to ``sink`` by a supervised task. ``expected``: the sink's errors that mean "try again later" (a
    warning, not a traceback)."""

    def __init__(
        self,
        source: str,
        sink: Sink,
        *,
        window_seconds: float = 60.0,
        max_keys: int = 1000,
        max_pending: int | None = None,
        expected: tuple[type[BaseException], ...] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.source = source
        self.sink = sink
        self.windows = DenialWindows(window_seconds, max_keys, clock, source=source)
        self.max_pending = max_pending if max_pending is not None else 10 * max_keys
        self.routes: Sequence[BaseRoute] = ()  # set by create_service_app: templates of refused paths
        self._pending: list[AuditEvent] = []
        self._dropped = dropped_total.labels(source)
        self._written = written_total.labels(source)
        self.written = 0
        # a window's records go out soon after it ends; between windows a run only looks at a dict
        interval = min(max(window_seconds / 4, 0.05), 5.0)
        self.task = PeriodicTask(
            "audit-denials-flush",
            interval,
            self.flush,
            clock=clock,
            expected=expected,
            backoff_base=0.5,
            max_backoff=30.0,
            logger=log,
        )

    # ---- the request path (no I/O) -----------------------------------------------------------

    def deny(
        self,
        scope: Scope,
        status: int,
        reason: str,
        identity: Identity | None = None,
        *,
        address: str | None = None,
    ) -> None:
        """Count one denial of the request in ``scope``; ``identity``: the caller, when it verified;
        ``address``: the client's, when the service resolves it through proxies it trusts (the bundled
        identity provider, reached through an ingress), else the connection's peer."""
        state: dict[str, Any] = scope.get("state") or {}
        self.windows.add(
            status=status,
            reason=reason,
            route=self.route_of(scope),
            method=scope["method"],
            identity=identity,
            address=peer_address(scope) if address is None else address,
            request_id=str(state.get("request_id", "")),
        )
        if self.windows.open_windows > 2:
            # windows ended while the flush task backs off (up to 30 s; a short window ends many
            # times meanwhile): their tallies become waiting records now, within that bound too
            # (each window's tallies are bounded by max_keys; at most once per window, so cheap)
            self._take_closed()

    def route_of(self, scope: Scope) -> str:
        """The route template of the request: the one it was routed to, or (refused before routing) the
        one the router would take, as the router matches (a route of another method counts too)."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED_ROUTE))
            if match is Match.PARTIAL and partial is None:
                partial = route
        return str(getattr(partial, "path", UNMATCHED_ROUTE)) if partial is not None else UNMATCHED_ROUTE

    # ---- the background task -----------------------------------------------------------------

    def _take_closed(self, *, everything: bool = False) -> None:
        events = self.windows.close(everything=everything)
        room = self.max_pending - len(self._pending)
        if len(events) > room:
            self._dropped.inc(len(events) - max(0, room))
            events = events[: max(0, room)]
        self._pending.extend(events)

    async def flush(self) -> bool:
        """Close ended windows and write one batch of waiting records; ``True`` when more wait. The
        sink's error propagates (the task backs off); the batch keeps waiting."""
        self._take_closed()
        if not self._pending:
            return False
        batch = self._pending[:MAX_BATCH]
        await self.sink(batch)
        del self._pending[: len(batch)]
        self.written += len(batch)
        self._written.inc(len(batch))
        return bool(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self.task.start()

    async def stop(self, timeout: float = 3.0) -> None:
        """Close every window, open ones included, and try to write what waits within ``timeout``;
        what is left is counted as dropped."""
        await self.task.stop(timeout=timeout)
        self._take_closed(everything=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending and loop.time() < deadline:
            try:
                more = await asyncio.wait_for(self.flush(), max(0.1, deadline - loop.time()))
            except Exception as exc:  # the sink is away: what waits is lost, and counted
                log.warning(
                    "denial records could not be written at shutdown",
                    extra={"error": type(exc).__name__, "pending": len(self._pending)},
                )
                break
            if not more:
                break
        if self._pending:
            self._dropped.inc(len(self._pending))
            self._pending.clear()


__all__ = [
    "ACTION",
    "ANONYMOUS",
    "INSUFFICIENT_SCOPE",
    "OTHER_ADDRESS",
    "SERVICE_ONLY",
    "DenialRecorder",
    "DenialWindows",
    "Sink",
    "Tally",
    "aggregated_event",
    "peer_address",
]
