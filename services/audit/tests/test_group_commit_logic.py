"""Group commit in process: who shares a transaction, and what each caller is told when it fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from audit.groupcommit import GroupCommit

pytestmark = pytest.mark.unit


class Unavailable(Exception):
    """Stands for the database being away: every member's failure."""


class Committer:
    """Records each transaction; refuses any group holding a "poison" item, or all when ``down``."""

    def __init__(self) -> None:
        self.transactions: list[list[str]] = []
        self.down = False
        self.release = asyncio.Event()
        self.release.set()

    async def commit(self, items: Sequence[str]) -> list[str]:
        await self.release.wait()
        self.transactions.append(list(items))
        if self.down:
            raise Unavailable("database away")
        if "poison" in items:
            raise ValueError("refused: poison")
        return [f"stored {item}" for item in items]


def group_of(committer: Committer, max_items: int = 100) -> GroupCommit[str, str]:
    return GroupCommit(
        committer.commit,
        size=lambda item: 1,
        max_items=max_items,
        shared_failure=lambda exc: isinstance(exc, Unavailable),
    )


async def test_a_lone_caller_commits_at_once() -> None:
    committer = Committer()
    assert await group_of(committer).submit("a") == "stored a"
    assert committer.transactions == [["a"]]


async def test_callers_arriving_during_a_commit_share_the_next_one() -> None:
    committer = Committer()
    group = group_of(committer)
    committer.release.clear()
    first = asyncio.ensure_future(group.submit("a"))
    await asyncio.sleep(0)  # the first transaction is under way, holding the "lock"
    rest = [asyncio.ensure_future(group.submit(item)) for item in "bcdef"]
    await asyncio.sleep(0)
    committer.release.set()
    assert await first == "stored a"
    assert await asyncio.gather(*rest) == [f"stored {item}" for item in "bcdef"]
    assert committer.transactions == [["a"], list("bcdef")]


async def test_a_group_is_bounded() -> None:
    committer = Committer()
    group = group_of(committer, max_items=2)
    assert len(await asyncio.gather(*(group.submit(item) for item in "abcde"))) == 5
    assert [len(t) for t in committer.transactions] == [2, 2, 1]


async def test_one_members_refused_data_fails_that_member_alone() -> None:
    committer = Committer()
    group = group_of(committer)
    results = await asyncio.gather(*(group.submit(i) for i in ("a", "poison", "b")), return_exceptions=True)
    assert results[0] == "stored a"
    assert isinstance(results[1], ValueError)
    assert results[2] == "stored b"
    # the shared attempt rolled back as a whole, then each member alone
    assert committer.transactions == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]


async def test_the_database_away_fails_every_member_without_retrying_each() -> None:
    committer = Committer()
    committer.down = True
    group = group_of(committer)
    results = await asyncio.gather(*(group.submit(i) for i in "abc"), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert committer.transactions == [["a", "b", "c"]]


async def test_a_caller_giving_up_cancels_nobody_elses_commit() -> None:
    committer = Committer()
    group = group_of(committer)
    committer.release.clear()
    leaving = asyncio.ensure_future(group.submit("a"))
    staying = asyncio.ensure_future(group.submit("b"))
    await asyncio.sleep(0)
    leaving.cancel()
    committer.release.set()
    assert await staying == "stored b"
    assert committer.transactions == [["a", "b"]]  # "a" may still be stored: like a lost answer
    # and the committer is ready for the next caller
    assert await group.submit("c") == "stored c"
