"""Audit trail throughput: ingestion by batch size, outbox relay end to end, chain verification.

What runs: the audit service as it ships (``python -m audit``, one worker) on a fresh database of
the PostgreSQL server at ``DATABASE_URL``, and in this process a writer with an outbox and the
kit's :class:`~svckit.outbox.OutboxRelay`. Measured:

- ``ingest``: ``POST /internal/events`` at batch sizes 1 (8 concurrent senders), 50 and 500 (2
  concurrent senders): events/s, per-request p50/p99 and the audit process's CPU time per request
  and per event (the service pinned to the first core, the senders to the last). The senders are
  wrk's connections (every request pre-signed with its own nonce and body digest, fresh events), so
  the figure is the service's, not a Python client's; without wrk, coroutines of this process.
  Beside the service's CPU, the embedded Postgres's (all its processes; ``null`` with
  ``DATABASE_URL``, a server shared with others) and wrk's own per request: the senders must not be
  what limits the figure on a two-core machine.
  Every append takes the single chain lock (concurrent ones share it by group commit), so this is
  the ceiling of the whole platform's audited write rate. With the embedded Postgres, what the group
  commit achieved in each case: the write transactions the server committed while the case ran
  (``transactions``, from the next transaction id before and after it: each append is one, and nothing
  else writes meanwhile), ``events_per_transaction`` and ``requests_per_transaction`` (each round's in
  ``events_per_transaction_rounds``); absent with ``DATABASE_URL``, a server others write to.
  ``BENCH_AUDIT_ROUNDS`` (default 3) interleaved rounds of the three cases; medians, each round's
  events/s beside them. The issue's targets are printed beside the figures, never asserted.
- ``relay``: 5,000 events committed to an outbox in 100 transactions (enqueue rate), then the relay
  started on that backlog, as after an audit outage: the time until it has drained it (events/s end
  to end: claim with SKIP LOCKED, POST, DELETE, commit).
- ``verify``: ``GET /audit/verify`` over the accumulated chain: records/s.

Works with ``DATABASE_URL`` / ``REDIS_URL`` or without (embedded servers, :mod:`bench._backing`): the
service's replay memory (Redis) is the benchmark's own, never the machine's shared one. Writes
``bench/results/audit.json`` and prints a table. ``BENCH_AUDIT_SECONDS`` (default 4) is the
duration of each ingest case, after a warm-up of ``BENCH_AUDIT_WARMUP_SECONDS`` (default 1) per case
and service that is not counted (without it the first round was an outlier: pools filling,
statements being prepared); ``BENCH_AUDIT_CASES`` (e.g. ``1`` or ``1,500``) runs only the ingest cases
of those batch sizes.

With ``BENCH_AUDIT_BASELINE`` set to a checkout (a directory holding ``services/audit`` and
``services/kit``, e.g. ``git archive main services | tar -x -C /tmp/before``), a second audit service
runs from that code on a database of its own (migrated with its own migrations), and every ingest
case runs against it too, in the same rounds (``ingest_before``): an A/B of a change in one run, the
two services' order swapped every other round (on this two-core machine the first or the second run
of a pair is favoured, so a fixed order can make a ratio of its own). Each case keeps its rounds'
CPU per event beside their events/s (``cpu_us_per_event_rounds``, and Postgres's where it is
measured), and ``ab`` pairs the two services' rounds: each round's ratio after/before of events/s
and of CPU per event, which of the two ran first in it, and the median of those ratios. A ratio of
medians mixes rounds the machine ran at different speeds; the paired ratios show the spread a
difference must stand out of.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
from svckit.db import Database
from svckit.http import HttpClient, SignedClient
from svckit.identity import Identity
from svckit.migrations import migrate
from svckit.outbox import AuditEvent, OutboxRelay, enqueue

from bench._backing import embedded_postgres, fresh_database, servers
from bench._measure import CpuMeter, median_case, spread
from bench._presigned import Request, write_pool
from bench.api import run_wrk
from testkit.fixtures import ServiceProcess, new_pair_keys, pair_signer

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MIGRATIONS = ROOT / "services" / "audit" / "audit" / "migrations"
SOURCE = "timesheets"
#: (events per request, concurrent senders)
INGEST_CASES = ((1, 8), (50, 2), (500, 2))
#: the issue's targets, printed beside the figures (never asserted)
TARGETS = {1: 2000, 50: 10000, 500: 10000, "verify": 50000}
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


async def ingest_case(
    client: SignedClient, batch: int, senders: int, seconds: float, server_pid: int | None = None
) -> dict[str, Any]:
    identity = Identity.service(SOURCE)
    cpu = CpuMeter({"audit": server_pid})
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
    cpu.start()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.monotonic() - started
    used = cpu.stop()["audit"]
    return {
        "batch": batch,
        "senders": senders,
        "events_per_second": round(events / elapsed),
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "errors": errors,
        "cpu_us_per_request": round(used * 1e6 / max(1, len(latencies)), 1),
        "cpu_us_per_event": round(used * 1e6 / max(1, events), 1),
    }


#: pre-signed requests per second of a run, by batch size (more than the service answers here)
POOL_PER_SECOND = {1: 6000, 50: 600, 500: 60}


def wrk_ingest_case(
    url: str,
    keys: dict[str, str],
    batch: int,
    connections: int,
    seconds: float,
    pid: int | None,
    logs: Path,
    postgres: int | None = None,
) -> dict[str, Any]:
    """``POST /internal/events`` from wrk (``-c`` = the senders): a load generator in C, so the
    figure is the service's and not a Python client's. Every request is signed beforehand with its
    own nonce and body digest (:mod:`bench._presigned`), its events fresh, right before the run."""
    signer = pair_signer(keys, SOURCE, "audit")
    identity = Identity.service(SOURCE)

    def pool() -> Iterator[Request]:
        for _ in range(max(4, int(seconds * POOL_PER_SECOND[batch]))):
            body = json.dumps({"events": [event() for _ in range(batch)]}, separators=(",", ":")).encode()
            headers = signer.headers(identity, method="POST", target="/internal/events", body=body)
            yield "POST", "/internal/events", {**headers, "Content-Type": "application/json"}, body

    script = write_pool(logs / f"ingest-{batch}.lua", pool())
    cpu = CpuMeter({"audit": pid, "postgres": postgres})
    cpu.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's own CPU: is the load generator the limit?
    result = run_wrk(url, script, seconds, connections=connections)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = cpu.stop()
    used = spent["audit"]
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    requests = max(1, result["requests"])
    ok = result["requests"] - result["non_2xx"]
    return {
        "batch": batch,
        "senders": connections,
        "events_per_second": round(result["rps"] * batch * ok / requests),
        "requests": result["requests"],
        "p50_ms": round(result["p50_ms"], 1),
        "p99_ms": round(result["p99_ms"], 1),
        "errors": result["non_2xx"],
        "cpu_us_per_request": round(used * 1e6 / requests, 1),
        "cpu_us_per_event": round(used * 1e6 / (requests * batch), 1),
        "postgres_cpu_us_per_event": (
            round(spent["postgres"] * 1e6 / (requests * batch), 1) if postgres else None
        ),
        "wrk_cpu_us_per_request": round(wrk_cpu * 1e6 / requests, 1),
    }


async def next_xid(dsn: str) -> int:
    """The next transaction id the server will assign (a read of the snapshot: it assigns none)."""
    conn = await asyncpg.connect(dsn)
    try:
        xid: int = await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    finally:
        await conn.close()
    return xid


def group_figures(case: Mapping[str, Any], commits: int) -> dict[str, Any]:
    """What the group commit achieved in a case: the write transactions the server committed while it
    ran (each append is one; nothing else writes during a case), events and requests per transaction."""
    events = case["requests"] * case["batch"]
    return {
        "transactions": commits,
        "events_per_transaction": round(events / commits, 2) if commits > 0 else None,
        "requests_per_transaction": round(case["requests"] / commits, 2) if commits > 0 else None,
    }


#: the per-round figures an A/B compares (after / before): higher events/s is better, lower CPU
PAIRED = ("events_per_second", "cpu_us_per_event", "postgres_cpu_us_per_event")


def round_order(targets: Sequence[T], number: int) -> list[T]:
    """The services of round ``number``: every other round in reverse, so that neither side of an A/B
    always runs first (right after the other's load, whose commits and autovacuum may still drain)."""
    return list(targets) if number % 2 == 0 else list(reversed(targets))


def paired_ratios(
    after: Sequence[Mapping[str, Any]], before: Sequence[Mapping[str, Any]], after_first: Sequence[bool]
) -> dict[str, Any]:
    """One case's A/B round by round: for each figure of :data:`PAIRED`, each round's ratio
    after/before (``<figure>_ratios``; a round without both figures left out) and their median
    (``<figure>_ratio``, ``None`` without any), and which side ran first in each round."""
    compared: dict[str, Any] = {"after_first": list(after_first)}
    for key in PAIRED:
        ratios = [
            round(a[key] / b[key], 3)
            for a, b in zip(after, before, strict=False)
            if isinstance(a.get(key), int | float) and isinstance(b.get(key), int | float) and b[key]
        ]
        compared[f"{key}_ratios"] = ratios
        compared[f"{key}_ratio"] = round(statistics.median(ratios), 3) if ratios else None
    return compared


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One case over its rounds: the medians (:func:`median_case`) and each round's events/s and CPU
    per event (the audit process's, Postgres's where it is measured)."""
    case = {**median_case(runs), "events_per_second_rounds": spread(runs, "events_per_second")}
    case["cpu_us_per_event_rounds"] = spread(runs, "cpu_us_per_event")
    if any(run.get("postgres_cpu_us_per_event") is not None for run in runs):
        case["postgres_cpu_us_per_event_rounds"] = spread(runs, "postgres_cpu_us_per_event")
    if any(run.get("events_per_transaction") is not None for run in runs):
        case["events_per_transaction_rounds"] = spread(runs, "events_per_transaction")
    return case


def ingest_cases() -> tuple[tuple[int, int], ...]:
    """:data:`INGEST_CASES`, or those of the batch sizes in ``BENCH_AUDIT_CASES``."""
    chosen = os.environ.get("BENCH_AUDIT_CASES", "")
    sizes = {int(size) for size in chosen.split(",") if size.strip()}
    return tuple(case for case in INGEST_CASES if not sizes or case[0] in sizes)


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


def pin(process: ServiceProcess) -> int | None:
    """The service on the first core, this process (the senders) on the last, as the other benchmarks
    do; the service's pid (for its CPU time)."""
    pid = process.process.pid if process.process is not None else None
    cores = os.cpu_count() or 1
    if pid is not None and cores > 1:
        with contextlib.suppress(psutil.Error, OSError):
            psutil.Process(pid).cpu_affinity([0])
            psutil.Process().cpu_affinity([cores - 1])
    return pid


def audit_process(dsn: str, redis_url: str, keys: dict[str, str], extra: dict[str, str]) -> ServiceProcess:
    return ServiceProcess(
        "audit",
        {
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": f"tsp-bench-audit:{os.getpid()}:{secrets.token_hex(3)}:",
            **keys,
            "LOG_LEVEL": "WARNING",
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
            **extra,
        },
    )


async def run(
    dsn: str, redis_url: str, postgres: int | None, baseline: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The cases against the service of this checkout; with ``baseline`` (a checkout's directory and
    a database of its own) the ingest cases against that checkout's service too, in the same rounds."""
    seconds = float(os.environ.get("BENCH_AUDIT_SECONDS", "4"))
    rounds = int(os.environ.get("BENCH_AUDIT_ROUNDS", "3"))
    warmup = float(os.environ.get("BENCH_AUDIT_WARMUP_SECONDS", "1"))
    cases = ingest_cases()
    keys = new_pair_keys("bench")
    process = audit_process(dsn, redis_url, keys, {})
    before = None
    if baseline is not None:
        code, before_dsn = baseline
        path = os.pathsep.join(f"{code}/services/{name}" for name in ("audit", "kit"))
        before = audit_process(before_dsn, redis_url, keys, {"PYTHONPATH": path})
    try:
        await migrate(dsn, "audit", MIGRATIONS)
        await asyncio.to_thread(process.start, "/readyz")
        if before is not None and baseline is not None:
            await migrate(baseline[1], "audit", Path(baseline[0]) / "services/audit/audit/migrations")
            await asyncio.to_thread(before.start, "/readyz")
        http = HttpClient(total_timeout=60)
        client = SignedClient(http, process.url, pair_signer(keys, SOURCE, "audit"))
        pid = pin(process)
        before_pid = pin(before) if before is not None else None
        wrk = shutil.which("wrk") is not None  # else the senders are this process (slower: a Python client)
        logs = Path(tempfile.mkdtemp(prefix="bench-audit-"))
        try:
            runs: dict[tuple[int, int], list[dict[str, Any]]] = {case: [] for case in cases}
            runs_before: dict[tuple[int, int], list[dict[str, Any]]] = {case: [] for case in cases}
            targets = [(process, pid, runs)]
            if before is not None:
                targets.append((before, before_pid, runs_before))
            firsts: dict[tuple[int, int], list[bool]] = {case: [] for case in cases}

            async def measure(
                service: ServiceProcess, service_pid: int | None, batch: int, senders: int, duration: float
            ) -> dict[str, Any]:
                first = await next_xid(dsn) if postgres is not None else None
                found = await load(service, service_pid, batch, senders, duration)
                if first is not None:  # the embedded server: its transactions are this run's alone
                    found.update(group_figures(found, await next_xid(dsn) - first))
                return found

            async def load(
                service: ServiceProcess, service_pid: int | None, batch: int, senders: int, duration: float
            ) -> dict[str, Any]:
                if wrk:
                    return await asyncio.to_thread(
                        wrk_ingest_case,
                        service.url,
                        keys,
                        batch,
                        senders,
                        duration,
                        service_pid,
                        logs,
                        postgres,
                    )
                return await ingest_case(
                    SignedClient(http, service.url, pair_signer(keys, SOURCE, "audit")),
                    batch,
                    senders,
                    duration,
                    service_pid,
                )

            # warm-up, not counted: pools filled, statements prepared, the first round no outlier
            for service, service_pid, _ in targets:
                for batch, senders in cases:
                    await measure(service, service_pid, batch, senders, warmup)
            for number in range(rounds):  # interleaved: a noisy moment hurts every case alike
                order = round_order(targets, number)
                for batch, senders in cases:
                    firsts[(batch, senders)].append(order[0][2] is runs)
                    for service, service_pid, found_runs in order:
                        found = await measure(service, service_pid, batch, senders, seconds)
                        found_runs[(batch, senders)].append(found)
            ingest = [summary(found) for found in runs.values()]
            ingest_before = [summary(found) for found in runs_before.values() if found]
            ab = []  # the A/B round by round
            for case in cases:
                if runs_before[case]:
                    compared = paired_ratios(runs[case], runs_before[case], firsts[case])
                    ab.append({"batch": case[0], "senders": case[1], **compared})
            relay = await relay_case(dsn, client)
        finally:
            await http.close()
            shutil.rmtree(logs, ignore_errors=True)
        verify = await verify_case(process.url, keys)
    finally:
        await asyncio.to_thread(process.stop)
        if before is not None:
            await asyncio.to_thread(before.stop)
    results: dict[str, Any] = {"ingest": ingest, "relay": relay, "verify": verify, "cpus": os.cpu_count()}
    if ingest_before:
        results["ingest_before"] = ingest_before
        results["ab"] = ab
    return results


def main() -> int:
    code = os.environ.get("BENCH_AUDIT_BASELINE", "")
    with (
        servers(redis=True) as backing,
        fresh_database(f"tsp_bench_audit_{secrets.token_hex(3)}") as dsn,
        contextlib.ExitStack() as stack,
    ):
        assert backing.redis_url is not None
        postgres = embedded_postgres() if backing.embedded else None
        baseline = None
        if code:
            before_dsn = stack.enter_context(fresh_database(f"tsp_bench_audit_before_{secrets.token_hex(3)}"))
            baseline = (code, before_dsn)
        results = asyncio.run(run(dsn, backing.redis_url, postgres, baseline))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{'case':<28}{'events/s':>10}{'target':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'cpu us/req':>12}{'cpu us/event':>14}{'pg us/event':>13}{'wrk us/req':>12}   rounds (events/s)"
    )
    for case in [*results["ingest"], *({**c, "before": True} for c in results.get("ingest_before", []))]:
        label = f"ingest batch={case['batch']} x{case['senders']}" + (" BEFORE" if "before" in case else "")
        print(
            f"{label:<28}{case['events_per_second']:>10}{TARGETS[case['batch']]:>8}{case['p50_ms']:>9}"
            f"{case['p99_ms']:>9}{case['errors']:>8}{case['cpu_us_per_request']:>12}{case['cpu_us_per_event']:>14}"
            f"{case.get('postgres_cpu_us_per_event') or '-':>13}{case.get('wrk_cpu_us_per_request', '-'):>12}"
            f"   {case['events_per_second_rounds']}"
        )
    for case in [*results["ingest"], *({**c, "before": True} for c in results.get("ingest_before", []))]:
        label = f"batch={case['batch']}" + (" BEFORE" if "before" in case else "")
        pg = case.get("postgres_cpu_us_per_event_rounds")
        pg_rounds = f"; postgres: {pg}" if pg else ""
        grouped = case.get("events_per_transaction_rounds")
        groups = f"; events per transaction: {grouped}" if grouped else ""
        print(f"  {label} rounds, cpu us/event: {case['cpu_us_per_event_rounds']}{pg_rounds}{groups}")
    for pair in results.get("ab", []):
        first = "".join("A" if after else "B" for after in pair["after_first"])
        print(f"A/B batch={pair['batch']} x{pair['senders']} (after/before per round; first: {first}):")
        for key in PAIRED:
            print(f"  {key:<28} median {pair[f'{key}_ratio']}   rounds {pair[f'{key}_ratios']}")
    relay = results["relay"]
    took = relay["drain_seconds"]
    print(f"{'relay: drain 5000 backlog':<28}{relay['events_per_second']:>10}   (all delivered in {took}s)")
    verify = results["verify"]
    walked = f"{verify['records']} records in {verify['seconds']}s"
    print(
        f"{'verify chain':<28}{verify['records_per_second']:>10}{TARGETS['verify']:>8}   records/s ({walked})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
