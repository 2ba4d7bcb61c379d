"""The supervised periodic task and the fake clock, in process: every pause is driven by the clock."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from prometheus_client import REGISTRY
from svckit.clock import SYSTEM_CLOCK
from svckit.tasks import PeriodicTask, backoff_delay, stop_all

from testkit.clock import FakeClock

pytestmark = pytest.mark.unit


def runs(task: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("background_task_runs_total", {"task": task, "outcome": outcome}) or 0.0


def name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


class Recorder:
    """A task body that records when it ran (on the fake clock) and does what it is told."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.plan: list[object] = []  # per run: a return value, or an exception to raise

    async def __call__(self) -> object:
        self.times.append(self.clock.monotonic())
        step = self.plan.pop(0) if self.plan else None
        if isinstance(step, BaseException):
            raise step
        return step


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def sleeper(label: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(label)

    tasks = [asyncio.ensure_future(sleeper(label, s)) for label, s in (("c", 3), ("a", 1), ("b", 2))]
    await clock.tick(0)
    assert clock.sleepers == 3
    await clock.tick(1.5)
    assert woke == ["a"]
    await clock.tick(10)
    assert woke == ["a", "b", "c"]
    assert clock.time() == pytest.approx(1_700_000_011.5)
    await asyncio.gather(*tasks)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    clock.set_time(5.0)  # the wall clock may jump; the monotonic one does not
    assert clock.time() == 5.0
    assert clock.monotonic() > 10_000


def test_system_clock_is_the_real_clock() -> None:
    import time

    assert abs(SYSTEM_CLOCK.time() - time.time()) < 1
    assert abs(SYSTEM_CLOCK.monotonic() - time.monotonic()) < 1


async def test_runs_every_interval_after_one_interval_by_default() -> None:
    clock = FakeClock()
    body = Recorder(clock)
    task = PeriodicTask(name(), 10, body, clock=clock)
    start = clock.monotonic()
    task.start()
    await clock.tick(9.9)
    assert body.times == []
    await clock.tick(0.1)
    await clock.tick(10)
    await clock.tick(10)
    assert [t - start for t in body.times] == pytest.approx([10, 20, 30])
    await task.stop()
    assert not task.running
    assert runs(task.name, "ok") == 3


async def test_initial_delay_zero_runs_at_once_and_true_drains_a_backlog() -> None:
    clock = FakeClock()
    body = Recorder(clock)
    body.plan = [True, True, False]  # "more work" twice, then done
    task = PeriodicTask(name(), 10, body, clock=clock, initial_delay=0)
    task.start()
    await clock.tick(0)
    assert len(body.times) == 3  # all at the same instant
    await clock.tick(10)
    assert len(body.times) == 4
    await task.stop()


async def test_wake_cuts_the_pause_short() -> None:
    clock = FakeClock()
    body = Recorder(clock)
    task = PeriodicTask(name(), 60, body, clock=clock)
    task.start()
    await clock.tick(1)
    task.wake()
    await clock.tick(0)
    assert len(body.times) == 1
    await clock.tick(59)  # the next pause starts after the woken run: a full interval
    assert len(body.times) == 1
    await clock.tick(1)
    assert len(body.times) == 2
    await task.stop()


async def test_a_failure_backs_off_ignores_wake_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    body = Recorder(clock)
    body.plan = [ConnectionError("peer away"), ConnectionError("peer away"), None]
    task = PeriodicTask(
        name(),
        1,
        body,
        clock=clock,
        initial_delay=0,
        expected=(ConnectionError,),
        backoff_base=4,
        max_backoff=8,
    )
    with caplog.at_level(logging.INFO, logger="svckit.tasks"):
        task.start()
        await clock.tick(0)
        assert task.failures == 1
        task.wake()  # ignored while backing off
        await clock.tick(1.9)  # the first back-off is U(2, 4): nothing before 2 s
        assert len(body.times) == 1
        await clock.tick(2.1)  # ≤ 4 s: the second run
        assert len(body.times) == 2
        assert task.failures == 2
        await clock.tick(3.9)  # the second back-off is U(4, 8)
        assert len(body.times) == 2
        await clock.tick(4.1)
        assert len(body.times) == 3
        assert task.failures == 0
        await clock.tick(1)  # back to the interval
        assert len(body.times) == 4
    await task.stop()
    assert runs(task.name, "error") == 2
    assert runs(task.name, "ok") == 2
    messages = [
        (r.levelname, r.msg, r.exc_info is not None)
        for r in caplog.records
        if getattr(r, "task", None) == task.name  # other tests' tasks may share the event loop
    ]
    assert messages.count(("WARNING", "background task %s failed; retrying: %s", False)) == 2
    said = [r.getMessage() for r in caplog.records if getattr(r, "task", None) == task.name]
    assert said[0] == f"background task {task.name} failed; retrying: ConnectionError: peer away"
    assert ("INFO", "background task recovered", False) in messages


async def test_an_unexpected_error_is_logged_with_its_traceback_and_the_loop_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    body = Recorder(clock)
    body.plan = [KeyError("bug")]
    task = PeriodicTask(name(), 1, body, clock=clock, initial_delay=0, max_backoff=1)
    with caplog.at_level(logging.WARNING, logger="svckit.tasks"):
        task.start()
        await clock.tick(0)
        await clock.tick(1)
    assert len(body.times) == 2
    assert task.running
    failed = [
        r
        for r in caplog.records
        if r.msg == "background task %s failed; retrying" and getattr(r, "task", None) == task.name
    ]
    assert failed
    assert failed[0].exc_info is not None
    assert failed[0].levelname == "ERROR"
    await task.stop()


async def test_last_success_is_the_clock_time_of_the_last_good_run() -> None:
    clock = FakeClock(start=1_800_000_000)
    body = Recorder(clock)
    task = PeriodicTask(name(), 5, body, clock=clock)
    task.start()
    await clock.tick(5)
    stamp = REGISTRY.get_sample_value("background_task_last_success_timestamp_seconds", {"task": task.name})
    assert stamp == 1_800_000_005
    await task.stop()


async def test_stop_ends_a_pause_at_once_and_bounds_a_run_in_flight() -> None:
    clock = FakeClock()
    body = Recorder(clock)
    idle = PeriodicTask(name(), 3600, body, clock=clock)
    idle.start()
    await clock.tick(0)
    await asyncio.wait_for(idle.stop(), 1)  # no clock advance needed
    assert body.times == []

    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    hung = PeriodicTask(name(), 1, stuck, clock=clock, initial_delay=0, stop_timeout=0.05)
    hung.start()
    await started.wait()
    await asyncio.wait_for(stop_all([hung]), 2)
    assert cancelled.is_set()
    assert not hung.running


async def test_jitter_spreads_the_pause_within_its_bounds() -> None:
    clock = FakeClock()
    body = Recorder(clock)
    task = PeriodicTask(name(), 10, body, clock=clock, initial_delay=0, jitter=0.2)
    task.start()
    for _ in range(120):  # a minute in half seconds: five or more runs
        await clock.tick(0.5, turns=3)
    await task.stop()
    gaps = [b - a for a, b in zip(body.times, body.times[1:], strict=False)]
    assert len(gaps) >= 4
    assert all(8 - 0.5 <= gap <= 12 + 0.5 for gap in gaps)


def test_invalid_settings_are_refused() -> None:
    async def nothing() -> None:
        return None

    with pytest.raises(ValueError, match="interval"):
        PeriodicTask("x", 0, nothing)
    with pytest.raises(ValueError, match="jitter"):
        PeriodicTask("x", 1, nothing, jitter=1.5)


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0), (100, 30.0)):
        for _ in range(50):
            assert ceiling / 2 <= backoff_delay(attempt, 0.5, 30.0) <= ceiling
