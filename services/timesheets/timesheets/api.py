"""The public routes (reached through the gateway as ``/api/timesheets…``).

Each handler states its scope next to it (``requires_scope``); the gateway checks the same scopes,
this is defence in depth. Ownership is (issuer, subject) of the verified identity, always.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from svckit.authz import identity_of, require_scope, requires_scope
from svckit.body import parse_body
from svckit.contracts.fields import path_uuid
from svckit.contracts.timesheets import ListQuery, UploadIn, UploadResult, UploadRow
from svckit.db import Connection, Database, OutcomeUnknown
from svckit.outbox import OutboxRelay, enqueue
from svckit.problems import MAX_FIELD_ERRORS, Problem, model_errors, validation_problem
from svckit.query import parse_query
from svckit.responses import json_response, send_json

from . import cursor, daycap, events, idempotency, store
from .intake import read_entry
from .metrics import entries_created, entries_created_api, entries_deleted, refusals
from .representation import entry_json, entry_of, page_json
from .settings import TimesheetsSettings

APPROVE = "approve:timesheets"


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def events_committed(request: Request) -> None:
    """A change and its audit event (``store``'s statements built with ``with_enqueued``, which send
    no NOTIFY) have committed: this process's outbox relay delivers it now."""
    relay: OutboxRelay = request.app.state.relay
    relay.wake()


def _ttl(request: Request) -> dt.timedelta:
    settings: TimesheetsSettings = request.app.state.settings
    return dt.timedelta(hours=settings.idempotency_ttl_hours)


def entry_id_of(request: Request) -> uuid.UUID:
    """The path's entry id; anything that is not a UUID names no entry (404, nothing leaked)."""
    entry_id = path_uuid(request.path_params["id"])
    if entry_id is None:
        raise Problem(404, "Not Found", "No such timesheet entry.")
    return entry_id


@contextlib.asynccontextmanager
async def outcome_located(location: str) -> AsyncIterator[None]:
    """A create whose outcome stayed unknown names where the entry would be, so the client can look."""
    try:
        yield
    except OutcomeUnknown as exc:
        raise Problem(
            503,
            "Service Unavailable",
            "The database went away while the entry was being committed; whether it was stored is not "
            "known yet. Look it up at the Location given, or repeat with the same Idempotency-Key.",
            headers={"Retry-After": "2", "Location": location},
            outcome="unknown",
        ) from exc


def not_found() -> Problem:
    return Problem(404, "Not Found", "No such timesheet entry.")


READ = "read:timesheets"
CREATE = "create:timesheets"


async def entries_page(request: Request) -> str:
    """``GET /timesheets``: the caller's page of entries, as JSON."""
    identity = require_scope(request, READ)
    query = parse_query(request, ListQuery)
    after = cursor.decode(query.cursor) if query.cursor else None
    if query.from_ and query.to and query.from_ > query.to:
        raise validation_problem(
            [
                {
                    "field": "to",
                    "loc": ["query", "to"],
                    "message": "must not be before 'from'",
                    "type": "range",
                }
            ],
            "The query string has invalid parameters.",
        )
    async with database_of(request).connection() as conn:
        rows = await store.list_owned(conn, identity.principal, query, after)
    return page_json(rows, query.limit)


