"""Reading and appending audit records; verifying the chain.

Appending is the one serialised step of the service: a table lock (``chain_lock``, migration 0012:
not an advisory lock, which any role that may connect could take and keep) makes every ingesting
transaction (on any replica) take the chain head, extend it and commit in turn, so
the records form a single chain with gap-free ``seq``. Duplicates are detected under the same lock,
so a re-sent event can never become a second record, however deliveries race.

Three things keep that step short, since the lock's holder sets the whole platform's audited write
rate: concurrent ingests in one process share one transaction (group commit,
:mod:`audit.groupcommit`: one lock acquisition, one head lookup, one insert, each caller answered
after that commit); that transaction is one statement, one round trip (``append_documents``,
migration 0009: the group is chained from the head this process wrote last and sent as the documents
that were hashed; the function checks under the lock that it still is the head, else chains the group
itself from the head it found, so a replica appending meanwhile costs no second round trip); and
the head is one row of ``chain_head`` kept by a trigger (migration 0005), a lookup by key whose cost
cannot grow with the table or turn into a scan.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, NamedTuple

import asyncpg
from svckit.contracts.audit import (
    Actor,
    Anchor,
    AuditEvent,
    AuditRecord,
    CheckpointStatus,
    CheckpointSummary,
    EventsQuery,
    Resource,
    VerifiedRange,
    VerifyResult,
    encode_cursor,
)
from svckit.db import UNAVAILABLE_ERRORS, CommitCheck, Connection, Database

from . import metrics
from .bounds import ReadBound, Turns
from .chain import GENESIS, HASHED_COLUMNS, UTC_TEXT, canonical_text, record_hash, timestamp
from .checkpoint_store import CheckpointFeed, CheckpointStore, Page
from .checkpoints import PublicKeys
from .duplicates import recorded_twice
from .groupcommit import GroupCommit
from .jsonb import jsonb_text
from .ranges import BadRange, Origin, RangeRequest, find_origin
from .trail import CheckpointTrail

log = logging.getLogger("audit.store")

COLUMNS = (*HASHED_COLUMNS, "hash")
HASHED = len(HASHED_COLUMNS)
#: Events per group commit: a few full batches (MAX_BATCH) in one COPY, not an unbounded transaction.
GROUP_MAX_EVENTS = 2000


#: what may stop the read of where a batch was stored, after its commit (it then has no receipt)
RECEIPT_READ_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


def shared_failure(exc: BaseException) -> bool:
    """A failure of the database itself, every member's (not one member's data being refused)."""
    return isinstance(exc, UNAVAILABLE_ERRORS)


SELECT_COLUMNS = ", ".join(c if c != "details" else "details::text AS details" for c in COLUMNS)
#: What the verification walk reads: :data:`SELECT_COLUMNS` with the timestamps as the hash writes
#: them (:func:`~audit.chain.canonical_text` takes the first 17 as they come).
WALK_COLUMNS = ", ".join(
    UTC_TEXT.format(column=c) + f" AS {c}" if c in ("occurred_at", "recorded_at") else c
    for c in SELECT_COLUMNS.split(", ")
)


#: Filters of ``GET /audit/events`` (as columns) that an index leads with, each ending in seq
#: (migrations 0003, 0011, 0013; ``test_listing_plans`` holds this to the database's indexes): a walk
#: of it newest first reads only matches. ``resource_type`` alone is no index's exact prefix, but its
#: few values each cover much of the trail, so a walk finds a page at once (and 0011's plan test
#: bounds one that matches nothing).
EXACT_FILTERS: frozenset[frozenset[str]] = frozenset(
    frozenset(columns)
    for columns in (
        (),
        ("actor_subject",),
        ("actor_issuer",),
        ("actor_client_id",),
        ("action",),
        ("resource_type",),
        ("resource_type", "resource_id"),
        ("resource_id",),
        ("outcome",),
        ("source",),
        ("source", "outcome"),
        ("source", "action"),
        ("actor_client_id", "outcome"),
        ("action", "outcome"),
    )
)
#: Records just below the cursor that a listing without an exact index reads first (a primary key
#: range: ~300 pages of realistic records, a few ms): where matches are dense it fills the page.
BAND = 5000


#: An event, and its details in ``jsonb``'s text form when the intake wrote it already (None: the
#: store writes it, :func:`~audit.jsonb.jsonb_text`): the document hashed at ingestion carries it.
Entry = tuple[AuditEvent, str | None]


class Placed(NamedTuple):
    """Where an event is stored: its record's seq and hash (the ingest answer's ``receipt``)."""

    id: uuid.UUID
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    #: the caller's event stored at the highest seq (None: the database went away before it was known)
    receipt: Placed | None = None


def newest(events: Iterable[AuditEvent], placed: Mapping[uuid.UUID, Placed]) -> Placed | None:
    """Of ``events``, the one ``placed`` puts at the highest seq (None: none of them is placed)."""
    best: Placed | None = None
    for event in events:
        where = placed.get(event.id)
        if where is not None and (best is None or where.seq > best.seq):
            best = where
    return best


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int
    first_bad: int | None = None
    reason: str | None = None
    head: Anchor | None = None  # the last record walked, when intact (the next walk may start there)
    # Broken only relative to a caller-supplied anchor: reported, but it does not flip the
    # audit_chain_ok alert (a mistyped anchor must not page anyone).
    by_caller_anchor: bool = False
    # The checkpoints the walk held the records to (None: checkpoints off)
    trail: CheckpointTrail | None = None
    records_match: bool = True  # the records hold every signed head the walk reached
    signed_through: int = 0  # the last record walked that a verified checkpoint vouched for
    covered: VerifiedRange | None = None  # a ranged walk's range and anchor (None: the whole chain)

    def result(self) -> VerifyResult:
        """What ``GET /audit/verify`` answers (``first_bad`` and ``reason`` only when broken;
        ``range`` only for a ranged walk whose anchor held)."""
        checkpoints = self.checkpoint_status()
        if self.ok:
            return VerifyResult(ok=True, checked=self.checked, checkpoints=checkpoints, range=self.covered)
        return VerifyResult(
            ok=False,
            checked=self.checked,
            first_bad=self.first_bad,
            reason=self.reason,
            checkpoints=checkpoints,
            range=self.covered,
        )

    def checkpoint_status(self) -> CheckpointStatus | None:
        trail = self.trail
        if trail is None:
            return None
        latest = None
        if trail.latest is not None:
            latest = CheckpointSummary(
                number=trail.latest.number,
                seq=trail.latest.seq,
                signed_at=trail.latest.signed_at,
                key_id=trail.latest.key_id,
            )
        return CheckpointStatus(
            checked=trail.checked,
            verified=trail.verified,
            latest=latest,
            signatures_valid=trail.signatures_valid,
            chain_matches=self.records_match,
            problem=trail.problems[0] if trail.problems else None,
        )


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One row of ``records`` (``details`` as the jsonb text that was hashed)."""

    seq: int
    id: uuid.UUID
    occurred_at: datetime
    recorded_at: datetime
    source: str
    actor_issuer: str
    actor_subject: str
    actor_kind: str
    actor_client_id: str
    actor_name: str
    action: str
    resource_type: str
    resource_id: str
    outcome: str
    request_id: str | None
    details: str
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: asyncpg.Record) -> RecordRow:
        """From a row selected with :data:`SELECT_COLUMNS`."""
        return cls(*record.values())

    def record(self) -> AuditRecord:
        """The record in the API's shape (the ingestion shape plus seq, recorded_at and the hashes)."""
        return AuditRecord(
            seq=self.seq,
            id=self.id,
            occurred_at=self.occurred_at,
            recorded_at=self.recorded_at,
            source=self.source,
            actor=Actor(
                issuer=self.actor_issuer,
                subject=self.actor_subject,
                kind=self.actor_kind,
                client_id=self.actor_client_id,
                name=self.actor_name,
            ),
            action=self.action,
            resource=Resource(type=self.resource_type, id=self.resource_id),
            outcome=self.outcome,
            request_id=self.request_id,
            details=json.loads(self.details),
            prev_hash=self.prev_hash,
            hash=self.hash,
        )


