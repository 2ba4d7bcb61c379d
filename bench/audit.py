"""Audit trail throughput: ingestion by batch size, outbox relay end to end, chain verification.

What runs: the audit service as it ships (``python -m audit``, one worker) on a fresh database of
the PostgreSQL server at ``DATABASE_URL``, and in this process a writer with an outbox and the
kit's :class:`~svckit.outbox.OutboxRelay`. Measured:

- ``ingest``: ``POST /internal/events`` at batch sizes 1 (8 concurrent senders), 50 and 500 (2
  concurrent senders): events/s and per-request p50/p99. Every append takes the single chain lock,
  so this is the ceiling of the whole platform's audited write rate.
- ``relay``: 5,000 events committed to an outbox in 100 transactions (enqueue rate), then the relay
  started on that backlog, as after an audit outage: the time until it has drained it (events/s end
  to end: claim with SKIP LOCKED, POST, DELETE, commit).
- ``verify``: ``GET /audit/verify`` over the accumulated chain: records/s.

Writes ``bench/results/audit.json`` and prints a table. ``BENCH_AUDIT_SECONDS`` (default 4) is the
duration of each ingest case.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from svckit.db import Database
from svckit.http import HttpClient, SignedClient
from svckit.identity import Identity
from svckit.migrations import migrate
from svckit.outbox import AuditEvent, OutboxRelay, enqueue

from testkit.fixtures import ServiceProcess, create_database, drop_database, new_pair_keys, pair_signer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MIGRATIONS = ROOT / "services" / "audit" / "audit" / "migrations"
SOURCE = "timesheets"
ACTOR = Identity("http://localhost:9000/", "bench-user", "user", "timesheets-spa", frozenset(), "Bench")


def event() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": SOURCE,
        "actor": {
            "issuer": ACTOR.issuer,
            "subject": ACTOR.subject,
            "kind": "user",
            "client_id": ACTOR.client_id,
            "name": ACTOR.name,
        },
        "action": "timesheet.created",
        "resource": {"type": "timesheet", "id": str(uuid.uuid4())},
        "outcome": "success",
        "request_id": uuid.uuid4().hex,
        "details": {"project": "StoreZero", "hours": 7.5, "date": "2026-11-23"},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def ingest_case(client: SignedClient, batch: int, senders: int, seconds: float) -> dict[str, Any]:
    identity = Identity.service(SOURCE)
    latencies: list[float] = []
    events = 0
    errors = 0
    deadline = time.monotonic() + seconds

    async def sender() -> None:
        nonlocal events, errors
        while time.monotonic() < deadline:
            body = {"events": [event() for _ in range(batch)]}
            started = time.perf_counter()
            async with client.request("POST", "/internal/events", identity, json=body) as response:
                await response.read()
                ok = response.status == 200
            latencies.append(time.perf_counter() - started)
            if ok:
                events += batch
            else:
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.monotonic() - started
    return {
        "batch": batch,
        "senders": senders,
        "events_per_second": round(events / elapsed),
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "errors": errors,
    }


async def relay_case(dsn: str, client: SignedClient, total: int = 5000, per_tx: int = 50) -> dict[str, Any]:
    schema = f"bench_writer_{secrets.token_hex(3)}"
    await migrate(dsn, schema, None, kit=["outbox"])
    database = Database(dsn, schema=schema, application_name="bench-writer")
    await database.wait_connected(10)
    relay = OutboxRelay(database, schema, SOURCE, client, batch_size=200, poll_interval=1.0)
    try:
        started = time.monotonic()
        for _ in range(total // per_tx):
            async with database.transaction() as tx:
                for _ in range(per_tx):
                    await enqueue(
                        tx,
                        AuditEvent.create(
                            action="timesheet.created",
                            resource_type="timesheet",
                            resource_id=str(uuid.uuid4()),
                            outcome="success",
                            actor=ACTOR,
                            source=SOURCE,
                            details={"project": "StoreZero", "hours": 7.5},
                        ),
                    )
        enqueued = time.monotonic() - started
        started = time.monotonic()
        relay.start()  # a backlog, as after an audit outage: how fast does it drain?
        while True:
            async with database.connection() as c:
                if not await c.fetchval(f"SELECT count(*) FROM {schema}.outbox"):
                    break
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        await relay.stop()
        await database.close()
    return {
        "events": total,
        "transactions": total // per_tx,
        "enqueue_seconds": round(enqueued, 2),
        "enqueue_events_per_second": round(total / enqueued),
        "drain_seconds": round(elapsed, 2),
        "events_per_second": round(total / elapsed),
    }


async def verify_case(url: str, keys: dict[str, str]) -> dict[str, Any]:
    signer = pair_signer(keys, "gateway", "audit")  # a user reads the trail through the gateway
    http = HttpClient(total_timeout=300)
    client = SignedClient(http, url, signer)
    auditor = Identity("http://localhost:9000/", "carol", "user", "spa", frozenset({"read:audit"}), "")
    runs = []
    checked = 0
    try:
        for _ in range(3):
            started = time.perf_counter()
            async with client.request("GET", "/audit/verify", auditor) as response:
                body = await response.json()
            runs.append(time.perf_counter() - started)
            assert body["ok"], body
            checked = body["checked"]
    finally:
        await http.close()
    median = statistics.median(runs)
    return {"records": checked, "seconds": round(median, 3), "records_per_second": round(checked / median)}


@contextmanager
def postgres() -> Iterator[None]:
    """``DATABASE_URL``'s server, or an embedded one like ``make dev`` when it is unset."""
    if os.environ.get("DATABASE_URL"):
        yield
        return
    from devstack.backing import EmbeddedPostgres

    server = EmbeddedPostgres(ROOT / ".local" / "bench")
    os.environ["DATABASE_URL"] = server.start()
    try:
        yield
    finally:
        server.stop()
        del os.environ["DATABASE_URL"]


