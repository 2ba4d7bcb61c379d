"""The in-process replay window (svckit.replay): each nonce accepted once within the window, forgotten
after it, and bounded in size. The shared Redis memory: test_replay_shared.py, and with real service
replicas tests/security/test_signed_requests.py."""

from __future__ import annotations

import pytest
from svckit.replay import ReplayMemory

from testkit.clock import FakeClock

pytestmark = pytest.mark.unit


async def test_a_nonce_is_accepted_once_within_the_window_and_forgotten_after() -> None:
    clock = FakeClock()
    memory = ReplayMemory(None, "timesheets", 60, clock=clock.monotonic)
    assert await memory.first_use("n" * 32, "POST") == "fresh"
    assert await memory.first_use("n" * 32, "GET") == "replay"
    clock.advance(120)  # a timestamp is accepted up to the skew either way: 2 x 60 s (+1)
    assert await memory.first_use("n" * 32, "POST") == "replay"
    clock.advance(2)
    assert await memory.first_use("n" * 32, "POST") == "fresh"


async def test_the_local_window_is_bounded_oldest_first() -> None:
    memory = ReplayMemory(None, "timesheets", 60, max_local=3)
    for nonce in ("a" * 16, "b" * 16, "c" * 16, "d" * 16):
        assert await memory.first_use(nonce, "POST") == "fresh"
    assert await memory.first_use("d" * 16, "POST") == "replay"
    assert await memory.first_use("a" * 16, "POST") == "fresh"  # dropped to make room
