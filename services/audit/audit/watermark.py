"""The trail's watermark outside the database: the newest checkpoint signed, kept in Redis, so that
the running service notices when its database was put back to an earlier point (a restore).

Why: a restore of the ``audit`` schema alone loses for good the records stored after the backup (the
producers deleted their outbox rows once they were acknowledged), and the restored trail is
consistent with itself — the chain verifies, its checkpoints verify, and a signer that trusts the
database alone goes on from the backup's newest checkpoint, signing again numbers it had signed for
other heads. Only something kept outside the database can tell. The offline ``python -m audit verify
--checkpoints`` does, with the copies an auditor retained; this module lets the service tell by itself.

The choice: Redis, which the service already uses (its replay memory), holds one small value per
trail — the number, ``seq``, head and digest of the newest checkpoint signed. No new infrastructure,
nothing on the ingest path (written by the checkpoint signer, at most once an interval, and read by
the signer and the background verifier: one Redis call and two indexed queries per run). The
alternative of acknowledging the stored ``seq`` to every producer and keeping the highest in each
producer's schema was not taken: it changes the ingest contract for every relay, needs a migration
in three schemas and a per-batch write there, and a producer restored together with the audit
schema (a whole-cluster restore) forgets it as well.

Redis is losable (no persistence, ``allkeys-lru`` in the bundled one), so its *absence* proves
nothing: the next check seeds it from the database's newest checkpoint whose signature verifies.
What it proves when present:

* the database lacks the watermark's checkpoint number (its newest is lower): the trail was rolled
  back — the records signed up to the watermark's ``seq`` beyond the database's newest checkpoint
  are gone;
* the database holds that number with another checkpoint (another digest): the number was signed
  again for another head (a rollback the signer went on from while the watermark could not be read).

Who checks: the checkpoint signer before each run (the first a few seconds after the process
started, then every ``AUDIT_CHECKPOINT_INTERVAL_SECONDS``) and the background verifier after each
walk (every ``AUDIT_VERIFY_INTERVAL_SECONDS``: the replicas that do not sign) — no task of its own,
so no connection beyond those the two already take. Either finding is reported
(``audit_trail_rolled_back`` 1, an error log; alert TimesheetsAuditTrailRolledBack) and the
checkpoint signer signs nothing until the operator accepts the loss: ``python -m audit
accept-restore`` writes ``audit.restore_accepted`` to the trail and marks the watermark *accepted*
for the database's newest checkpoint (docs/runbook.md, "Backup and restore"). The signer then goes on
with the number after the watermark's, chained (``prev``) to the database's newest checkpoint: the
numbers of the lost heads are never signed again (:mod:`audit.trail` accepts such a skip because the
``prev`` link is signed).

One key per trail: ``<REDIS_KEY_PREFIX>audit:watermark:<database name>`` — the database's name, not
only the prefix, so that trails in two databases behind one prefix (test runs, a staging database on
the same servers) never read each other's watermark; the name is what a restore keeps (into the same
database). Not the first record's hash: a trail rewritten from its start would then escape it.

Writes are ordered so that a watermark never names a checkpoint that is not committed: the signer
writes it after its transaction committed, a reader reads Redis before it reads the database, and
the write only ever raises the number (a script compares; a replica that committed first but writes
last cannot lower it). While Redis does not answer nothing is proven either way: checks report
``unknown`` (the gauge keeps its value) and the signer signs as it did without a watermark (the
platform keeps working without Redis); a rollback meanwhile is found once Redis answers again, by
the second rule above.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import redis.asyncio as aioredis
from svckit.db import Connection
from svckit.redisguard import RedisGuard

from . import metrics
from .checkpoint_store import CheckpointStore, StoredCheckpoint
from .checkpoints import GENESIS_DIGEST, Checkpoint, InvalidCheckpoint, PublicKeys, parse

log = logging.getLogger("audit.watermark")

State = Literal["consistent", "accepted", "rolled_back", "unknown"]

# KEYS[1] the watermark; ARGV[1] the new value; ARGV[2] its number; ARGV[3] '' (raise it only: set when
# absent, unreadable or numbered lower) or the value read before, which alone may be replaced (accept)
_WRITE = """
local current = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' then
  if current ~= ARGV[3] then return 0 end
