"""The reference for the services' benchmarks: the least a same-stack app can do.

Starlette + asyncpg (+ aiohttp for the peer hop), served by uvicorn like the services (httptools,
uvloop when installed, no access log), with the kit's pool (:class:`svckit.db.Database`: same size,
same reset hook) and the services' own SQL text (``timesheets.store``, ``approvals.store``) in the
same transactions. What it leaves out is what makes a service a service: identity verification (it
reads the caller from the headers unverified), signing its own calls, body validation, the
contracts' response models, metrics, logging, the outbox relays. The answers are ``json.dumps`` of
the rows.

- timesheets (``bench/api.py``): a create is the entry + outbox statement in autocommit (as the
  service does without an Idempotency-Key); a list is one query;
- approvals (``bench/approvals.py``), built like the two services: the approvals routes call this
  same process's minimal ``/internal/timesheets/…`` routes over HTTP (one pooled aiohttp session),
  as the approvals service calls the timesheets service. The queue is the pending query behind one
  hop; a decision is the entry read (hop), the pending insert (the live-decision lookup only when it
  conflicts, as the service does), the apply (hop: ``timesheets.store.APPLY_DECISION``, the entry
  locked by its update with the decision and the outbox row, one statement in autocommit; the entry
  read again only when it changed nothing) and the applied + outbox statement.

``python -m bench._reference_app`` with ``DATABASE_URL`` (the benchmark's database) and ``PORT``.

With ``REFERENCE_IDENTITY=1`` the app honours DESIGN.md's identity contract, which the plain
reference skips (:func:`with_identity_contract`): every request passes the kit's identity gate of the
service whose route it is (``/approvals…`` the approvals service's, the rest the timesheets
service's: the signature, the body's digest, the nonce in that service's replay memory shared over
``REDIS_URL``; the pair keys from the environment, as the services read them), and its calls to its
own internal routes are signed as ``service:approvals`` (:func:`peer_headers`). The benchmarks
measure it as ``reference_identity`` beside the plain reference (the issue's targets stay against
the plain one).

With ``REFERENCE_RELAY=1`` as well (``reference_audited`` in ``bench/api.py``) it also does the
consistency rule's work (DESIGN.md: "a state change and its audit record commit together"; the
records "delivered later, exactly once in effect"): a create's outbox row is a whole audit event
(``svckit.contracts.audit.outbox_values``, as the service writes it, instead of a stub no one reads)
and the kit's relay (:class:`svckit.outbox.OutboxRelay`, as the service runs it) delivers it to an
audit service of its own (``AUDIT_URL``), which chains it. The service's creates pay for that; the
plain reference's do not, and its outbox rows stay unread. The issue's targets stay against the
plain reference; this case says what the gap is made of.
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
from urllib.parse import urlencode

import aiohttp
import uvicorn
import yarl
from approvals.settings import ApprovalsSettings
from approvals.store import LIVE_FOR_ENTRY, MARK_APPLIED, RECORD_PENDING
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from svckit.contracts.audit import outbox_values
from svckit.contracts.timesheets import DAY_HOURS_LIMIT
from svckit.db import Database
from svckit.http import HttpClient
from svckit.identity import (
    ISSUER,
    SUBJECT,
    Identity,
    IdentityMiddleware,
    IdentitySigner,
    IdentityVerifier,
)
from svckit.outbox import OutboxRelay
from svckit.replay import ReplayMemory
from svckit.settings import ServiceSettings
from timesheets.app import RELAY_LINGER_SECONDS
from timesheets.settings import TimesheetsSettings
from timesheets.store import (
    APPLY_DECISION,
    COLUMNS,
    CREATE_ENTRY,
    GET_ENTRY,
    ORDER,
    PENDING_FIRST_PAGE,
)

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


def created_event(
    entry_id: uuid.UUID, issuer: str, subject: str, body: dict[str, Any], audited: bool
) -> tuple[uuid.UUID, dt.datetime, str]:
    """A create's outbox values: a stub no one reads, or (``audited``) the whole event the audit
    service ingests, built as the service builds it."""
    if not audited:
        event_id = uuid.uuid4()
        payload = json.dumps({"id": str(event_id), "action": "timesheet.created", "resource": str(entry_id)})
        return event_id, dt.datetime.now(dt.UTC), payload
    return outbox_values(
        action="timesheet.created",
        resource_type="timesheet",
        resource_id=str(entry_id),
        outcome="success",
        actor=Identity(issuer, subject, "user", "timesheets-spa"),
        source="timesheets",
        details={
            "owner": {"issuer": issuer, "subject": subject},
            "date": body["date"],
            "project": body["project"],
            "hours": float(body["hours"]),
        },
    )


async def create(request: Request) -> Response:
    body = json.loads(await request.body())
    issuer, subject = request.headers[ISSUER], request.headers[SUBJECT]
    entry_id = uuid.uuid4()
    relay: OutboxRelay | None = request.app.state.relay
    event = created_event(entry_id, issuer, subject, body, audited=relay is not None)
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
            *event,
            decimal.Decimal(DAY_HOURS_LIMIT),
        )
    if relay is not None:
        relay.wake()  # as the service does after a commit (the NOTIFY wakes it too, from elsewhere)
    return answer(dict(row) if row is not None else {}, 201)


async def list_entries(request: Request) -> Response:
    limit = int(request.query_params.get("limit", "20"))
    issuer, subject = request.headers[ISSUER], request.headers[SUBJECT]
    async with database_of(request).connection() as conn:
        rows = await conn.fetch(LIST_FIRST_PAGE, issuer, subject, limit + 1)
    return answer({"items": [dict(row) for row in rows[:limit]], "next_cursor": None})


# ---- the timesheets half of approvals: the internal routes ---------------------------------------


def event_payload(
    request: Request,
    action: str,
    resource: uuid.UUID,
    *,
    source: str,
    issuer: str,
    subject: str,
    details: dict[str, Any],
) -> tuple[uuid.UUID, dt.datetime, str]:
    """An outbox row's values (id, occurred_at, payload): a small document, no model (with the
    ``details`` that ``APPLY_DECISION`` adds the entry's fields to); or, when this app relays its
    outboxes (``REFERENCE_RELAY``), the whole event the audit service ingests, built as the services
    build theirs (``outbox_values``)."""
    if request.app.state.relay is None:
        event_id = uuid.uuid4()
        payload = json.dumps(
            {"id": str(event_id), "action": action, "resource": str(resource), "details": {}}
        )
        return event_id, dt.datetime.now(dt.UTC), payload
    return outbox_values(
        action=action,
        resource_type="timesheet",
        resource_id=str(resource),
        outcome="success",
        actor=Identity(issuer, subject, "user", "timesheets-spa"),
        source=source,
        details=details,
    )


async def pending(request: Request) -> Response:
    params = request.query_params
    limit = int(params.get("limit", "20"))
    async with database_of(request).connection() as conn:
        rows = await conn.fetch(
            PENDING_FIRST_PAGE, params["exclude_issuer"], params["exclude_subject"], limit + 1
        )
    return answer({"items": [dict(row) for row in rows[:limit]], "next_cursor": None})


async def entry(request: Request) -> Response:
    async with database_of(request).connection() as conn:
        row = await conn.fetchrow(GET_ENTRY, uuid.UUID(request.path_params["id"]))
    return answer(dict(row)) if row is not None else Response(status_code=404)


async def apply_decision(request: Request) -> Response:
    body = json.loads(await request.body())
    entry_id = uuid.UUID(request.path_params["id"])
    async with database_of(request).connection() as conn:
        updated = await conn.fetchrow(
            APPLY_DECISION,
            entry_id,
            body["decision"],
            uuid.UUID(body["decision_id"]),
            body["issuer"],
            body["subject"],
            "",
            dt.datetime.fromisoformat(body["at"]),
            None,
            *event_payload(
                request,
                "timesheet.decided",
                entry_id,
                source="timesheets",
                issuer=body["issuer"],
                subject=body["subject"],
                details={
                    "decision": body["decision"],
                    "decision_id": body["decision_id"],
                    "via": "approvals",
                },
            ),
        )
        if updated is None:  # nothing changed: the entry's state says why (the refusal path)
            await conn.fetchrow(GET_ENTRY, entry_id)
            return Response(status_code=409)
    if request.app.state.relay is not None:
        request.app.state.relay.wake()
    return answer(dict(updated))


# ---- approvals: the public routes, calling the routes above over HTTP ------------------------------


def approvals_of(request: Request) -> Database:
    database: Database = request.app.state.approvals
    return database


def peer(request: Request) -> tuple[aiohttp.ClientSession, str]:
    return request.app.state.session, request.app.state.self_url


#: who the approvals routes call their internal routes as (``approvals.peer.PRINCIPAL``)
PEER = Identity.service("approvals")


def peer_headers(request: Request, method: str, target: str, body: bytes = b"") -> dict[str, str]:
    """The identity headers of a call to an internal route: none for the plain reference, signed as
    ``service:approvals`` with the approvals → timesheets key when it honours the contract."""
    signer: IdentitySigner | None = request.app.state.signer
    if signer is None:
        return {}
    return signer.headers(PEER, method=method, target=target, body=body)


def peer_url(base: str, target: str) -> yarl.URL:
    """``target`` as written (and signed): not encoded again."""
    return yarl.URL(base + target, encoded=True)


async def queue(request: Request) -> Response:
    session, base = peer(request)
    query = {
        "exclude_issuer": request.headers[ISSUER],
        "exclude_subject": request.headers[SUBJECT],
        "limit": request.query_params.get("limit", "20"),
    }
    target = f"/internal/timesheets/pending?{urlencode(query)}"
    headers = peer_headers(request, "GET", target)
    async with session.get(peer_url(base, target), headers=headers) as reply:
        text = await reply.text()
    return Response(text, reply.status, media_type="application/json")


async def decide(request: Request) -> Response:
    body = json.loads(await request.body())
    issuer, subject = request.headers[ISSUER], request.headers[SUBJECT]
    entry_id = uuid.UUID(request.path_params["id"])
    session, base = peer(request)
    database = approvals_of(request)
    target = f"/internal/timesheets/{entry_id}"
    async with session.get(peer_url(base, target), headers=peer_headers(request, "GET", target)) as reply:
        found = json.loads(await reply.text()) if reply.status == 200 else None
    if found is None or found["status"] != "submitted" or found["owner_subject"] == subject:
        return Response(status_code=409)
    decision_id = uuid.uuid4()
    async with database.connection() as conn:
        decision = await conn.fetchrow(
            RECORD_PENDING, decision_id, entry_id, body["decision"], body.get("comment"), issuer, subject, "",
            "timesheets-spa", None, "user",
        )  # fmt: skip
    if decision is None:  # the entry has a live decision: read it (the conflict path)
        async with database.connection() as conn:
            await conn.fetchrow(LIVE_FOR_ENTRY, entry_id)
        return Response(status_code=409)
    apply = {
        "decision_id": str(decision_id),
        "decision": body["decision"],
        "issuer": issuer,
        "subject": subject,
        "at": decision["decided_at"].isoformat(),
    }
    target, sent = f"/internal/timesheets/{entry_id}/decision", json.dumps(apply).encode()
    headers = {**peer_headers(request, "POST", target, sent), "Content-Type": "application/json"}
    async with session.post(peer_url(base, target), data=sent, headers=headers) as reply:
        applied = json.loads(await reply.text()) if reply.status == 200 else None
    if applied is None:
        return Response(status_code=502)
    async with database.connection() as conn:
        event = event_payload(
            request,
            "approval.decided",
            entry_id,
            source="approvals",
            issuer=issuer,
            subject=subject,
            details={
                "decision_id": str(decision_id),
                "decision": body["decision"],
                "comment": body.get("comment"),
                "applied_by": "request",
            },
        )
        settled = await conn.fetchrow(MARK_APPLIED, decision_id, *event)
    if request.app.state.relay is not None:
        request.app.state.approvals_relay.wake()
    return answer({**dict(settled or decision), "entry": applied})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    url = os.environ["DATABASE_URL"]
    database = Database(url, schema="timesheets", application_name="bench-reference")
    approvals = Database(url, schema="approvals", application_name="bench-reference-approvals")
    await database.wait_connected(30)
    await approvals.wait_connected(30)
    app.state.database, app.state.approvals = database, approvals
    app.state.self_url = f"http://127.0.0.1:{os.environ['PORT']}"
    app.state.signer = None
    if os.environ.get("REFERENCE_IDENTITY") == "1":
        app.state.signer = IdentitySigner(ApprovalsSettings().identity_sign_keys("timesheets"))
    app.state.relay = None
    relays: list[OutboxRelay] = []
    http: HttpClient | None = None
    if os.environ.get("REFERENCE_RELAY") == "1":
        # both outboxes relayed, as the two services relay theirs (each signed with its own key)
        http = HttpClient()
        app.state.relay = OutboxRelay.for_service(
            TimesheetsSettings(), database, "timesheets", http, linger=RELAY_LINGER_SECONDS
        )
        app.state.approvals_relay = OutboxRelay.for_service(
            ApprovalsSettings(), approvals, "approvals", http, linger=RELAY_LINGER_SECONDS
        )
        relays = [app.state.relay, app.state.approvals_relay]
        for relay in relays:
            relay.start()
    async with aiohttp.ClientSession() as session:
        app.state.session = session
        yield
    for relay in relays:
        await relay.stop()
    if http is not None:
        await http.close()
    await approvals.close()
    await database.close()


app = Starlette(
    routes=[
        Route("/timesheets", create, methods=["POST"]),
        Route("/timesheets", list_entries, methods=["GET"]),
        Route("/internal/timesheets/pending", pending, methods=["GET"]),
        Route("/internal/timesheets/{id}", entry, methods=["GET"]),
        Route("/internal/timesheets/{id}/decision", apply_decision, methods=["POST"]),
        Route("/approvals", queue, methods=["GET"]),
        Route("/approvals/{id}", decide, methods=["PUT"]),
    ],
    lifespan=lifespan,
)


def gate_of(inner: ASGIApp, settings: ServiceSettings) -> IdentityMiddleware:
    """``inner`` behind the identity gate of the service ``settings`` are of, built as its app builds
    it (``svckit.app``): the same verifier, the same replay memory over Redis (``REDIS_KEY_PREFIX``)."""
    verifier = IdentityVerifier(settings.identity_verify_keys, settings.identity_max_skew_seconds)
    return IdentityMiddleware(inner, verifier, replay=ReplayMemory.for_service(settings))


def with_identity_contract(inner: ASGIApp) -> ASGIApp:
    """``inner`` with each route behind its service's identity gate: ``/approvals…`` the approvals
    service's (signed by the gateway), the rest the timesheets service's (by the gateway, or by the
    approvals routes for the internal ones)."""
    approvals = gate_of(inner, ApprovalsSettings())
    timesheets = gate_of(inner, TimesheetsSettings())

    async def gated(scope: Scope, receive: Receive, send: Send) -> None:
        gate = approvals if scope.get("path", "").startswith("/approvals") else timesheets
        await gate(scope, receive, send)

    return gated


if __name__ == "__main__":
    uvicorn.run(
        with_identity_contract(app) if os.environ.get("REFERENCE_IDENTITY") == "1" else app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_level="warning",
        access_log=False,
        server_header=False,
    )
