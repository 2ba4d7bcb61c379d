"""Group commit: concurrent callers share one transaction, each answered only after it committed.

The chain is one serialised step (one lock, one head), so its throughput is set by how many
transactions per second can take the lock in turn, not by how many events each carries. When
callers arrive while a commit is under way they queue; the next commit takes everything queued (up
to ``max_items``) in one transaction. Nobody waits on a timer: a lone caller commits at once, and
the group grows only with the load.

What each caller is told is what happened to its own items:

- success: the commit function's result for its entry, after the transaction committed;
- a failure of the database itself (``shared_failure`` says which: unreachable, an ambiguous
  commit resolved as not stored…) is every member's failure: the whole transaction rolled back, so
  nobody's items are half-written;
- any other failure (one member's data refused by the database, say) may be that member's alone:
  the group is then committed again one member at a time, so the others still succeed and the
  culprit gets its own error.

A caller that gives up waiting (its request cancelled) does not cancel the commit: its items may
still be committed, as with an answer lost on the way back; idempotent ingestion makes the resend
harmless.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Commits a group in one transaction; one result per item, in order.
CommitFunction = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        commit: CommitFunction[Item, Result],
        *,
        size: Callable[[Item], int],
        max_items: int,
        shared_failure: Callable[[BaseException], bool],
    ) -> None:
        self._commit = commit
        self._size = size
        self._max_items = max_items
        self._shared_failure = shared_failure
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._leader: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed or attempted (for tests and figures)

    async def submit(self, item: Item) -> Result:
        """Commit ``item`` with whatever else is waiting; returns once that transaction committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._leader is None:
            # its own task: a caller that is cancelled must not cancel everybody's transaction
            self._leader = asyncio.create_task(self._lead(), name="audit-group-commit")
        return await future

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        group = [self._queue.popleft()]
        total = self._size(group[0][0])
        while self._queue and total + self._size(self._queue[0][0]) <= self._max_items:
            entry = self._queue.popleft()
            total += self._size(entry[0])
            group.append(entry)
        return group

    async def _lead(self) -> None:
        try:
            while self._queue:
                group = self._take()
                try:
                    await self._run(group)
                except BaseException as exc:  # cancelled (shutting down): nobody may wait forever
                    for _, future in group:
                        if not future.done():
                            future.cancel()
                    for _, future in self._queue:
                        future.cancel()
                    self._queue.clear()
                    raise exc
        finally:
            self._leader = None

    async def _run(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        self.groups += 1
        try:
            results = await self._commit([item for item, _ in group])
        except Exception as exc:
            if len(group) == 1 or self._shared_failure(exc):
                for _, future in group:
                    if not future.done():  # done: the caller gave up waiting
                        future.set_exception(exc)
                return
            for entry in group:  # whose failure was it? each member alone
                await self._run([entry])
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)