async def run() -> dict[str, Any]:
    seconds = float(os.environ.get("BENCH_AUDIT_SECONDS", "4"))
    name = f"tsp_bench_audit_{secrets.token_hex(3)}"
    dsn = await create_database(name)
    keys = new_pair_keys("bench")
    process = ServiceProcess(
        "audit",
        {
            "DATABASE_URL": dsn,
            **keys,
            "LOG_LEVEL": "WARNING",
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
        },
    )
    try:
        await migrate(dsn, "audit", MIGRATIONS)
        await asyncio.to_thread(process.start, "/readyz")
        http = HttpClient(total_timeout=60)
        client = SignedClient(http, process.url, pair_signer(keys, SOURCE, "audit"))
        try:
            ingest = [
                await ingest_case(client, 1, 8, seconds),
                await ingest_case(client, 50, 2, seconds),
                await ingest_case(client, 500, 2, seconds),
            ]
            relay = await relay_case(dsn, client)
        finally:
            await http.close()
        verify = await verify_case(process.url, keys)
    finally:
        await asyncio.to_thread(process.stop)
        await drop_database(name)
    return {"ingest": ingest, "relay": relay, "verify": verify, "cpus": os.cpu_count()}


def main() -> int:
    with postgres():
        results = asyncio.run(run())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'case':<28}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for case in results["ingest"]:
        label = f"ingest batch={case['batch']} x{case['senders']}"
        print(
            f"{label:<28}{case['events_per_second']:>10}{case['p50_ms']:>9}{case['p99_ms']:>9}{case['errors']:>8}"
        )
    relay = results["relay"]
    took = relay["drain_seconds"]
    print(f"{'relay: drain 5000 backlog':<28}{relay['events_per_second']:>10}   (all delivered in {took}s)")
    verify = results["verify"]
    walked = f"{verify['records']} records in {verify['seconds']}s"
    print(f"{'verify chain':<28}{verify['records_per_second']:>10}   records/s ({walked})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