assert tuple(field.name for field in fields(RecordRow)) == COLUMNS, "RecordRow follows the columns"


#: up to this many rows a group is inserted with one statement (the round trip saved matters more),
#: beyond it with COPY (its binary rows cost less to encode than 18 arrays)
COPY_FROM_ROWS = 64
#: the SQL array type of each column of :data:`COLUMNS` (``details`` arrives as jsonb text)
COLUMN_ARRAYS = {
    "seq": "bigint[]",
    "id": "uuid[]",
    "occurred_at": "timestamptz[]",
    "recorded_at": "timestamptz[]",
}


#: times a group is sent to ``append_documents`` (0: every group takes :meth:`AuditStore._append_locked`)
AT_ONCE_ATTEMPTS = 1


def insert_statement(schema: str) -> str:
    """Rows given column by column (arrays, :data:`COLUMNS` order) inserted in one statement."""
    arrays = ", ".join(f"${n}::{COLUMN_ARRAYS.get(column, 'text[]')}" for n, column in enumerate(COLUMNS, 1))
    select = ", ".join(f"{column}::jsonb" if column == "details" else column for column in COLUMNS)
    return (
        f"INSERT INTO {schema}.records ({', '.join(COLUMNS)})"
        f" SELECT {select} FROM unnest({arrays}) AS r({', '.join(COLUMNS)})"
    )


def chain_row(
    event: AuditEvent, seq: int, recorded_at: datetime, details: str, prev_hash: str
) -> tuple[Any, ...]:
    """The stored row of ``event`` at ``seq`` (in :data:`COLUMNS` order, its hash last)."""
    record: dict[str, Any] = {
        "seq": seq,
        "id": event.id,
        "occurred_at": event.occurred_at,
        "recorded_at": recorded_at,
        "source": event.source,
        "actor_issuer": event.actor.issuer,
        "actor_subject": event.actor.subject,
        "actor_kind": event.actor.kind,
        "actor_client_id": event.actor.client_id,
        "actor_name": event.actor.name,
        "action": event.action,
        "resource_type": event.resource.type,
        "resource_id": event.resource.id,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "details": details,
        "prev_hash": prev_hash,
    }
    record["hash"] = record_hash(record)
    return tuple(record[column] for column in COLUMNS)


