"""Denials aggregated per window (svckit.denials), in process, on a fake clock: what the gateway and
every service behind it write to the audit trail — bounded, with counts that add up — and a service's
recorder while its sink (the outbox, the audit trail) fails."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.routing import Route
from svckit.contracts.audit import AuditEvent
from svckit.denials import OTHER_ADDRESS, DenialRecorder, DenialWindows
from svckit.identity import Identity
from svckit.metrics import UNMATCHED_ROUTE

from testkit.clock import FakeClock

pytestmark = pytest.mark.unit

START = 1_800_000_000.0  # a multiple of 60 and of 10


def deny(windows: DenialWindows, address: str = "198.51.100.1", **overrides: Any) -> None:
    values: dict[str, Any] = {
        "status": 401,
        "reason": "missing_token",
        "route": "/api/timesheets",
        "method": "GET",
        "identity": None,
        "address": address,
        "request_id": "first-request",
        **overrides,
    }
    windows.add(**values)


def test_a_window_becomes_one_record_per_key_when_it_ends() -> None:
    clock = FakeClock(start=START)
    windows = DenialWindows(10, max_keys=100, clock=clock, source="gateway")
    for _ in range(500):
        deny(windows)
    deny(windows, reason="bad_signature", request_id="other")
    deny(windows, status=429, reason="rate_limit_subject", identity=Identity("https://i/", "sam"))
    assert windows.close() == []  # the window is still open
    clock.advance(9.5)
    deny(windows)
    assert windows.close() == []
    clock.advance(0.5)
    records = [event.to_json() for event in windows.close()]
    assert len(records) == 3
    by_reason = {record["details"]["reason"]: record for record in records}
    flood = by_reason["missing_token"]
    assert flood["details"] == {
        "status": 401,
        "reason": "missing_token",
        "method": "GET",
        "route": "/api/timesheets",
        "address": "198.51.100.1",
        "count": 501,
        "window_start": "2027-01-15T08:00:00.000Z",
        "window_end": "2027-01-15T08:00:10.000Z",
    }
    assert flood["request_id"] == "first-request"
    assert flood["actor"] == {
        "issuer": "",
        "subject": "anonymous",
        "kind": "anonymous",
        "client_id": "",
        "name": "",
    }
    assert flood["source"] == "gateway"
    assert flood["action"] == "access.denied"
    assert flood["outcome"] == "denied"
    assert flood["resource"] == {"type": "route", "id": "GET /api/timesheets"}
    assert flood["occurred_at"].startswith("2027-01-15T08:00:10")
    limited = by_reason["rate_limit_subject"]
    assert limited["actor"]["subject"] == "sam"  # a verified caller's refusals name the caller
    assert len(windows) == 0
    assert windows.close() == []


def test_a_flood_from_many_addresses_is_bounded_by_max_keys() -> None:
    clock = FakeClock(start=START)
    windows = DenialWindows(10, max_keys=5, clock=clock, source="timesheets")
    for i in range(1000):
        deny(windows, address=f"2001:db8::{i:x}")
    clock.advance(10)
    records = [event.to_json() for event in windows.close()]
    assert len(records) == 6  # five addresses, then everyone else together
    other = [record for record in records if record["details"]["address"] == OTHER_ADDRESS]
    assert [record["details"]["count"] for record in other] == [995]
    assert sum(record["details"]["count"] for record in records) == 1000
    assert {record["source"] for record in records} == {"timesheets"}


def test_shutdown_closes_the_open_window_up_to_now() -> None:
    clock = FakeClock(start=START)
    windows = DenialWindows(60, max_keys=5, clock=clock, source="gateway")
    deny(windows)
    clock.advance(12.5)
    [record] = windows.close(everything=True)
    assert record.details["window_end"] == "2027-01-15T08:00:12.500Z"


# ---- a service's recorder -----------------------------------------------------------------------


class SinkDown(Exception):
    pass


class Sink:
    """Takes batches, or fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.events: list[AuditEvent] = []

    async def __call__(self, events: Sequence[AuditEvent]) -> None:
        if self.down:
            raise SinkDown("database away")
        self.events.extend(events)


