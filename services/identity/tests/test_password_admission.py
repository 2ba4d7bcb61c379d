"""The sign-in form's admission to the hashing threads (identity.passwords.HashingQueue), in process:
what is refused, and that a refused or dropped check never runs. tests/test_signin_burst.py drives
it with real bursts against a real provider."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from identity import passwords

pytestmark = pytest.mark.unit


def blocking(began: list[str], release: threading.Event, ran: list[str]) -> Callable[[str], str]:
    """Work that holds its hashing thread until ``release`` (``began``: the names it began for)."""

    def work(name: str) -> str:
        began.append(name)
        release.wait(10)
        ran.append(name)
        return name

    return work


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def test_past_the_admitted_count_a_check_is_refused_and_never_runs() -> None:
    began, release, ran = list[str](), threading.Event(), list[str]()
    work = blocking(began, release, ran)
    queue = passwords.HashingQueue(max_waiting=1, max_wait_seconds=10)
    first = asyncio.ensure_future(queue.run(work, "first"))
    await until(lambda: len(began) == 1)
    with pytest.raises(passwords.HashingBusy) as refused:
        await queue.run(work, "second")
    assert refused.value.reason == passwords.QUEUE_FULL
    assert 10 <= refused.value.retry_after <= 20
    release.set()
    assert await first == "first"
    assert ran == ["first"]
    assert queue.admitted == 0


async def test_a_check_whose_turn_does_not_come_in_time_or_whose_client_went_is_dropped() -> None:
    began, release, ran = list[str](), threading.Event(), list[str]()
    work = blocking(began, release, ran)
    queue = passwords.HashingQueue(max_waiting=100, max_wait_seconds=0.5)
    # every hashing thread busy
    busy: list[asyncio.Future[str]] = [
        asyncio.ensure_future(asyncio.to_thread(passwords._on_hashing_threads, work, f"busy-{i}"))
        for i in range(passwords.HASHES_AT_ONCE)
    ]
    await until(lambda: len(began) == passwords.HASHES_AT_ONCE)
    with pytest.raises(passwords.HashingBusy) as refused:
        await queue.run(work, "late")
    assert refused.value.reason == passwords.QUEUE_TIMEOUT
    left = asyncio.Event()
    patient = passwords.HashingQueue(max_waiting=100, max_wait_seconds=10)
    waiting: asyncio.Future[str] = asyncio.ensure_future(patient.run(work, "gone", gone=left.wait))
    await until(lambda: patient.admitted == 1)
    left.set()  # the client disconnects while its check waits
    with pytest.raises(passwords.ClientGone):
        await waiting
    release.set()
    await asyncio.gather(*busy)
    assert sorted(ran) == sorted(f"busy-{i}" for i in range(passwords.HASHES_AT_ONCE))  # neither ran
    assert queue.admitted == patient.admitted == 0


async def test_an_admitted_check_verifies_as_the_threads_do() -> None:
    stored = passwords.hash_secret("right")
    queue = passwords.HashingQueue(max_waiting=4, max_wait_seconds=10)
    assert await queue.verify(stored, "right")
    assert not await queue.verify(stored, "wrong")
    assert not await queue.verify(None, "no-such-user-dummy-password")  # the dummy's time, never a match
    assert passwords.verify_secret(await queue.hash("new"), "new")
