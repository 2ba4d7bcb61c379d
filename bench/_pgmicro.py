"""Postgres's work per statement of a request, the services' way against the plain reference's.

``python -m bench _pgmicro`` (under the bench lock; a local server: the backend's CPU is read from
``/proc/<pid>/schedstat``): a fresh database migrated as the services migrate theirs (timesheets,
approvals, audit), seeded like ``bench/api.py``'s and ``bench/approvals.py``'s, and one connection
that runs each unit of a request's database work ``PGMICRO_CALLS`` (300) times in turn,
``PGMICRO_ROUNDS`` (7) interleaved rounds (the order reversed every other round). What it prints per
unit: the backend's CPU per call (medians of the rounds, each round's after them) and, counts that
the machine's load does not move, the shared buffers touched and the WAL records and bytes per call
(``pg_stat_statements`` over ``PGMICRO_PROBES`` (20) calls: the embedded Postgres of ``bench._pgwork``,
the extension preloaded, ``track = all``; a unit's statements summed, and beneath it the statements
run inside its functions and triggers, the day cap's and the append's).

The units: a create (``timesheets.store.CREATE_ENTRY``) with the service's outbox payload (the
whole audit event, ``outbox_values``) and with the plain reference's stub (``bench/_reference_app``);
the list (one page of 20); a decision's four statements (the entry read, ``RECORD_PENDING``,
``APPLY_DECISION`` and ``MARK_APPLIED``, the last two with both payloads); and what the plain
reference leaves undone, per event delivered: the relay's claim and acknowledgement (a batch of
``PGMICRO_BATCH`` (50) events: claim ``FOR UPDATE SKIP LOCKED`` with the payloads as text, then the
delete that moves the receipt, one transaction) and the audit service's ``append_documents`` of a
group of that size (realistic events, chained as the audit service chains them). The sum says what
a service's request costs Postgres beyond the plain reference's, statement by statement.

A diagnostic, not a benchmark with results to keep: it prints, nothing is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import statistics
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from hashlib import sha256
from pathlib import Path
from typing import Any

import asyncpg
from approvals.store import MARK_APPLIED, RECORD_PENDING
from svckit.contracts.audit import outbox_values
from svckit.identity import Identity
from svckit.receipts import acknowledge_statement
from timesheets.store import APPLY_DECISION, CREATE_ENTRY, GET_ENTRY

from bench._backing import MAX_CONNECTIONS, fresh_database
from bench._pgwork import STATE, enable
from bench._reference_app import LIST_FIRST_PAGE
from bench.api import prepare_database, spread_date
from bench.approvals import seed as seed_decisions
from bench.audit_indexes import Events, cpu_ns

ROOT = Path(__file__).resolve().parents[1]
CALLS = int(os.environ.get("PGMICRO_CALLS", "300"))
ROUNDS = int(os.environ.get("PGMICRO_ROUNDS", "7"))
PROBES = int(os.environ.get("PGMICRO_PROBES", "20"))
BATCH = int(os.environ.get("PGMICRO_BATCH", "50"))
ISSUER = "https://issuer.bench.example"
LIMIT = Decimal(24)


def stub(action: str, resource: uuid.UUID) -> tuple[uuid.UUID, dt.datetime, str]:
    """The plain reference's outbox values (``bench._reference_app.created_event``, unaudited)."""
    event_id = uuid.uuid4()
    payload = json.dumps({"id": str(event_id), "action": action, "resource": str(resource), "details": {}})
    return event_id, dt.datetime.now(dt.UTC), payload


def whole(action: str, resource: uuid.UUID, source: str, subject: str, details: dict[str, Any]) -> Any:
    """The services' outbox values: the whole audit event."""
    return outbox_values(
        action=action,
        resource_type="timesheet",
        resource_id=str(resource),
        outcome="success",
        actor=Identity(ISSUER, subject, "user", "timesheets-spa"),
        source=source,
        details=details,
        request_id=uuid.uuid4().hex,
    )