class AuditStore:
    columns = COLUMNS  # of the records table, in the order rows are written

    def __init__(
        self,
        database: Database,
        schema: str,
        *,
        read_timeout: float = 5.0,
        readers: int = 4,
        verify_timeout: float = 25.0,
        verifiers: int = 1,
    ) -> None:
        self.database = database
        self.schema = schema
        #: the reads on request (:mod:`audit.bounds`). Listings (events and checkpoints): each statement
        #: under AUDIT_READ_TIMEOUT_SECONDS, at most AUDIT_READ_CONCURRENCY at once, a turn waited for
        #: that long; the rest of the pool is ingestion's, the verifier's and the checkpoint signer's.
        #: Verifications: a whole walk under AUDIT_VERIFY_TIMEOUT_SECONDS, at most
        #: AUDIT_VERIFY_CONCURRENCY at once (a turn is free or the walk is refused), each also taking a
        #: listing turn (the same share of the pool)
        self.listing = ReadBound(
            "listing", Turns(readers, read_timeout), wait=read_timeout, refused=metrics.listings_refused
        )
        self.verifying = ReadBound(
            "verification",
            Turns(verifiers, verify_timeout),
            wait=0,
            refused=metrics.verifications_refused,
            within=self.listing,
            whole=True,
        )
        # the advisory key append_documents still takes as its first argument (pods built before
        # migration 0012 pass it too); since 0012 the function locks the table chain_lock instead
        self.lock_key = zlib.crc32(f"audit-chain:{schema}".encode())
        self.checkpoints = CheckpointStore(database, schema)
        self._insert = insert_statement(schema)
        self._append_documents = (
            f"SELECT head_seq, head_hash, existing FROM {schema}.append_documents($1, $2, $3, $4, $5)"
        )
        #: groups the database chained itself (the head had moved: another replica appended; an event
        #: was recorded already; a details form differed), for tests and figures
        self.rechained = 0
        self._head: tuple[int, str] | None = None  # (seq, hash) this process appended or read last
        self._group: GroupCommit[list[Entry], tuple[frozenset[uuid.UUID], Placed | None]] = GroupCommit(
            self._append_group, size=len, max_items=GROUP_MAX_EVENTS, shared_failure=shared_failure
        )

    @property
    def group_commits(self) -> int:
        """Ingest transactions so far (fewer than ingest calls when they shared)."""
        return self._group.groups

    # ---- append --------------------------------------------------------------------------------

    async def append(self, events: Sequence[AuditEvent], forms: Sequence[str] | None = None) -> AppendResult:
        """Chain ``events`` (duplicates of recorded ids are counted, not stored again); returns once
        the transaction that chained them committed, shared with whatever else was being ingested
        meanwhile (:mod:`audit.groupcommit`). ``forms``: each event's details in ``jsonb``'s text form,
        as the intake wrote them (:class:`~audit.intake.Intake`); None: written here when needed."""
        entries: list[Entry] = (
            [(event, None) for event in events] if forms is None else list(zip(events, forms, strict=True))
        )
        if len(entries) == 1:  # the usual single event: nothing to deduplicate
            distinct = entries
        else:
            unique: dict[uuid.UUID, Entry] = {}
            for entry in entries:
                unique.setdefault(entry[0].id, entry)
            distinct = list(unique.values())
        fresh_ids, receipt = await self._group.submit(distinct)
        if receipt is None:  # chained by the database, or all recorded before: ask it where
            receipt = await self._placed([event for event, _ in distinct], fresh_ids)
        fresh = [event for event, _ in distinct if event.id in fresh_ids]
        recorded = datetime.now(UTC)
        lag = metrics.ingest_lag.observe
        for event in fresh:
            lag(max(0.0, (recorded - event.occurred_at).total_seconds()))
        if fresh:
            source = fresh[0].source
            if all(event.source == source for event in fresh):  # always, through the API (its caller's)
                metrics.ingested_by(source).inc(len(fresh))
            else:
                for source, count in collections.Counter(event.source for event in fresh).items():
                    metrics.ingested_by(source).inc(count)  # one labelled increment per source
        if len(fresh) < len(events):
            first_deliveries = set(fresh_ids)
            for event in events:
                if event.id in first_deliveries:
                    first_deliveries.discard(event.id)
                else:
                    metrics.duplicates.labels(event.source).inc()
        return AppendResult(accepted=len(fresh), duplicates=len(events) - len(fresh), receipt=receipt)

    async def _placed(self, events: Sequence[AuditEvent], fresh: frozenset[uuid.UUID]) -> Placed | None:
        """Where the newest of ``events`` is stored, read after the commit: the group was chained by the
        database (another replica had appended: this process does not know the hashes), or the events
        were all recorded before (a resend). Only ``fresh`` when the batch added any (they are the
        newest). None when the database went away meanwhile: the events are stored all the same, the
        answer just carries no receipt."""
        ids = list(fresh) if fresh else [event.id for event in events]
        try:
            async with self.database.connection() as conn:
                row = await conn.fetchrow(
                    f"SELECT id, seq, hash FROM {self.schema}.records WHERE id = ANY($1::uuid[])"
                    " ORDER BY seq DESC LIMIT 1",
                    ids,
                )
        except RECEIPT_READ_ERRORS:
            log.info("where a batch was stored could not be read; answered without a receipt")
            return None
        return Placed(row["id"], row["seq"], row["hash"]) if row is not None else None

    async def receipt(self, event_id: uuid.UUID, source: str) -> Placed | None:
        """Where the trail holds ``source``'s event ``event_id`` (None: it does not)."""
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT id, seq, hash FROM {self.schema}.records WHERE id = $1 AND source = $2",
                event_id,
                source,
            )
        return Placed(row["id"], row["seq"], row["hash"]) if row is not None else None

    async def _append_group(
        self, batches: Sequence[list[Entry]]
    ) -> list[tuple[frozenset[uuid.UUID], Placed | None]]:
        """The batches of several callers appended together, in one round trip
        (:meth:`_append_at_once`; with :data:`AT_ONCE_ATTEMPTS` 0, a transaction that holds the chain
        lock while it reads the head: :meth:`_append_locked`). Returns, per batch, the ids it added to
        the chain (the others were there already, or came earlier in the group), and where its newest
        event is stored when this process chained it (None: the database did, or it was there before)."""
        unique: dict[uuid.UUID, Entry] = {}
        for batch in batches:
            for entry in batch:
                unique.setdefault(entry[0].id, entry)
        ids = list(unique)

        async def committed(conn: Connection) -> bool:
            """After a lost COMMIT: every event of the group is on the chain (ids are the callers')."""
            count = await conn.fetchval(
                f"SELECT count(*) FROM {self.schema}.records WHERE id = ANY($1::uuid[])", ids
            )
            return bool(count == len(ids))

        entries = list(unique.values())
        placed: dict[uuid.UUID, Placed] = {}
        try:
            added = await self._append_at_once(entries, committed, placed)
            if added is None:
                added = await self._append_locked([event for event, _ in entries], committed, placed)
        except BaseException:
            self._head = None  # unknown now: the next group is chained from what the database finds
            raise
        result: list[tuple[frozenset[uuid.UUID], Placed | None]] = []
        for batch in batches:
            mine = frozenset(event.id for event, _ in batch if event.id in added)
            added -= mine
            result.append((mine, newest((event for event, _ in batch), placed) if placed else None))
        return result

    def _chain(
        self, events: Sequence[AuditEvent], seq: int, prev_hash: str, forms: Mapping[uuid.UUID, str]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``events`` chained after the record ``seq`` whose hash is ``prev_hash``."""
        recorded_at = datetime.now(UTC)
        rows = []
        for event in events:
            seq += 1
            row = chain_row(event, seq, recorded_at, forms[event.id], prev_hash)
            prev_hash = row[-1]
            rows.append(row)
        return rows

    def _documents(
        self, entries: Sequence[Entry], seq: int, prev_hash: str
    ) -> tuple[list[str], list[str], str]:
        """The canonical documents of the events of ``entries`` chained after the record ``seq`` whose
        hash is ``prev_hash`` (:func:`~audit.chain.canonical_text`, details in jsonb's predicted form:
        the entry's, else written here), and their hashes: what ``append_documents`` stores; and the
        group's ``recorded_at`` as written."""
        recorded_at = timestamp(datetime.now(UTC))
        documents = []
        hashes = []
        for event, form in entries:
            seq += 1
            actor = event.actor
            resource = event.resource
            document = canonical_text(
                seq,
                event.id,
                timestamp(event.occurred_at),
                recorded_at,
                event.source,
                actor.issuer,
                actor.subject,
                actor.kind,
                actor.client_id,
                actor.name,
                event.action,
                resource.type,
                resource.id,
                event.outcome,
                event.request_id,
                jsonb_text(event.details) if form is None else form,
                prev_hash,
            )
            prev_hash = sha256(document.encode()).hexdigest()
            documents.append(document)
            hashes.append(prev_hash)
        return documents, hashes, recorded_at

    async def _append_at_once(
        self, entries: Sequence[Entry], committed: CommitCheck, placed: dict[uuid.UUID, Placed]
    ) -> set[uuid.UUID] | None:
        """The group chained from the head this process knows, sent to ``append_documents``
        (migration 0009) as one statement in autocommit: one round trip that takes the lock and
        inserts the documents as they are when that head is still the head, no event is recorded
        and every details text is jsonb's own form; otherwise it chains the group itself from the
        head it found, without the events recorded already. Either way the group is stored in that
        one round trip; the answer is the new head and the ids skipped. Stored as sent, the seq and
        hash of each event are the ones computed here: they go into ``placed``. None: take the locked
        path (:data:`AT_ONCE_ATTEMPTS` is 0)."""
        if AT_ONCE_ATTEMPTS < 1:
            return None
        expected = self._head if self._head is not None else (-1, "")  # -1: no head is ever that
        documents, hashes, recorded_at = self._documents(entries, *expected)
        events = [event for event, _ in entries]

        async def reread(conn: Connection) -> asyncpg.Record | None:
            """After a lost answer to a group that was stored: the head, and the events that were on
            the chain before (recorded at another time than this group)."""
            return await conn.fetchrow(
                f"""SELECT head.seq AS head_seq, head.hash AS head_hash,
                           ARRAY(SELECT id FROM {self.schema}.records
                                 WHERE id = ANY($1::uuid[]) AND recorded_at <> $2::text::timestamptz)
                               AS existing
                    FROM {self.schema}.chain_head AS head""",
                [event.id for event in events],
                recorded_at,
            )

        found = await self.database.write_once(
            self._append_documents,
            self.lock_key,
            *expected,
            documents,
            hashes,
            committed=committed,
            reread=reread,
        )
        if found is None:  # only a reread finds no head row (the owner removed it)
            self._head = None
            return {event.id for event in events}
        self._head = (found["head_seq"], found["head_hash"])
        if found["head_hash"] != hashes[-1]:
            self.rechained += 1  # chained by the database: another head, a recorded event, a form
        elif not found["existing"]:  # stored as sent: the hash of the last covers the seqs and links
            first = expected[0] + 1
            for n, (event, digest) in enumerate(zip(events, hashes, strict=True)):
                placed[event.id] = Placed(event.id, first + n, digest)
        taken = set(found["existing"])
        return {event.id for event in events if event.id not in taken}

    async def _append_locked(
        self, events: Sequence[AuditEvent], committed: CommitCheck, placed: dict[uuid.UUID, Placed]
    ) -> set[uuid.UUID]:
        """One transaction that holds the chain lock from reading the head to committing (the path
        before migration 0006, kept behind :data:`AT_ONCE_ATTEMPTS` = 0: a switch should the function
        ever misbehave, and the lost-commit tests' second path)."""
        ids = [event.id for event in events]
        details_json = [json.dumps(event.details, ensure_ascii=False) for event in events]
        async with self.database.transaction(committed=committed) as conn:
            # Index lookups only in this transaction, as in append_documents (0009): a generic plan
            # made while the table was small must not scan it for every group once it has grown;
            # and no JIT (with sequential scans off every plan costs more than jit_above_cost).
            await conn.execute(
                f"LOCK TABLE {self.schema}.chain_lock IN EXCLUSIVE MODE;"
                " SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)"
            )
            # A separate statement from the lock: its snapshot must be taken after the lock is held.
            # The head is one row by its key (0005), never a search of the records; jsonb's own text
            # form of the details is what gets hashed (see chain.py).
            state = await conn.fetchrow(
                f"""SELECT ARRAY(SELECT id FROM {self.schema}.records WHERE id = ANY($1::uuid[]))
                               AS existing,
                           ARRAY(SELECT d::jsonb::text FROM unnest($2::text[]) WITH ORDINALITY AS t(d, n)
                                 ORDER BY n) AS details,
                           head.seq, head.hash
                    FROM (SELECT 1) AS one LEFT JOIN {self.schema}.chain_head AS head ON true""",
                ids,
                details_json,
            )
            assert state is not None
            seq, prev_hash = state["seq"], state["hash"]
            if seq is None:  # the owner removed the head row: find it the slow way
                seq, prev_hash = await self._head_from_records(conn)
            taken = set(state["existing"])
            fresh = [event for event in events if event.id not in taken]
            forms = dict(zip(ids, state["details"], strict=True))
            rows = self._chain(fresh, seq, prev_hash, forms)
            if len(rows) > COPY_FROM_ROWS:  # COPY's binary rows: cheaper to encode for many rows
                await conn.copy_records_to_table(
                    "records", schema_name=self.schema, columns=COLUMNS, records=rows
                )
            elif rows:  # one statement (prepared once): one round trip where COPY takes two
                await conn.execute(self._insert, *(list(column) for column in zip(*rows, strict=True)))
        self._head = (rows[-1][0], rows[-1][-1]) if rows else (seq, prev_hash)
        for row in rows:
            placed[row[1]] = Placed(row[1], row[0], row[-1])
        return {event.id for event in fresh}

    async def _head_from_records(self, conn: Connection) -> tuple[int, str]:
        row = await conn.fetchrow(f"SELECT seq, hash FROM {self.schema}.records ORDER BY seq DESC LIMIT 1")
        log.warning("audit chain head row missing: taking the head from the records")
        return (row["seq"], row["hash"]) if row is not None else (0, GENESIS)

    # ---- query ---------------------------------------------------------------------------------

    async def list(self, query: EventsQuery) -> tuple[list[RecordRow], str | None]:
        """One page, newest first; the cursor is the last seq shown (stable while records are added).

        Postgres, asked for the newest records that match, likes to walk an index newest first and
        drop what does not match, expecting matches to be spread evenly along the walk. When they are
        few and old (the timesheets service's own denials among the gateway's; a window of last month)
        that walk reads the whole trail for one page. So a walk that filters is never left to it:

        * filters that an index leads with exactly (:data:`EXACT_FILTERS`), without from/to: one walk
          of that index, every entry of which matches;
        * anything else: the :data:`BAND` records just below the cursor (or the head) first, a range
          of the primary key whose cost does not depend on the filters, which fills the page when
          matches are dense there (a window reaching the present, a common combination); only if it
          does not, the matching records below the band, planned as a set (``OFFSET 0``: Postgres
          picks the index of the most selective condition — the from/to window, a pair's index — and
          sorts what it finds), so the cost follows what the filters select, not what they exclude.

        Under :attr:`listing` (:mod:`audit.bounds`): every statement runs under the read timeout
        (``SET LOCAL statement_timeout``), so a listing that would still take longer (a window of
        years) ends with :class:`~audit.bounds.TooLong` instead of holding a pooled connection; and
        a listing runs only with one of a few turns (:class:`~audit.bounds.Busy` after waiting the
        read timeout for one), so ingestion, which shares the pool, always finds a connection.
        """
        conditions: list[str] = []
        params: list[Any] = []

        def where(sql: str, value: Any) -> None:
            params.append(value)
            conditions.append(sql.format(f"${len(params)}"))

        equal = {
            "actor_subject": query.actor,
            "actor_issuer": query.actor_issuer,
            "actor_client_id": query.client_id,
            "action": query.action,
            "resource_type": query.resource_type,
            "resource_id": query.resource_id,
            "outcome": query.outcome,
            "source": query.source,
        }
        for column, value in equal.items():
            if value is not None:
                where(column + " = {}", value)
        if query.from_ is not None:
            where("occurred_at >= {}", query.from_)
        if query.to is not None:
            where("occurred_at < {}", query.to)
        filtered = frozenset(column for column, value in equal.items() if value is not None)
        exact = filtered in EXACT_FILTERS and query.from_ is None and query.to is None
        want = query.limit + 1
        table = f"{self.schema}.records"

        def statement(bounds: Sequence[str], *, as_set: bool = False) -> str:
            """The listing with ``bounds`` on seq (``${n}`` after the filters' parameters, then the
            limit). ``as_set``: planned for every match, then sorted (no walk that filters)."""
            clause = " AND ".join([*conditions, *bounds])
            where_clause = f" WHERE {clause}" if clause else ""
            limit = f"${len(params) + len(bounds) + 1}"
            if as_set:
                return (
                    f"SELECT * FROM (SELECT {SELECT_COLUMNS} FROM {table}{where_clause} OFFSET 0) AS found"
                    f" ORDER BY seq DESC LIMIT {limit}"
                )
            return f"SELECT {SELECT_COLUMNS} FROM {table}{where_clause} ORDER BY seq DESC LIMIT {limit}"

        below = f"seq < ${len(params) + 1}"
        from_floor = f"seq >= ${len(params) + 2}"
        async with self.listing.read(), self.database.transaction() as conn:
            # bounded, and planned for the values given (a generic plan guesses every selectivity)
            await conn.execute(
                "SELECT set_config('statement_timeout', $1, true),"
                " set_config('plan_cache_mode', 'force_custom_plan', true)",
                self.listing.setting,
            )
            before = query.before_seq
            rows: list[asyncpg.Record] = []
            if exact:
                if before is None:
                    rows = await conn.fetch(statement([]), *params, want)
                else:
                    rows = await conn.fetch(statement([below]), *params, before, want)
            else:
                if before is None:  # the head row (0005): one lookup by key
                    head = await conn.fetchval(f"SELECT seq FROM {self.schema}.chain_head")
                    before = head + 1 if head is not None else None
                if before is None:  # no head row (removed by the owner): the matches as a set
                    rows = await conn.fetch(statement([], as_set=True), *params, want)
                else:
                    floor = max(1, before - BAND)
                    rows = await conn.fetch(statement([below, from_floor]), *params, before, floor, want)
                    if len(rows) < want and floor > 1:
                        rows += await conn.fetch(
                            statement([below], as_set=True), *params, floor, want - len(rows)
                        )
        page = [RecordRow.of(row) for row in rows[: query.limit]]
        next_cursor = encode_cursor(page[-1].seq) if len(rows) > query.limit else None
        return page, next_cursor

    async def checkpoint_page(self, limit: int, before: int | None) -> Page:
        """A page of ``GET /audit/checkpoints`` (:meth:`CheckpointStore.page`) as a listing: under
        :attr:`listing`'s turns and time limit."""
        async with self.listing.read(), self.database.transaction() as conn:
            await conn.execute("SELECT set_config('statement_timeout', $1, true)", self.listing.setting)
            return await self.checkpoints.page(conn, limit, before)

    # ---- verify --------------------------------------------------------------------------------

    async def verify_on_request(
        self, anchor: Anchor | None = None, trail: CheckpointTrail | None = None
    ) -> Verification:
        """:meth:`verify` for ``GET /audit/verify``, under :attr:`verifying` (:mod:`audit.bounds`):
        with a free verification turn and a listing turn (else :class:`~audit.bounds.Busy`), the whole
        walk within the verification time limit (else :class:`~audit.bounds.TooLong`, and nothing is
        observed: a walk cut short says nothing about the chain). The background verifier and the
        checkpoint signer walk unbounded: they are one each, on their own schedule."""
        async with self.verifying.read():
            return await self.verify(anchor=anchor, trail=trail, statement_timeout=self.verifying.setting)

    async def verify_range(
        self,
        wanted: RangeRequest,
        keys: PublicKeys,
        prefetch: int = 1000,
        *,
        retained: Mapping[int, str] | None = None,
        bounded: bool = True,
    ) -> Verification:
        """A range of the chain walked on request (``GET /audit/verify?from_checkpoint=|since=|until=``,
        :mod:`audit.ranges`), under the same bound as a whole walk (:meth:`verify_on_request`): the
        anchor (a checkpoint whose signature verifies, or the chain's start) found and the range
        walked from it in one snapshot. :class:`~audit.ranges.BadRange` when the range names nothing
        on this chain (a position beyond the head, a checkpoint that does not exist).

        ``bounded=False``: no turn and no time limit, as the offline whole walk (``python -m audit
        verify --from-checkpoint|--since|--until``, outside the service, where nobody else shares the
        pool); ``retained``: the checkpoints kept outside the database that it holds the range's to
        (:meth:`audit.ranges.Origin.trail`).

        ``audit_chain_ok`` is the whole chain's verdict: a range found broken sets it to 0 (a record
        or a checkpoint is wrong, wherever the rest stands), a range found intact leaves it alone
        (it says nothing of the records before it)."""
        if bounded:
            async with self.verifying.read():
                result = await self._ranged(wanted, keys, prefetch, self.verifying.setting, retained)
        else:
            result = await self._ranged(wanted, keys, prefetch, None, retained)
        if result.by_caller_anchor:
            log.warning(
                "audit chain does not hold the anchor given",
                extra={"first_bad": result.first_bad, "reason": result.reason},
            )
        elif not result.ok:
            metrics.verifications.labels("broken").inc()
            metrics.chain_ok.set(0)
        return result

    async def _ranged(
        self,
        wanted: RangeRequest,
        keys: PublicKeys,
        prefetch: int,
        statement_timeout: str | None,
        retained: Mapping[int, str] | None,
    ) -> Verification:
        async with self.database.transaction(isolation="repeatable_read") as conn:
            if statement_timeout is not None:
                await conn.execute("SELECT set_config('statement_timeout', $1, true)", statement_timeout)
            # the last record, by the primary key (not chain_head, which the records must agree with)
            head: int = await conn.fetchval(f"SELECT coalesce(max(seq), 0) FROM {self.schema}.records")
            for parameter, seq in (("since", wanted.since), ("until", wanted.until)):
                if seq is not None and seq > head:
                    raise BadRange(parameter, f"is beyond the head of the chain (record {head})")
            origin = await find_origin(conn, self.checkpoints, keys, wanted, head)
            if origin.problem is not None:
                return self._unanchored(origin, keys)
            start = origin.start
            end = wanted.until if wanted.until is not None else head
            if end < start:
                raise BadRange("until", f"is before the range's start (record {start}, its anchor's)")
            given = wanted.anchor  # beyond the head it is reported missing (truncated), as ever
            if given is not None and given.seq < start:
                raise BadRange("anchor", f"lies before the range, which starts at record {start}")
            if given is not None and wanted.until is not None and given.seq > wanted.until:
                raise BadRange("anchor", f"lies beyond until (record {wanted.until})")
            result = await self._walk_on(
                conn,
                prefetch,
                wanted.anchor,
                origin.point,
                origin.trail(keys, retained),
                until=wanted.until,
                origin=origin,
            )
        covered = VerifiedRange(
            from_seq=start,
            to_seq=end,
            to_head=end == head,
            signed_through=(result.signed_through or None) if result.ok else None,
            anchor=origin.described(),
        )
        return replace(result, covered=covered)

    @staticmethod
    def _unanchored(origin: Origin, keys: PublicKeys) -> Verification:
        """The range's checkpoint anchors nothing: nothing is walked, the answer says why."""
        trail = CheckpointTrail(keys, checked=1, problems=[origin.problem or ""])
        if origin.first_bad is None:  # the checkpoint is at fault
            trail.signatures_valid = False
        return Verification(
            False, 0, origin.first_bad, origin.problem, trail=trail, records_match=origin.first_bad is None
        )

    async def verify(
        self,
        prefetch: int = 1000,
        anchor: Anchor | None = None,
        since: Anchor | None = None,
        trail: CheckpointTrail | None = None,
        observe: bool = True,
        statement_timeout: str | None = None,
    ) -> Verification:
        """Recompute the chain, streaming rows through a server-side cursor.

        Runs in one REPEATABLE READ snapshot, so records appended meanwhile neither appear half-way
        nor make the walk endless. Reports the first seq whose record is missing, out of place,
        altered (hash no longer matches its content), unlinked (prev_hash differs) or a second record
        of an event recorded before (:mod:`audit.duplicates`), or, given an ``anchor`` seen earlier,
        where the chain no longer holds it. ``since`` (a head verified before) starts the walk there
        instead of at seq 1: only what was appended since is recomputed (and looked up, for an event
        recorded twice), and that head must still be in place, unchanged.

        With a ``trail`` the signed checkpoints stream in step (:mod:`audit.trail`): the record at
        each checkpoint's seq must carry the head hash that was signed. A chain rewritten and
        re-hashed after a checkpoint was signed is reported with ``first_bad`` the first record after
        the last checkpoint that still matches (the rewrite began there or later, and no later than
        the checkpoint that no longer matches). Problems with the checkpoints themselves make the
        result broken too, with ``first_bad`` unset.

        ``observe=False`` keeps the walk out of ``audit_chain_ok`` and its counter: the checkpoint
        signer checks only what it is about to sign, and must not mask what a full walk found.
        ``statement_timeout``: each statement of the walk's transaction runs under it (a setting's
        text, ``"25000ms"``).
        """
        result = await self._walk(prefetch, anchor, since, trail, statement_timeout)
        if not observe:
            return result
        if result.by_caller_anchor:
            log.warning(
                "audit chain does not hold the anchor given",
                extra={"first_bad": result.first_bad, "reason": result.reason},
            )
            return result
        metrics.verifications.labels("ok" if result.ok else "broken").inc()
        metrics.chain_ok.set(1 if result.ok else 0)
        return result

    async def _walk(
        self,
        prefetch: int,
        anchor: Anchor | None,
        since: Anchor | None,
        trail: CheckpointTrail | None,
        statement_timeout: str | None,
    ) -> Verification:
        async with self.database.transaction(isolation="repeatable_read") as conn:
            if statement_timeout is not None:
                await conn.execute("SELECT set_config('statement_timeout', $1, true)", statement_timeout)
            return await self._walk_on(conn, prefetch, anchor, since, trail)

    async def _walk_on(
        self,
        conn: Connection,
        prefetch: int,
        anchor: Anchor | None,
        since: Anchor | None,
        trail: CheckpointTrail | None,
        *,
        until: int | None = None,
        origin: Origin | None = None,
    ) -> Verification:
        """The walk of :meth:`verify` in ``conn``'s transaction; up to ``until`` (else to the head).
        ``origin``: ``since`` is a ranged walk's checkpoint anchor, which the messages name."""
        checked = 0
        expected = since.seq if since is not None else 1
        prev_hash: str | None = None if since is not None else GENESIS
        points = [(point, point is anchor) for point in (since, anchor) if point is not None]
        feed = CheckpointFeed(self.checkpoints, trail, until) if trail is not None else None
        matched = since.seq if since is not None else 0  # the last seq a signed checkpoint vouched for
        anchored = origin.checkpoint if origin is not None else None

        def broken(
            first_bad: int | None, reason: str, *, by_caller_anchor: bool = False, records_match: bool = False
        ) -> Verification:
            return Verification(
                False,
                checked,
                first_bad,
                reason,
                by_caller_anchor=by_caller_anchor,
                trail=trail,
                records_match=records_match,
                signed_through=matched,
            )

        # an event in the trail twice: none while records.id is unique (one catalog lookup)
        twice = await recorded_twice(conn, self.schema, expected, until)
        bounds = "seq >= $1" if until is None else "seq >= $1 AND seq <= $2"
        cursor = conn.cursor(
            f"SELECT {WALK_COLUMNS} FROM {self.schema}.records WHERE {bounds} ORDER BY seq",
            *((expected,) if until is None else (expected, until)),
            prefetch=prefetch,
        )
        async for row in cursor:
            seq = row["seq"]
            if seq != expected:
                return broken(expected, f"record {expected} is missing")
            checked += 1
            if prev_hash is not None and row["prev_hash"] != prev_hash:
                return broken(seq, "prev_hash does not match the previous record's hash")
            if sha256(canonical_text(*row[:HASHED]).encode()).hexdigest() != row["hash"]:
                return broken(seq, "hash does not match the record's content")
            if twice is not None and seq == twice.again:
                return broken(seq, twice.reason)
            for point, given in points:
                if seq == point.seq and row["hash"] != point.hash:
                    if anchored is not None and point is since:
                        return broken(
                            seq,
                            f"record {seq} differs from signed checkpoint {anchored.number}, the range's "
                            "anchor: the history up to it was rewritten and the chain recomputed after it "
                            "was signed (verify from an earlier checkpoint to find where)",
                        )
                    return broken(
                        seq,
                        "hash differs from the anchor: the chain was rewritten",
                        by_caller_anchor=given,
                        records_match=not given,
                    )
            if feed is not None:
                for signed in await feed.at(conn, seq):
                    if row["hash"] != signed.head:
                        first = matched + 1
                        span = f"record {seq}" if first == seq else f"records {first} to {seq}"
                        return broken(
                            first,
                            f"{span} differ from signed checkpoint {signed.number}: the history was "
                            "rewritten and the chain recomputed after it was signed",
                        )
                    matched = seq
            prev_hash = row["hash"]
            expected += 1
        unmet = await feed.rest(conn) if feed is not None else []
        for point, given in points:
            if point.seq >= expected:
                return broken(
                    point.seq,
                    f"anchor record {point.seq} is missing: the chain was truncated",
                    by_caller_anchor=given,
                    records_match=not given,
                )
        if unmet:
            last = max(unmet, key=lambda e: e.seq)
            return broken(
                expected,
                f"record {expected} is missing: signed checkpoint {last.number} covers the chain up to seq "
                f"{last.seq}, so records were removed",
            )
        head = Anchor(seq=expected - 1, hash=prev_hash) if prev_hash is not None and expected > 1 else None
        if trail is not None and not trail.ok:
            return Verification(
                False, checked, None, trail.problems[0], head=head, trail=trail, signed_through=matched
            )
        return Verification(True, checked, head=head, trail=trail, signed_through=matched)