async def new_entry(request: Request) -> tuple[str, str] | Response:
    """``POST /timesheets``: the entry created, as JSON, and its location; or, for a repeated
    Idempotency-Key, the earlier answer to replay."""
    identity = require_scope(request, CREATE)
    key = idempotency.key_from(request)
    entry = await read_entry(request)
    entry_id = uuid.uuid4()
    # Relative to the request URI, so it resolves right both directly (/timesheets) and through
    # the gateway (/api/timesheets) without the service knowing the public prefix.
    location = f"timesheets/{entry_id}"

    replaying = False  # an Idempotency-Key's earlier answer: stored already, whatever this COMMIT does

    async def committed(conn: Connection) -> bool:
        return replaying or await store.entry_exists(conn, entry_id)

    arguments = store.create_arguments(
        identity.principal,
        identity.name,
        entry,
        client_id=identity.client_id,
        entry_id=entry_id,
        event=events.created(identity, entry_id, entry),
    )
    database = database_of(request)
    try:
        if key is None:
            # One statement in autocommit: the entry, its audit event and the relays' NOTIFY commit
            # together by themselves, in one round trip (the day's limit checked inside it).
            async with outcome_located(location):
                record = await database.write_once(
                    store.CREATE_ENTRY, *arguments, committed=committed, reread=store.entry_record(entry_id)
                )
            assert record is not None
            text = entry_json(store.EntryRow.of(record))
        else:

            async def claim_and_create(conn: Connection) -> Response | str:
                """Run again by the kit should the server roll it back for a conflict: the key's
                claim is rolled back with the rest, so the run again claims it anew."""
                nonlocal replaying
                fingerprint = idempotency.fingerprint("create", entry.canonical())
                outcome = await idempotency.begin(
                    conn, identity.principal, key, "create", fingerprint, _ttl(request)
                )
                if isinstance(outcome, Response):
                    replaying = True
                    return outcome
                created = entry_json(await store.insert_entry(conn, arguments))
                await outcome.save(conn, 201, created, location)  # the very text answered, for replays
                return created

            async with outcome_located(location):
                done = await database.run_transaction(claim_and_create, committed=committed)
            if isinstance(done, Response):
                return done
            text = done
    except asyncpg.CheckViolationError as exc:
        # The day is full (the key's claim rolled back with it: a 422 is not kept for replays).
        if not daycap.is_refusal(exc):
            raise
        refusals.labels(daycap.ERROR_TYPE, "api").inc()
        raise daycap.refusal(exc, entry.date, entry.hours) from None
    events_committed(request)
    entries_created_api.inc()
    return text, location


class ListEntries:
    """``GET /timesheets``, a raw ASGI endpoint that the kit's front layer calls straight after the
    identity check (``create_service_app(direct_routes=...)``): without Starlette's exception
    middleware, router, request-response wrapper and response object, which cost about as much as
    everything this route decides. The same checks as a decorated handler (the scope, 403 first),
    errors raised as problems answered by the app's handlers, the same messages as ``json_response``
    (``tests/test_direct.py`` holds the two ways in to the same answers)."""

    required_scope = READ

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, await entries_page(Request(scope, receive)))


class CreateEntry:
    """``POST /timesheets``, a raw ASGI endpoint like :class:`ListEntries`."""

    required_scope = CREATE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        made = await new_entry(Request(scope, receive))
        if isinstance(made, Response):  # an Idempotency-Key's earlier answer
            await made(scope, receive, send)
            return
        body, location = made
        await send_json(send, body, 201, ((b"location", location.encode("latin-1")),))


@requires_scope(READ)
async def get_entry(request: Request) -> Response:
    """The caller's own entry, or one awaiting their decision if they approve; otherwise 404."""
    identity = identity_of(request)
    entry_id = entry_id_of(request)
    async with database_of(request).connection() as conn:
        row = await store.get_entry(conn, entry_id)
    if row is None or not row.live:
        raise not_found()
    awaiting_caller = identity.has(APPROVE) and row.status == "submitted" and row.owner != identity.principal
    if row.owner != identity.principal and not awaiting_caller:
        raise not_found()
    return json_response(entry_json(row))


@requires_scope("delete:timesheets")
async def delete_entry(request: Request) -> Response:
    identity = identity_of(request)
    entry_id = entry_id_of(request)

    async def committed(conn: Connection) -> bool:
        return await store.entry_deleted(conn, entry_id)

    async def delete(conn: Connection) -> None:
        # run again on a conflict (svckit.db.Database.run_transaction): the row is read anew each time
        row = await store.get_entry(conn, entry_id, lock=True)
        if row is None or not row.live:
            raise not_found()
        if row.owner != identity.principal:
            raise not_found()
        if row.status == "approved":
            raise Problem(409, "Conflict", "An approved entry cannot be deleted.", status_text="approved")
        await store.mark_deleted(conn, entry_id, events.deleted(identity, row))

    await database_of(request).run_transaction(delete, committed=committed)
    events_committed(request)
    entries_deleted.inc()
    return Response(status_code=204)