elseif current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and type(stored['number']) == 'number'
      and stored['number'] >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Base:
    """The database's newest checkpoint when the operator accepted a rollback (number 0 and the
    genesis digest: no checkpoint at all)."""

    number: int
    digest: str


@dataclass(frozen=True)
class Watermark:
    number: int
    seq: int
    head: str
    digest: str
    accepted: Base | None = None
    raw: str = ""  # the value as read from Redis (what accept-restore replaces)

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> Watermark:
        return cls(checkpoint.number, checkpoint.seq, checkpoint.head, checkpoint.digest)

    def dumps(self) -> str:
        value: dict[str, Any] = {
            "number": self.number,
            "seq": self.seq,
            "head": self.head,
            "digest": self.digest,
        }
        if self.accepted is not None:
            value["accepted"] = {"number": self.accepted.number, "digest": self.accepted.digest}
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> Watermark | None:
        """The watermark, or None when the value is not one (treated as absent: it proves nothing)."""
        try:
            value = json.loads(raw)
            accepted = value.get("accepted")
            base = None if accepted is None else Base(int(accepted["number"]), str(accepted["digest"]))
            number, seq = value["number"], value["seq"]
            if not (isinstance(number, int) and isinstance(seq, int) and number >= 1 and seq >= 0):
                return None
            return cls(number, seq, str(value["head"]), str(value["digest"]), base, raw)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def summary(self) -> dict[str, Any]:
        return {"number": self.number, "seq": self.seq, "head": self.head}


@dataclass(frozen=True)
class Finding:
    """What one check found: the state, the watermark read, the database's newest checkpoint (parsed,
    and ``stored``: its row as read, which accept-restore verifies rather than reading it again)."""

    state: State
    watermark: Watermark | None = None
    newest: Checkpoint | None = None
    reason: str = ""
    stored: StoredCheckpoint | None = None

    @property
    def next_number(self) -> int:
        """The number the next checkpoint must take: after every number the database holds and every
        number the watermark says was signed (after an accepted rollback, past the lost ones)."""
        known = self.newest.number if self.newest is not None else 0
        signed = self.watermark.number if self.watermark is not None else 0
        return max(known, signed) + 1

    def report(self) -> dict[str, Any]:
        """The finding as JSON (accept-restore's output, log lines)."""
        newest = self.newest
        restored = (
            None if newest is None else {"number": newest.number, "seq": newest.seq, "head": newest.head}
        )
        return {
            "state": self.state,
            "reason": self.reason,
            "watermark": None if self.watermark is None else self.watermark.summary(),
            "restored": restored,
        }