class Unit:
    """One kind of call: ``prepare`` (not measured) returns the arguments of one ``run``."""

    def __init__(
        self,
        name: str,
        statement: str | None,
        arguments: Callable[[int], Awaitable[tuple[Any, ...]]],
        per: int = 1,
        run: Callable[[asyncpg.Connection, tuple[Any, ...]], Awaitable[None]] | None = None,
    ) -> None:
        self.name, self.statement, self.arguments, self.per = name, statement, arguments, per
        self._run = run

    async def run(self, conn: asyncpg.Connection, args: tuple[Any, ...]) -> None:
        if self._run is not None:
            await self._run(conn, args)
        else:
            assert self.statement is not None
            await conn.fetch(self.statement, *args)


async def build(url: str) -> tuple[list[Unit], dict[str, Any]]:
    subjects = [f"bench-user-{i:02d}" for i in range(32)]
    await prepare_database(url, ISSUER, subjects)
    # submitted entries of bench.approvals's employees: each decision unit takes its own
    entries = await seed_decisions(url, (CALLS + PROBES + 3) * 7 * (ROUNDS + 1))
    state: dict[str, Any] = {"n": 0, "entries": iter(entries), "events": Events(), "head": None}

    def next_n() -> int:
        state["n"] += 1
        return int(state["n"])

    async def create_args(payload: str) -> tuple[Any, ...]:
        n = next_n()
        subject = subjects[n % 32]
        entry_id, date = uuid.uuid4(), dt.date.fromisoformat(spread_date(n))
        body = {"date": date.isoformat(), "project": "Bench", "hours": 0.25}
        if payload == "whole":
            event = whole(
                "timesheet.created", entry_id, "timesheets", subject,
                {"owner": {"issuer": ISSUER, "subject": subject}, **body},
            )  # fmt: skip
        else:
            event = stub("timesheet.created", entry_id)
        return (
            entry_id,
            ISSUER,
            subject,
            "",
            date,
            "Bench",
            Decimal("0.25"),
            None,
            "timesheets-spa",
            *event,
            LIMIT,
        )

    async def list_args(_: int = 0) -> tuple[Any, ...]:
        return (ISSUER, subjects[next_n() % 32], 21)

    # a decision's statements, in the order a decision runs them, on one entry each: the entry read,
    # the pending insert, the apply and the settle; `decisions` carries one decision from each to the next
    decisions: dict[str, list[tuple[Any, ...]]] = {"whole": [], "stub": []}

    async def get_args(_: int = 0) -> tuple[Any, ...]:
        return (next(state["entries"]),)

    async def pending_args(payload: str) -> tuple[Any, ...]:
        entry_id = next(state["entries"])
        decision_id = uuid.uuid4()
        decisions[payload].append((entry_id, decision_id))
        return (
            decision_id,
            entry_id,
            "approved",
            None,
            ISSUER,
            "bench-manager-0",
            "",
            "timesheets-spa",
            None,
            "user",
        )

    async def apply_args(payload: str) -> tuple[Any, ...]:
        # a pending decision recorded (not measured) for an entry of its own
        entry_id, decision_id = next(state["entries"]), uuid.uuid4()
        decisions[payload].append((entry_id, decision_id))
        details = {"decision": "approved", "decision_id": str(decision_id), "via": "approvals"}
        event = (
            whole("timesheet.decided", entry_id, "timesheets", "bench-manager-0", details)
            if payload == "whole"
            else stub("timesheet.decided", entry_id)
        )
        return (
            entry_id,
            "approved",
            decision_id,
            ISSUER,
            "bench-manager-0",
            "",
            dt.datetime.now(dt.UTC),
            None,
            *event,
        )

    pending_rows: dict[str, list[uuid.UUID]] = {"whole": [], "stub": []}

    async def settle_args(payload: str) -> tuple[Any, ...]:
        decision_id = pending_rows[payload].pop()
        details = {
            "decision_id": str(decision_id),
            "decision": "approved",
            "comment": None,
            "applied_by": "request",
        }
        event = (
            whole("approval.decided", uuid.uuid4(), "approvals", "bench-manager-0", details)
            if payload == "whole"
            else stub("approval.decided", decision_id)
        )
        return (decision_id, *event)

    claim = (
        "SELECT position, attempts, payload::text AS payload FROM timesheets.outbox"
        " WHERE next_attempt_at <= now() ORDER BY position LIMIT $1 FOR UPDATE SKIP LOCKED"
    )
    acknowledge = acknowledge_statement("timesheets")

    async def relay_args(_: int = 0) -> tuple[Any, ...]:
        return (BATCH,)

    async def relay_run(conn: asyncpg.Connection, args: tuple[Any, ...]) -> None:
        async with conn.transaction():
            rows = await conn.fetch(claim, *args)
            await conn.execute(
                acknowledge, [r["position"] for r in rows], uuid.uuid4(), state["n"] + 1, "0" * 64
            )

    append = "SELECT * FROM audit.append_documents(0, $1, $2, $3, $4)"

    async def append_args(_: int = 0) -> tuple[Any, ...]:
        if state["head"] is None:
            head = await state["conn"].fetchrow("SELECT seq, hash FROM audit.chain_head")
            state["head"] = (head["seq"], head["hash"])
        seq, prev = state["head"]
        when = dt.datetime.now(dt.UTC)
        from audit.chain import timestamp

        recorded = timestamp(when)
        documents, hashes = [], []
        for _ in range(BATCH):
            seq += 1
            document = state["events"].one(seq, prev, recorded, when)
            prev = sha256(document.encode()).hexdigest()
            documents.append(document)
            hashes.append(prev)
        expected = state["head"]
        state["head"] = (seq, prev)
        return (expected[0], expected[1], documents, hashes)

    def decision_units(payload: str) -> list[Unit]:
        return [
            Unit(f"decide: pending insert ({payload})", RECORD_PENDING, lambda _: pending_args(payload)),
            Unit(f"decide: apply ({payload} payload)", APPLY_DECISION, lambda _: apply_args(payload)),
            Unit(f"decide: settle ({payload} payload)", MARK_APPLIED, lambda _: settle_args(payload)),
        ]

    units = [
        Unit("create (service: whole event)", CREATE_ENTRY, lambda _: create_args("whole")),
        Unit("create (reference: stub)", CREATE_ENTRY, lambda _: create_args("stub")),
        Unit("list (20 of ~100)", LIST_FIRST_PAGE, list_args),
        Unit("decide: entry read", GET_ENTRY, get_args),
        *decision_units("whole"),
        *decision_units("stub"),
        Unit(f"relay: claim + ack, per event (batch {BATCH})", None, relay_args, BATCH, relay_run),
        Unit(f"audit: append_documents, per event (group {BATCH})", append, append_args, BATCH),
    ]
    return units, {"state": state, "pending_rows": pending_rows, "decisions": decisions}