def validate_rows(upload: UploadIn) -> list[UploadRow]:
    """Every row checked; any bad row refuses the batch with the errors of all rows (the first
    ``MAX_FIELD_ERRORS`` listed, all counted: only those listed are converted)."""
    rows: list[UploadRow] = []
    errors: list[dict[str, Any]] = []
    bad_rows = total = 0
    for index, raw in enumerate(upload.entries):
        try:
            rows.append(UploadRow.model_validate(raw))
        except ValidationError as exc:
            bad_rows += 1
            total += exc.error_count()
            if len(errors) < MAX_FIELD_ERRORS:
                left = MAX_FIELD_ERRORS - len(errors)
                errors += model_errors(UploadRow, raw, exc, ("entries", index), left)
    if bad_rows:
        raise validation_problem(
            errors,
            f"{bad_rows} of {len(upload.entries)} rows are invalid; nothing was stored.",
            total=total,
        )
    return rows


@requires_scope("batch:upload")
async def upload_entries(request: Request) -> Response:
    """A machine client (acting as itself) stores entries for named users, all or nothing."""
    identity = identity_of(request)
    if identity.kind != "client":
        raise Problem(403, "Forbidden", "Batch upload is for machine clients acting as themselves.")
    key = idempotency.key_from(request)
    upload = await parse_body(request, UploadIn)
    rows = validate_rows(upload)
    upload_id = uuid.uuid4()

    replaying = False  # an Idempotency-Key's earlier answer: stored already, whatever this COMMIT does

    async def committed(conn: Connection) -> bool:
        return replaying or await store.upload_exists(conn, upload_id)

    async def store_all(conn: Connection) -> Response | tuple[str, int]:
        """The transaction, run again by the kit should the server roll it back for a conflict
        (``run_transaction``: its day locks are taken in one order, so none is expected). Nothing in
        it acts outside the transaction: the refusal's counter goes with a 422, which ends it."""
        nonlocal replaying
        claim = None
        if key is not None:
            fingerprint = idempotency.fingerprint("upload", [row.canonical() for row in rows])
            outcome = await idempotency.begin(
                conn, identity.principal, key, "upload", fingerprint, _ttl(request)
            )
            if isinstance(outcome, Response):
                replaying = True
                return outcome
            claim = outcome
        days = list({(row.user, row.date) for row in rows})  # locked in bucket order by the database
        over = daycap.row_errors(rows, await store.day_totals(conn, identity.issuer, days))
        if over:  # the days stay locked until this transaction ends: nothing can slip in meanwhile
            refusals.labels(daycap.ERROR_TYPE, "upload").inc()
            raise validation_problem(
                over,
                f"{len(over)} of {len(rows)} rows would take a day past {daycap.hours_text(daycap.LIMIT)} "
                "hours; nothing was stored.",
            )
        stored = await store.insert_upload(
            conn, identity.issuer, rows, client_id=identity.client_id, upload_id=upload_id
        )
        await enqueue(conn, events.uploaded(identity, upload_id, stored))
        result = UploadResult(upload_id=upload_id, count=len(stored), items=[entry_of(row) for row in stored])
        text = result.model_dump_json()  # the answer, and the very text kept for replays
        if claim is not None:
            await claim.save(conn, 201, text)
        return text, len(stored)

    done = await database_of(request).run_transaction(store_all, committed=committed)
    if isinstance(done, Response):
        return done
    text, count = done
    entries_created.labels("upload").inc(count)
    return json_response(text, 201)
