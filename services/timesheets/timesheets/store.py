"""SQL over the ``timesheets`` schema. Every function takes the caller's connection/transaction.

Row locks (``FOR UPDATE``) serialise the two ways an entry can change after creation, deletion and a
decision, so an approve racing a delete always sees the other's committed result: exactly one wins.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import asyncpg
from svckit.contracts.audit import AuditEvent
from svckit.contracts.timesheets import ApplyDecision, EntryIn, ListQuery, UploadRow
from svckit.db import Connection
from svckit.outbox import event_parameters, with_enqueued

from . import daycap
from .cursor import Position

Principal = tuple[str, str]


class EntryRow(NamedTuple):
    """One row of ``entries`` as the handlers use it (deleted rows too: callers decide).

    A named tuple rather than a frozen dataclass: as immutable, and made from a record by one C call
    (a frozen dataclass's ``__init__`` sets its 18 fields one ``object.__setattr__`` at a time: ~4 µs
    a row against well under one, 21 rows per page)."""

    id: uuid.UUID
    owner_issuer: str
    owner_subject: str
    owner_name: str
    date: dt.date
    project: str
    hours: Decimal
    notes: str | None
    status: str
    decision_id: uuid.UUID | None
    decided_by_issuer: str | None
    decided_by_subject: str | None
    decided_by_name: str | None
    decided_at: dt.datetime | None
    decision_comment: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None

    @classmethod
    def of(cls, record: asyncpg.Record) -> EntryRow:
        """From a row selected with :data:`COLUMNS` (its values in the fields' order)."""
        return _new(cls, record)

    @property
    def owner(self) -> Principal:
        return (self.owner_issuer, self.owner_subject)

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    @property
    def position(self) -> Position:
        """Where the entry sits in the listings' order (what a cursor after it names)."""
        return Position(self.date, self.created_at, self.id)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An earlier request's claim on an Idempotency-Key, with the response to replay."""

    operation: str
    fingerprint: str
    status_code: int
    response: str
    location: str | None


# The select list is the row type's fields, in order, so ``EntryRow.of`` can take values positionally.
COLUMNS = ", ".join(EntryRow._fields)

#: a row type from a record's values as they come (a record iterates over its values): what
#: ``EntryRow._make`` does but its length check, in one C call instead of two Python frames per row
#: (a page has 21); the length is the select list's, :data:`COLUMNS`, always the fields'
_new: Callable[[type[EntryRow], asyncpg.Record], EntryRow] = tuple.__new__
_entry_row = functools.partial(_new, EntryRow)


def rows_of(records: Iterable[asyncpg.Record]) -> list[EntryRow]:
    """``[EntryRow.of(record) for record in records]``, in one C loop."""
    return list(map(_entry_row, records))


ORDER = "ORDER BY date DESC, created_at DESC, id DESC"


#: A new entry and its audit event in one statement (``$10`` to ``$12``: the event's outbox values).
#: The hours go in through ``admit_day_hours`` (migrations 0005, 0006): under the owner's day lock it
#: checks that the day keeps to ``$13``, the limit (:data:`timesheets.daycap.LIMIT`, the contract's
#: :data:`svckit.contracts.timesheets.DAY_HOURS_LIMIT`: the database holds no copy of the number), or
#: fails the statement with the ``entries_day_hours`` check violation (``daycap.refusal``); no round
#: trip of its own.
CREATE_ENTRY = with_enqueued(
    f"""INSERT INTO entries (id, owner_issuer, owner_subject, owner_name, date, project, hours, notes,
                             source, created_by_client)
        VALUES ($1, $2, $3, $4, $5, $6, admit_day_hours($2, $3, $5, $7, $13::numeric), $8, 'api', $9)
        RETURNING {COLUMNS}""",
    first=10,
)


def create_arguments(
    owner: Principal,
    owner_name: str,
    entry: EntryIn,
    *,
    client_id: str,
    entry_id: uuid.UUID,
    event: tuple[uuid.UUID, dt.datetime, str],
) -> tuple[Any, ...]:
    """The parameters of :data:`CREATE_ENTRY`. ``entry_id`` is chosen by the caller, so that after a
    lost answer it knows what to look for; ``event`` (the creation's audit event, as the outbox's
    values: ``event_parameters`` of it, or ``svckit.contracts.audit.outbox_values``) goes to the
    outbox in the same statement; the day's limit last (read here, at each call, from ``daycap``)."""
    return (
        entry_id,
        owner[0],
        owner[1],
        owner_name,
        entry.date,
        entry.project,
        entry.hours,
        entry.notes,
        client_id,
        *event,
        daycap.LIMIT,
    )


def entry_record(entry_id: uuid.UUID) -> Callable[[Connection], Awaitable[asyncpg.Record | None]]:
    """Reads the entry's row as :data:`CREATE_ENTRY` returns it (after a create's answer was lost)."""

    async def reread(conn: Connection) -> asyncpg.Record | None:
        return await conn.fetchrow(f"SELECT {COLUMNS} FROM entries WHERE id = $1", entry_id)

    return reread


async def insert_entry(conn: Connection, arguments: tuple[Any, ...]) -> EntryRow:
    """:data:`CREATE_ENTRY` inside the caller's transaction (with an idempotency key)."""
    row = await conn.fetchrow(CREATE_ENTRY, *arguments)
    assert row is not None
    return EntryRow.of(row)


async def day_totals(
    conn: Connection, issuer: str, days: Sequence[tuple[str, dt.date]]
) -> dict[tuple[str, dt.date], Decimal]:
    """The hours recorded on each (subject, date) of ``issuer``'s users, every day's lock bucket taken
    first (until the caller's transaction ends; ``lock_days``, in bucket order, so that two uploads
    sharing buckets never deadlock, and at most 128 row locks whatever the upload's size: migration
    0005), then each day summed: one statement for all of them."""
    records = await conn.fetch(
        """WITH locked AS (SELECT lock_days($1, $2::text[], $3::date[]) AS buckets)
           SELECT k.subject, k.date, day_hours_locked($1, k.subject, k.date) AS total
           FROM locked, unnest($2::text[], $3::date[]) WITH ORDINALITY AS k(subject, date, n)""",
        issuer,
        [subject for subject, _ in days],
        [date for _, date in days],
    )
    return {(record["subject"], record["date"]): record["total"] for record in records}


async def insert_upload(
    conn: Connection, issuer: str, rows: Sequence[UploadRow], *, client_id: str, upload_id: uuid.UUID
) -> list[EntryRow]:
    """All rows in one statement (``unnest``): 1,000 entries cost one round trip, not 1,000."""
    records = await conn.fetch(
        f"""INSERT INTO entries (id, owner_issuer, owner_subject, date, project, hours, notes,
                                 source, created_by_client, upload_id)
            SELECT id, $2, subject, date, project, hours, notes, 'upload', $3, $4
            FROM unnest($1::uuid[], $5::text[], $6::date[], $7::text[], $8::numeric[], $9::text[])
                 WITH ORDINALITY AS r(id, subject, date, project, hours, notes, n)
            ORDER BY n
            RETURNING {COLUMNS}""",
        [uuid.uuid4() for _ in rows],
        issuer,
        client_id,
        upload_id,
        [row.user for row in rows],
        [row.date for row in rows],
        [row.project for row in rows],
        [row.hours for row in rows],
        [row.notes for row in rows],
    )
    return rows_of(records)


async def list_owned(
    conn: Connection, owner: Principal, query: ListQuery, after: Position | None
) -> list[EntryRow]:
    """One page (plus one row to tell whether another page exists) of the owner's live entries."""
    conditions = ["owner_issuer = $1", "owner_subject = $2", "deleted_at IS NULL"]
    args: list[Any] = [owner[0], owner[1]]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.from_ is not None:
        conditions.append(f"date >= {arg(query.from_)}")
    if query.to is not None:
        conditions.append(f"date <= {arg(query.to)}")
    if query.status is not None:
        conditions.append(f"status = {arg(query.status)}")
    if query.project is not None:
        conditions.append(f"project = {arg(query.project)}")
    if after is not None:
        keyset = f"{arg(after.date)}, {arg(after.created_at)}, {arg(after.id)}"
        conditions.append(f"(date, created_at, id) < ({keyset})")
    limit = arg(query.limit + 1)
    records = await conn.fetch(
        f"SELECT {COLUMNS} FROM entries WHERE {' AND '.join(conditions)} {ORDER} LIMIT {limit}", *args
    )
    return rows_of(records)


#: submitted live entries of everyone but one approver (``$1``, ``$2``), ``$3`` of them; ``{keyset}``:
#: nothing for the first page, the condition on ``$4``-``$6`` after a cursor
PENDING = f"""SELECT {COLUMNS} FROM entries
    WHERE status = 'submitted' AND deleted_at IS NULL
      AND NOT (owner_issuer = $1 AND owner_subject = $2) {{keyset}}
    {ORDER} LIMIT $3"""
PENDING_FIRST_PAGE = PENDING.format(keyset="")
PENDING_AFTER = PENDING.format(keyset="AND (date, created_at, id) < ($4, $5, $6)")

#: one entry by id, deleted or not; and the same, row-locked
GET_ENTRY = f"SELECT {COLUMNS} FROM entries WHERE id = $1"
GET_ENTRY_LOCKED = GET_ENTRY + " FOR UPDATE"


async def list_pending(
    conn: Connection, exclude: Principal, limit: int, after: Position | None
) -> list[EntryRow]:
    """Submitted live entries of everyone but ``exclude`` (the approver), newest date first."""
    if after is None:
        records = await conn.fetch(PENDING_FIRST_PAGE, exclude[0], exclude[1], limit + 1)
    else:
        records = await conn.fetch(
            PENDING_AFTER, exclude[0], exclude[1], limit + 1, after.date, after.created_at, after.id
        )
    return rows_of(records)


async def get_entry(conn: Connection, entry_id: uuid.UUID, *, lock: bool = False) -> EntryRow | None:
    """The entry, deleted or not (callers decide what a deleted one means); optionally row-locked."""
    record = await conn.fetchrow(GET_ENTRY_LOCKED if lock else GET_ENTRY, entry_id)
    return EntryRow.of(record) if record is not None else None


#: the entry marked deleted and its audit event (``$2`` to ``$4``) in one statement
MARK_DELETED = with_enqueued(
    "UPDATE entries SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()"
    " WHERE id = $1 RETURNING id",
    first=2,
)


async def mark_deleted(conn: Connection, entry_id: uuid.UUID, event: AuditEvent) -> None:
    """Inside the caller's transaction (the row is locked there), with the deletion's audit event."""
    await conn.execute(MARK_DELETED, entry_id, *event_parameters(event))


#: A decision applied in one statement that commits by itself (``Database.write_once``): the entry
#: (``$1``) takes the decision (``$2``-``$8``) only if it is live, still submitted and not the
#: approver's own (``$4``, ``$5``), with its audit event in the outbox (``$9``-``$11``: the event's
#: ``details`` get the entry's owner, date, project and hours from the row the update returns, as
#: :func:`timesheets.events.decided` documents). The row lock is the update's own: a concurrent
#: delete or decision is waited for and the conditions are checked again on the row it left. No row
#: back: nothing changed, the entry's state says why (:func:`apply_refusal`, read after the fact).
APPLY_DECISION = f"""WITH change AS (
    UPDATE entries
        SET status = $2, decision_id = $3, decided_by_issuer = $4, decided_by_subject = $5,
            decided_by_name = $6, decided_at = $7, decision_comment = $8,
            updated_at = clock_timestamp()
        WHERE id = $1 AND deleted_at IS NULL AND status = 'submitted'
          AND NOT (owner_issuer = $4 AND owner_subject = $5)
        RETURNING {COLUMNS}
),
queued AS (
    INSERT INTO outbox (id, occurred_at, payload)
    SELECT $9::uuid, $10::timestamptz,
           jsonb_set($11::jsonb, '{{details}}', ($11::jsonb -> 'details') || jsonb_build_object(
               'owner', jsonb_build_object('issuer', change.owner_issuer, 'subject', change.owner_subject),
               'date', change.date, 'project', change.project, 'hours', change.hours))
    FROM change
    RETURNING 1
)
SELECT change.* FROM change"""


def apply_arguments(
    entry_id: uuid.UUID, decision: ApplyDecision, event: tuple[uuid.UUID, dt.datetime, str]
) -> tuple[Any, ...]:
    """:data:`APPLY_DECISION`'s parameters."""
    return (
        entry_id,
        decision.decision,
        decision.decision_id,
        decision.by.issuer,
        decision.by.subject,
        decision.by.name or "",
        decision.at,
        decision.comment,
        *event,
    )


Refusal = Literal["gone", "applied", "decided", "own"]


def apply_refusal(row: EntryRow | None, decision: ApplyDecision) -> Refusal | None:
    """Why :data:`APPLY_DECISION` changed nothing, from the entry as it is now (in the order the
    route answers: no entry, this very decision applied already, deleted, decided, own entry); None
    when the entry would take it (it changed back under the statement: not a state an entry returns
    to, so this does not happen; the caller tries again)."""
    if row is None:
        return "gone"
    if row.decision_id == decision.decision_id:
        return "applied"
    if not row.live:
        return "gone"
    if row.status != "submitted":
        return "decided"
    if row.owner == (decision.by.issuer, decision.by.subject):
        return "own"
    return None


# ---- did it commit? (asked on a fresh connection after a COMMIT whose answer was lost) -------------


async def entry_exists(conn: Connection, entry_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM entries WHERE id = $1)", entry_id))


async def entry_deleted(conn: Connection, entry_id: uuid.UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM entries WHERE id = $1 AND deleted_at IS NOT NULL)", entry_id
        )
    )


