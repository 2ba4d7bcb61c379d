"""The reference for the timesheets service's benchmark: the least a same-stack app can do.

Starlette + asyncpg, served by uvicorn like the services (httptools, uvloop when installed, no
access log), with the kit's pool (:class:`svckit.db.Database`: same size, same reset hook) and the
service's own SQL text (``timesheets.store``) in the same transactions: a create is the entry +
outbox + NOTIFY statement in autocommit (as the service does without an Idempotency-Key); a list is
one query. What it leaves out is what makes
the service a service: identity verification (it reads the subject from the headers unverified),
body validation, the contract's response models, metrics, logging, the outbox relay. The answers
are ``json.dumps`` of the rows.

``python -m bench._reference_app`` with ``DATABASE_URL`` (the benchmark's database) and ``PORT``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svckit.db import Database
from svckit.identity import ISSUER, SUBJECT
from timesheets.store import COLUMNS, CREATE_ENTRY, ORDER

#: the query ``timesheets.store.list_owned`` builds for a first page without filters
LIST_FIRST_PAGE = (
    f"SELECT {COLUMNS} FROM entries WHERE owner_issuer = $1 AND owner_subject = $2 AND deleted_at IS NULL"
    f" {ORDER} LIMIT $3"
)


def plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def answer(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document, default=plain), status, media_type="application/json")


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def create(request: Request) -> Response:
    body = json.loads(await request.body())
    issuer, subject = request.headers[ISSUER], request.headers[SUBJECT]
    entry_id, event_id = uuid.uuid4(), uuid.uuid4()
    payload = json.dumps({"id": str(event_id), "action": "timesheet.created", "resource": str(entry_id)})
    async with database_of(request).connection() as conn:
        row = await conn.fetchrow(
            CREATE_ENTRY,
            entry_id,
            issuer,
            subject,
            "",
            dt.date.fromisoformat(body["date"]),
            body["project"],
            body["hours"],
            body.get("notes"),
            "timesheets-spa",
            event_id,
            dt.datetime.now(dt.UTC),
            payload,
        )
    return answer(dict(row) if row is not None else {}, 201)


async def list_entries(request: Request) -> Response:
    limit = int(request.query_params.get("limit", "20"))
    issuer, subject = request.headers[ISSUER], request.headers[SUBJECT]
    async with database_of(request).connection() as conn:
        rows = await conn.fetch(LIST_FIRST_PAGE, issuer, subject, limit + 1)
    return answer({"items": [dict(row) for row in rows[:limit]], "next_cursor": None})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    database = Database(os.environ["DATABASE_URL"], schema="timesheets", application_name="bench-reference")
    await database.wait_connected(30)
    app.state.database = database
    yield
    await database.close()


app = Starlette(
    routes=[
        Route("/timesheets", create, methods=["POST"]),
        Route("/timesheets", list_entries, methods=["GET"]),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_level="warning",
        access_log=False,
        server_header=False,
    )