ROUTES = [
    Route("/timesheets", lambda request: None, methods=["GET", "POST"]),
    Route("/timesheets/{id}", lambda request: None, methods=["GET"]),
]


def request_scope(method: str, path: str, client: str = "10.0.0.9") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "headers": [],
        "client": (client, 40000),
        "state": {"request_id": "req-1"},
    }


def recorder(sink: Sink, clock: FakeClock, **kwargs: Any) -> DenialRecorder:
    source = f"svc-{uuid.uuid4().hex[:8]}"  # a metric series of its own
    denials = DenialRecorder(source, sink, window_seconds=10, clock=clock, expected=(SinkDown,), **kwargs)
    denials.routes = ROUTES
    return denials


def dropped(denials: DenialRecorder) -> float:
    return REGISTRY.get_sample_value("audit_denials_dropped_total", {"service": denials.source}) or 0.0


async def test_a_refusal_before_routing_is_recorded_under_the_route_template() -> None:
    sink, clock = Sink(), FakeClock(start=START)
    denials = recorder(sink, clock)
    denials.deny(request_scope("GET", "/timesheets/42"), 401, "bad_signature")
    denials.deny(request_scope("DELETE", "/timesheets"), 401, "bad_signature")  # another method's route
    denials.deny(request_scope("GET", "/nowhere"), 401, "bad_signature")
    verified = Identity("https://i/", "mallory")
    denials.deny(request_scope("POST", "/timesheets"), 403, "insufficient_scope", verified)
    clock.advance(10)
    assert await denials.flush() is False
    details = {(event.details["method"], event.details["route"]): event for event in sink.events}
    assert set(details) == {
        ("GET", "/timesheets/{id}"),
        ("DELETE", "/timesheets"),
        ("GET", UNMATCHED_ROUTE),
        ("POST", "/timesheets"),
    }
    assert details[("GET", "/timesheets/{id}")].details["address"] == "10.0.0.9"
    assert details[("GET", "/timesheets/{id}")].request_id == "req-1"
    assert details[("GET", "/timesheets/{id}")].actor.kind == "anonymous"
    assert details[("POST", "/timesheets")].actor.subject == "mallory"
    assert denials.written == 4
    assert REGISTRY.get_sample_value("audit_denials_written_total", {"service": denials.source}) == 4


async def test_records_wait_while_the_sink_fails_within_a_bound_and_drops_are_counted() -> None:
    sink, clock = Sink(), FakeClock(start=START)
    denials = recorder(sink, clock, max_keys=3, max_pending=5)
    sink.down = True
    for _ in range(3):  # three windows of three keys each while the database is away
        for i in range(3):
            denials.deny(request_scope("GET", "/timesheets", client=f"10.0.0.{i}"), 401, "replay")
        clock.advance(10)
        with pytest.raises(SinkDown):
            await denials.flush()
    assert denials.pending == 5  # the bound: the rest were dropped, and counted
    assert dropped(denials) == 4
    sink.down = False
    assert await denials.flush() is False
    assert len(sink.events) == 5
    assert denials.pending == 0
    # at shutdown an open window is written; what cannot be is counted
    denials.deny(request_scope("GET", "/timesheets"), 401, "replay")
    sink.down = True
    await denials.stop(timeout=0.2)
    assert dropped(denials) == 5
    assert denials.pending == 0


async def test_windows_that_end_while_no_flush_runs_are_bounded_too() -> None:
    """The flush task backs off up to 30 s while the sink fails; with a short window many windows end
    meanwhile. Their tallies are not kept without bound until it runs again: past the bound, ended
    windows become waiting records (themselves bounded, the rest dropped and counted)."""
    sink, clock = Sink(), FakeClock(start=START)
    denials = recorder(sink, clock, max_keys=3, max_pending=5)
    for _window in range(50):  # no flush at all: the task is backing off
        for i in range(3):
            denials.deny(request_scope("GET", "/timesheets", client=f"10.0.1.{i}"), 401, "replay")
        clock.advance(10)
    assert len(denials.windows) + denials.pending <= 2 * 3 + 5
    assert dropped(denials) >= 50 * 3 - (2 * 3 + 5)