async def upload_exists(conn: Connection, upload_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM entries WHERE upload_id = $1)", upload_id))


async def decision_recorded(conn: Connection, entry_id: uuid.UUID, decision_id: uuid.UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM entries WHERE id = $1 AND decision_id = $2)", entry_id, decision_id
        )
    )


# ---- idempotency keys ----------------------------------------------------------------------------


async def claim_key(
    conn: Connection,
    caller: Principal,
    key: str,
    operation: str,
    fingerprint: str,
    ttl: dt.timedelta,
) -> KeyRecord | None:
    """Claim ``key`` for this request inside the caller's transaction.

    Returns None when the claim succeeded (the request proceeds and must :func:`store_response`),
    otherwise the earlier request's record. A concurrent request with the same key blocks on the
    primary key until the first commits (then gets its record) or rolls back (then claims it). A record
    older than ``ttl`` is taken over, as if it had expired.
    """
    claimed = await conn.fetchval(
        """INSERT INTO idempotency_keys (caller_issuer, caller_subject, key, operation, fingerprint,
                                         status_code, response)
           VALUES ($1, $2, $3, $4, $5, 0, 'null')
           ON CONFLICT (caller_issuer, caller_subject, key) DO UPDATE
               SET operation = EXCLUDED.operation, fingerprint = EXCLUDED.fingerprint, status_code = 0,
                   response = 'null', location = NULL, created_at = now()
               WHERE idempotency_keys.created_at < now() - $6::interval
           RETURNING true""",
        caller[0],
        caller[1],
        key,
        operation,
        fingerprint,
        ttl,
    )
    if claimed:
        return None
    record = await conn.fetchrow(
        """SELECT operation, fingerprint, status_code, response, location
           FROM idempotency_keys WHERE caller_issuer = $1 AND caller_subject = $2 AND key = $3""",
        caller[0],
        caller[1],
        key,
    )
    assert record is not None  # the conflicting row exists: the INSERT above just conflicted with it
    return KeyRecord(**record)


async def store_response(
    conn: Connection, caller: Principal, key: str, status: int, body: str, location: str | None
) -> None:
    await conn.execute(
        """UPDATE idempotency_keys SET status_code = $4, response = $5, location = $6
           WHERE caller_issuer = $1 AND caller_subject = $2 AND key = $3""",
        caller[0],
        caller[1],
        key,
        status,
        body,
        location,
    )


async def purge_keys(conn: Connection, ttl: dt.timedelta) -> int:
    result = await conn.execute("DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", ttl)
    return int(result.split()[-1])