class TrailWatermark:
    """Reads, checks and raises the watermark of the trail in ``store``'s database."""

    def __init__(self, redis: RedisGuard, keys: PublicKeys, checkpoints: CheckpointStore) -> None:
        self.redis = redis
        self.keys = keys
        self.checkpoints = checkpoints
        self._key: str | None = None
        self._state: State | None = None  # the last state reported (transitions are logged)

    async def key(self, conn: Connection) -> str:
        if self._key is None:
            name = await conn.fetchval("SELECT current_database()")
            self._key = self.redis.key("audit", "watermark", str(name))
        return self._key

    async def read(self, conn: Connection) -> tuple[bool, Watermark | None]:
        """(whether Redis answered, the watermark when there is one)."""
        key = await self.key(conn)

        async def get(client: aioredis.Redis) -> list[bytes | str | None]:
            return [await client.get(key)]

        answer = await self.redis.call(get)
        if answer is None:
            return False, None
        raw = answer[0]
        if raw is None:
            return True, None
        found = Watermark.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        if found is None:
            log.warning("the audit trail's watermark in Redis is not one: ignored", extra={"key": key})
        return True, found

    async def write(self, key: str, value: Watermark, replacing: str = "") -> bool:
        """Set the watermark under ``key`` (:meth:`key`): raised only (``replacing`` empty), or in place
        of the value read (``replacing``). False when Redis did not take it (lower, changed meanwhile,
        or down)."""

        async def run(client: aioredis.Redis) -> Any:
            return await client.eval(_WRITE, 1, key, value.dumps(), str(value.number), replacing)

        return bool(await self.redis.call(run))

    def _verified(self, stored: StoredCheckpoint | None) -> Checkpoint | None:
        """The stored checkpoint when it parses and its signature verifies with a key of this replica
        (what may be written as the watermark: never a row someone wrote without the key)."""
        if stored is None:
            return None
        try:
            return self.keys.verify(stored.jws)
        except InvalidCheckpoint:
            return None

    async def check(self, conn: Connection, *, catch_up: bool = True) -> Finding:
        """Compare the watermark with the database (Redis first, then the database: see the module
        docstring); set ``audit_trail_rolled_back``; with ``catch_up``, raise the watermark to the
        database's newest verified checkpoint when the two agree (seeding an absent one)."""
        answered, mark = await self.read(conn)
        stored = await self.checkpoints.latest(conn)
        newest: Checkpoint | None = None
        if stored is not None:
            try:
                newest = parse(stored.jws)
            except InvalidCheckpoint:
                newest = None  # the chain's verification reports it; nothing to compare with here
        if not answered:
            return self._report(Finding("unknown", None, newest, "Redis does not answer", stored))
        finding = replace(await self._compare(conn, mark, stored, newest), stored=stored)
        if catch_up and finding.state == "consistent":
            verified = self._verified(stored)
            if verified is not None and (mark is None or verified.number > mark.number):
                await self.write(await self.key(conn), Watermark.of(verified))
        return self._report(finding)

    async def _compare(
        self,
        conn: Connection,
        mark: Watermark | None,
        stored: StoredCheckpoint | None,
        newest: Checkpoint | None,
    ) -> Finding:
        if mark is None:
            return Finding("consistent", None, newest, "no watermark (Redis lost it, or none signed yet)")
        have = Base(stored.number, _digest(stored.jws)) if stored is not None else Base(0, GENESIS_DIGEST)
        if mark.accepted is not None and mark.accepted == have:
            # the database's newest is the one the operator accepted (behind the watermark, or past
            # it with numbers signed again): the signer goes on from it, past every number signed
            return Finding("accepted", mark, newest, "a rollback the operator accepted")
        if stored is None or stored.number < mark.number:
            held = f"checkpoint {stored.number}" if stored is not None else "no checkpoint"
            return Finding(
                "rolled_back",
                mark,
                newest,
                f"checkpoint {mark.number} (seq {mark.seq}) was signed, but the database's newest is {held}: "
                "the trail was put back to an earlier point",
            )
        at = stored if stored.number == mark.number else await self.checkpoints.numbered(conn, mark.number)
        if at is None:
            return Finding(
                "rolled_back",
                mark,
                newest,
                f"checkpoint {mark.number} (seq {mark.seq}) was signed, but the database lacks it",
            )
        if _digest(at.jws) != mark.digest:
            return Finding(
                "rolled_back",
                mark,
                newest,
                f"checkpoint {mark.number} was signed for seq {mark.seq}, but the database holds another "
                "checkpoint under that number: it was signed again after the trail was put back",
            )
        return Finding("consistent", mark, newest)

    def _report(self, finding: Finding) -> Finding:
        if finding.state == "unknown":
            return finding  # nothing proven either way: the gauge keeps what was last known
        rolled_back = finding.state == "rolled_back"
        metrics.trail_rolled_back.set(1 if rolled_back else 0)
        if finding.state != self._state:
            if rolled_back:
                log.error("audit trail rolled back: " + finding.reason, extra=finding.report())
            elif self._state == "rolled_back":
                log.warning("audit trail rollback cleared: " + finding.reason, extra=finding.report())
            self._state = finding.state
        return finding


def _digest(jws: str) -> str:
    """:attr:`Checkpoint.digest` of a stored row, whatever it holds (as :mod:`audit.trail` takes it)."""
    return hashlib.sha256(jws.encode("utf-8", "replace")).hexdigest()