async def statement_counts(conn: asyncpg.Connection, calls: int) -> dict[str, tuple[float, ...]]:
    """This database's statements since the reset, per call of a unit: the top-level ones summed
    (``""``), each nested one on its own (calls, buffers touched, WAL records, WAL bytes)."""
    rows = await conn.fetch(
        """SELECT toplevel, query, calls, shared_blks_hit + shared_blks_read AS buffers, wal_records,
                  wal_bytes
           FROM pg_stat_statements
           WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND query NOT LIKE '%pg_stat_statements%'"""
    )
    found: dict[str, list[float]] = {"": [0.0, 0.0, 0.0, 0.0]}
    for row in rows:
        key = "" if row["toplevel"] else " ".join(row["query"].split())[:90]
        figure = found.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        for i, column in enumerate(("calls", "buffers", "wal_records", "wal_bytes")):
            figure[i] += float(row[column]) / calls
    return {key: tuple(value) for key, value in found.items()}


async def run(url: str) -> None:
    units, shared = await build(url)
    conn = await asyncpg.connect(url, server_settings={"search_path": "timesheets"})
    approvals = await asyncpg.connect(url, server_settings={"search_path": "approvals"})
    shared["state"]["conn"] = conn
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    apid = await approvals.fetchval("SELECT pg_backend_pid()")
    pending_rows: dict[str, list[uuid.UUID]] = shared["pending_rows"]

    def connection_of(unit: Unit) -> tuple[asyncpg.Connection, int]:
        return (approvals, apid) if "pending insert" in unit.name or "settle" in unit.name else (conn, pid)

    async def ready(unit: Unit, count: int) -> list[tuple[Any, ...]]:
        """Arguments for ``count`` calls; what the unit needs in the tables first is put there."""
        if "settle" in unit.name:
            payload = "whole" if "whole" in unit.name else "stub"
            for _ in range(count):
                decision_id = uuid.uuid4()
                await approvals.execute(RECORD_PENDING, decision_id, next(shared["state"]["entries"]),
                                        "approved", None, ISSUER, "bench-manager-0", "", "timesheets-spa",
                                        None, "user")  # fmt: skip
                pending_rows[payload].append(decision_id)
        if "relay" in unit.name:  # a batch of whole events waiting, per call, and nothing else
            await conn.execute("DELETE FROM timesheets.outbox")
            filler = units[0]
            for _ in range(count * BATCH):
                await conn.fetch(CREATE_ENTRY, *await filler.arguments(0))
        return [await unit.arguments(0) for _ in range(count)]

    try:
        figures: dict[str, dict[str, Any]] = {u.name: {"cpu": [], "counts": None} for u in units}
        for unit in units:  # warm-up (plans cached) and the counts
            db, _ = connection_of(unit)
            for args in await ready(unit, 3):
                await unit.run(db, args)
            probes = await ready(unit, PROBES)
            await conn.execute("SELECT pg_stat_statements_reset()")
            for args in probes:
                await unit.run(db, args)
            figures[unit.name]["counts"] = await statement_counts(conn, PROBES * unit.per)
        for number in range(ROUNDS):
            for unit in units if number % 2 == 0 else units[::-1]:
                db, backend = connection_of(unit)
                calls = max(1, CALLS // unit.per) if unit.per > 1 else CALLS
                arguments = await ready(unit, calls)
                before = cpu_ns(backend)
                for args in arguments:
                    await unit.run(db, args)
                after = cpu_ns(backend)
                if before is not None and after is not None:
                    figures[unit.name]["cpu"].append((after - before) / 1000 / (calls * unit.per))
    finally:
        await conn.close()
        await approvals.close()
    print(f"{ROUNDS} rounds of {CALLS} calls (relay/audit: {max(1, CALLS // BATCH)} batches of {BATCH})")
    head = (
        f"{'unit (a call; relay, audit: an event)':<52}{'cpu us':>8}{'buffers':>9}{'WAL rec':>8}{'WAL B':>8}"
    )
    print(head + "   cpu us by round")
    for name, figure in figures.items():
        cpu = statistics.median(figure["cpu"]) if figure["cpu"] else float("nan")
        _, buffers, records, wal_bytes = figure["counts"][""]
        rounds = ", ".join(f"{c:.1f}" for c in figure["cpu"])
        print(f"{name:<52}{cpu:>8.1f}{buffers:>9.1f}{records:>8.1f}{wal_bytes:>8.0f}   {rounds}")
        for key, (calls, buffers, records, wal_bytes) in figure["counts"].items():
            if key:
                print(f"    {calls:.2f} x {key[:78]:<78}{buffers:>9.1f}{records:>8.1f}{wal_bytes:>8.0f}")


def main() -> int:
    from devstack.backing import EmbeddedPostgres

    postgres = EmbeddedPostgres(
        STATE, {"max_connections": str(MAX_CONNECTIONS), "shared_preload_libraries": "pg_stat_statements"}
    )
    server = postgres.start()
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = server  # fresh_database's server
    try:
        asyncio.run(enable(server))
        with fresh_database(f"tsp_bench_pgmicro_{secrets.token_hex(3)}") as url:
            asyncio.run(run(url))
    finally:
        postgres.stop()
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
