"""The ``checkpoints`` table: append the signed checkpoints, page through them, stream them to a walk.

The JWS is the checkpoint; ``seq``, ``head``, ``signed_at`` and ``key_id`` repeat what it signs so
that listing needs no parsing — nothing trusts those columns: verification reads the JWS alone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from svckit.db import Connection, Database

from .checkpoints import Checkpoint
from .trail import CheckpointTrail, Expectation

FEED_BATCH = 500
#: a page of the listing: (number, JWS) of each checkpoint, newest first; and whether older ones exist
Page = tuple[list[tuple[int, str]], bool]


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    number: int
    jws: str


class CheckpointStore:
    def __init__(self, database: Database, schema: str) -> None:
        self.database = database
        self.schema = schema

    async def latest(self, conn: Connection) -> StoredCheckpoint | None:
        row = await conn.fetchrow(
            f"SELECT number, jws FROM {self.schema}.checkpoints ORDER BY number DESC LIMIT 1"
        )
        return StoredCheckpoint(row["number"], row["jws"]) if row is not None else None

    async def numbered(self, conn: Connection, number: int) -> StoredCheckpoint | None:
        jws = await conn.fetchval(f"SELECT jws FROM {self.schema}.checkpoints WHERE number = $1", number)
        return StoredCheckpoint(number, jws) if jws is not None else None

    async def at_or_before(self, conn: Connection, seq: int) -> StoredCheckpoint | None:
        """The newest checkpoint whose row says it signs ``seq`` or an earlier record: selected by the
        ``seq`` column, which nothing trusts (the caller checks what the JWS signs). Walked newest
        first by number: a few rows back for a recent ``seq``, the table at most (one row a minute)."""
        row = await conn.fetchrow(
            f"""SELECT number, jws FROM {self.schema}.checkpoints WHERE seq <= $1
                ORDER BY number DESC LIMIT 1""",
            seq,
        )
        return StoredCheckpoint(row["number"], row["jws"]) if row is not None else None

    async def insert(self, conn: Connection, checkpoint: Checkpoint) -> None:
        await conn.execute(
            f"""INSERT INTO {self.schema}.checkpoints (number, seq, head, signed_at, key_id, jws)
                VALUES ($1, $2, $3, $4, $5, $6)""",
            checkpoint.number,
            checkpoint.seq,
            checkpoint.head,
            checkpoint.signed_at,
            checkpoint.key_id,
            checkpoint.jws,
        )

    async def page(self, conn: Connection, limit: int, before: int | None) -> Page:
        """(number, JWS) of up to ``limit`` checkpoints, newest first, numbered below ``before``;
        and whether older ones exist (read on ``conn``: the caller bounds it, see
        :meth:`audit.store.AuditStore.checkpoint_page`)."""
        rows = await conn.fetch(
            f"""SELECT number, jws FROM {self.schema}.checkpoints WHERE number < $1
                ORDER BY number DESC LIMIT $2""",
            before if before is not None else 2**63 - 1,
            limit + 1,
        )
        return [(row["number"], row["jws"]) for row in rows[:limit]], len(rows) > limit

    async def after(self, conn: Connection, number: int, limit: int) -> list[StoredCheckpoint]:
        rows = await conn.fetch(
            f"SELECT number, jws FROM {self.schema}.checkpoints WHERE number > $1 ORDER BY number LIMIT $2",
            number,
            limit,
        )
        return [StoredCheckpoint(row["number"], row["jws"]) for row in rows]


class CheckpointFeed:
    """The checkpoints of the database, through a :class:`CheckpointTrail`, in step with a chain walk:
    :meth:`at` answers what record ``seq`` must hash to, fetching in batches as the walk advances.

    With ``until`` (a range's last record) the checkpoints stop at the first that signs beyond it
    (``beyond``): the rest are not the range's to check. Unless a checkpoint inside the range is
    signed by a key the trail does not know: only a later checkpoint a known key signed vouches for
    it, through the ``prev`` chain, as in a whole walk — so the feed reads on past ``until`` (the
    checkpoints only, no record) to the first checkpoint a known key signed, or to the last one,
    where :meth:`CheckpointTrail.finish` reports it exactly as a whole walk does. Without this, a
    range whose next checkpoint is also unknown-signed left its own unreported (a forged run of
    checkpoints passed for intact). The read past ``until`` is only as long as that run of
    unknown-signed checkpoints, none when every key is known, and stays within the walk's bounds (on
    request: the verification's time limit, else a 422 ``chain_too_long``)."""

    def __init__(self, store: CheckpointStore, trail: CheckpointTrail, until: int | None = None) -> None:
        self.store = store
        self.trail = trail
        self.until = until
        self.beyond: int | None = None  # the first checkpoint that signs beyond ``until``, once met
        self._after = trail.state.number
        self._exhausted = False
        self._pending: deque[Expectation] = deque()

    async def _fetch(self, conn: Connection) -> None:
        batch = await self.store.after(conn, self._after, FEED_BATCH)
        for stored in batch:
            self._pending.extend(self.trail.feed(stored.number, stored.jws))
            self._after = stored.number
            if self.beyond is None and self.until is not None and self.trail.state.seq > self.until:
                self.beyond = stored.number
            if self.beyond is not None and not self.trail.awaits_vouching(self.beyond):
                # the rest sign beyond the range, and none inside it awaits a voucher: not its to check
                self._exhausted = True
                return
        if len(batch) < FEED_BATCH:
            self._exhausted = True
            self._pending.extend(self.trail.finish())

    async def at(self, conn: Connection, seq: int) -> list[Expectation]:
        """Expectations for record ``seq`` (those for earlier records, before this walk began, are
        dropped: an incremental walk cannot check them)."""
        while not self._exhausted and (not self._pending or self._pending[-1].seq <= seq):
            await self._fetch(conn)
        while self._pending and self._pending[0].seq < seq:
            self._pending.popleft()
        found = []
        while self._pending and self._pending[0].seq == seq:
            found.append(self._pending.popleft())
        return found

    async def rest(self, conn: Connection) -> list[Expectation]:
        """Every expectation not yet answered (after the walk's last record: those it cannot meet;
        within a range, those up to its last record)."""
        while not self._exhausted:
            await self._fetch(conn)
        until = self.until
        rest = [e for e in self._pending if until is None or e.seq <= until]
        self._pending.clear()
        return rest
