"""What Postgres does per decision for the services, and what their backends wait for under the load.

``python -m bench _pgdecide`` (under the bench lock, without ``DATABASE_URL``/``REDIS_URL``): the
embedded Postgres of ``bench._pgwork`` (``pg_stat_statements`` preloaded) and a Redis of its own; the
audit, timesheets and approvals services on one database seeded as ``bench/approvals.py`` seeds it.
The decision load (``bench/approvals.py``'s pre-signed PUTs, 32 connections) runs ``PGDECIDE_ROUNDS``
(2) rounds of ``PGDECIDE_SECONDS`` (10). With ``PGDECIDE_BASELINE=<checkout>`` an approvals service
from that code runs beside (the same timesheets and audit services and database) and the rounds
alternate between the two: an A/B of what Postgres does. Meanwhile ``pg_stat_activity`` is sampled
every ``PGDECIDE_SAMPLE_MS`` (10) ms: the wait events of the active backends by application, and
each ungranted lock in ``pg_locks``. Printed, per variant: each process's CPU per decision (the
whole Postgres server's included), the cluster's WAL records, bytes, writes and syncs per decision
(``pg_stat_wal``, ``pg_stat_io``), the statements per decision (calls, rows, execution + planning
time, WAL bytes), the wait histogram, and the latencies wrk saw. A diagnostic: nothing is written.
``PGDECIDE_PLAIN=1`` adds the plain ``reference`` (``bench/approvals.py``'s: the same four statements,
no identity check, no relays, its outbox rows stubs left unread) as a variant on a database of its own
seeded alike: its statements and Postgres's CPU per decision beside the services' (the cluster's WAL
and the whole server's CPU are each round's running variant's). ``PGDECIDE_ROUNDSTATS=1`` adds, per
round, what else moved (``bench._roundstats``): the host's other load, the outbox backlogs, the audit
ingest, dead tuples / autovacuums / sequential scans per table, the connections to each peer, GC.
``PGDECIDE_HOGS=<n>`` runs n busy loops beside every odd round (both variants): the host's other load
made on purpose, interleaved with rounds without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from bench._backing import MAX_CONNECTIONS, embedded_postgres, fresh_database
from bench._measure import CpuMeter
from bench._pgwork import STATE, enable, snapshot
from bench._roundstats import RoundWatch
from bench.api import pid_of, run_wrk, start_reference
from bench.approvals import decide_script, seed
from testkit.fixtures import ServiceProcess, new_pair_keys

ACTIVITY = """SELECT a.application_name, a.state, coalesce(a.wait_event_type, 'CPU') AS type,
       coalesce(a.wait_event, '-') AS event, l.locktype, l.mode, l.relation::regclass::text AS rel
FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
WHERE a.datname = $1 AND a.state <> 'idle' AND a.pid <> pg_backend_pid()"""


def sample(server: str, name: str, stop: threading.Event, every: float, seen: Counter[str]) -> None:
    async def loop() -> None:
        conn = await asyncpg.connect(server)
        try:
            while not stop.is_set():
                for row in await conn.fetch(ACTIVITY, name):
                    lock = f" lock {row['locktype']} {row['mode']} {row['rel']}" if row["locktype"] else ""
                    seen[
                        f"{row['application_name']:<22} {row['state']:<20} {row['type']}:{row['event']}{lock}"
                    ] += 1
                seen["(samples)"] += 1
                await asyncio.sleep(every)
        finally:
            await conn.close()

    asyncio.run(loop())


async def wal(server: str) -> dict[str, float]:
    """The cluster's WAL counters: records and bytes (``pg_stat_wal``), writes and syncs (Postgres 18
    counts those in ``pg_stat_io``)."""
    conn = await asyncpg.connect(server)
    try:
        row = await conn.fetchrow(
            """SELECT w.wal_records, w.wal_bytes, io.writes AS wal_writes, io.fsyncs AS wal_syncs
               FROM pg_stat_wal AS w,
                    (SELECT sum(writes) AS writes, sum(fsyncs) AS fsyncs FROM pg_stat_io
                     WHERE object = 'wal') AS io"""
        )
        assert row is not None
        return {key: float(value or 0) for key, value in row.items()}
    finally:
        await conn.close()


class Totals:
    """One variant's figures summed over its rounds."""

    def __init__(self) -> None:
        self.decisions = 0
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self.wal: defaultdict[str, float] = defaultdict(float)
        self.statements: dict[str, list[float]] = {}
        self.seen: Counter[str] = Counter()
        self.latency: list[tuple[float, float, float]] = []

    def add(
        self,
        result: dict[str, Any],
        used: dict[str, float],
        before: dict[str, Any],
        after: dict[str, Any],
        wal_before: dict[str, float],
        wal_after: dict[str, float],
    ) -> None:
        self.decisions += result["requests"]
        self.latency.append((result["rps"], result["p50_ms"], result["p99_ms"]))
        for who, seconds in used.items():
            self.cpu[who] += seconds
        for key, value in wal_after.items():
            self.wal[key] += value - wal_before[key]
        for key, values in after["statements"]["d"].items():
            was = before["statements"]["d"].get(key, (0, 0, 0.0, 0))
            row = self.statements.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            for i in range(4):
                row[i] += values[i] - was[i]

    def report(self, case: str, every: float) -> None:
        n = max(1, self.decisions)
        rps, p50, p99 = (statistics.median(column) for column in zip(*self.latency, strict=True))
        print(f"== {case}: {self.decisions} decisions; medians of rounds: {rps} rps, p50 {p50} p99 {p99} ms")
        print("CPU us/decision: " + ", ".join(f"{who} {sec * 1e6 / n:.0f}" for who, sec in self.cpu.items()))
        print(
            "WAL per decision (cluster): "
            + ", ".join(f"{key} {value / n:.3f}" for key, value in self.wal.items())
        )
        print(f"{'calls/dec':>9} {'rows/dec':>9} {'us/dec':>8} {'wal B/dec':>9}  statement")
        rows = sorted(
            (
                (ms * 1000 / n, calls / n, count / n, wal_bytes / n, key)
                for key, (calls, count, ms, wal_bytes) in self.statements.items()
                if calls
            ),
            reverse=True,
        )
        for us, calls, count, wal_bytes, key in rows[:12]:
            print(f"{calls:>9.3f} {count:>9.3f} {us:>8.1f} {wal_bytes:>9.0f}  {key[:140]}")
        samples = self.seen.pop("(samples)", 1)
        print(f"active backends per sample ({samples} samples every {every * 1000:.0f} ms):")
        for what, count in self.seen.most_common(14):
            print(f"{count / samples:>7.3f}  {what}")


def main() -> int:
    from devstack.backing import EmbeddedPostgres, EmbeddedRedis

    seconds = float(os.environ.get("PGDECIDE_SECONDS", "10"))
    every = float(os.environ.get("PGDECIDE_SAMPLE_MS", "10")) / 1000
    rounds = int(os.environ.get("PGDECIDE_ROUNDS", "2"))
    hogs = int(os.environ.get("PGDECIDE_HOGS", "0"))
    baseline = os.environ.get("PGDECIDE_BASELINE", "")
    postgres = EmbeddedPostgres(
        STATE, {"max_connections": str(MAX_CONNECTIONS), "shared_preload_libraries": "pg_stat_statements"}
    )
    server = postgres.start()
    redis = EmbeddedRedis(STATE, port=6384)
    redis_url = redis.start()
    os.environ["DATABASE_URL"] = server
    logs = Path(tempfile.mkdtemp(prefix="bench-pgdecide-"))
    processes: list[ServiceProcess] = []
    name = f"tsp_pgdecide_{os.getpid()}"
    plain = os.environ.get("PGDECIDE_PLAIN", "") not in ("", "0")
    watching = os.environ.get("PGDECIDE_ROUNDSTATS", "") not in ("", "0")
    reference: Any = None
    loops: list[subprocess.Popen[bytes]] = []  # PGDECIDE_HOGS's busy loops of the current round
    try:
        asyncio.run(enable(server))
        with fresh_database(name) as url, fresh_database(name + "_plain") as plain_url:
            per = int(seconds * 3000)
            # a slice per variant and round, and one each for the warm-up
            entries = asyncio.run(seed(url, per * (rounds + 1) * (1 + bool(baseline) + plain)))
            keys = new_pair_keys("bench")
            env = {
                "DATABASE_URL": url,
                "REDIS_URL": redis_url,
                "REDIS_KEY_PREFIX": f"tsp-pgdecide:{os.getpid()}:",
                **keys,
                "LOG_LEVEL": "WARNING",
            }
            audit = ServiceProcess("audit", env, log_dir=logs).start()
            processes.append(audit)
            timesheets = ServiceProcess("timesheets", {**env, "AUDIT_URL": audit.url}, log_dir=logs).start()
            processes.append(timesheets)
            approvals_env = {**env, "AUDIT_URL": audit.url, "TIMESHEETS_URL": timesheets.url}
            variants = {"service": ServiceProcess("approvals", approvals_env, log_dir=logs).start()}
            processes.append(variants["service"])
            if baseline:  # the approvals service from older code, beside (the same peers and database)
                path = os.pathsep.join((f"{baseline}/services/approvals", f"{baseline}/services/kit"))
                variants["before"] = ServiceProcess(
                    "approvals", {**approvals_env, "PYTHONPATH": path}, log_dir=logs
                ).start()
                processes.append(variants["before"])
            databases = dict.fromkeys(variants, name)
            urls = dict.fromkeys(variants, url)
            if plain:  # the plain reference, its database seeded with the same entries
                asyncio.run(seed(plain_url, len(entries)))
                reference = start_reference(plain_url, logs, None, "reference")
                reference.url = reference.reference_url
                variants["reference"] = reference
                databases["reference"] = name + "_plain"
                urls["reference"] = plain_url
            postgres_pid = embedded_postgres(STATE)
            slices = iter(range(0, len(entries), per))
            for variant in variants.values():  # warm-up
                run_wrk(variant.url, decide_script(logs / "warm.lua", keys, entries[next(slices) :][:per]), 3)
            time.sleep(3)
            totals = {case: Totals() for case in variants}
            for number in range(rounds):
                order = list(variants) if number % 2 == 0 else list(reversed(variants))
                # PGDECIDE_HOGS: busy loops beside every other round's load, both variants' (an A/B of
                # the host's other load on the same code)
                loops = [
                    subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(hogs if number % 2 else 0)
                ]
                if loops:
                    print(f"round {number}: {len(loops)} busy loops beside", flush=True)
                for case in order:
                    total = totals[case]
                    meter = CpuMeter(
                        {"reference": reference.pid, "postgres": postgres_pid}
                        if case == "reference"
                        else {
                            "approvals": pid_of(variants[case]),
                            "timesheets": pid_of(timesheets),
                            "audit": pid_of(audit),
                            "postgres": postgres_pid,
                        }
                    )
                    before = asyncio.run(snapshot(server, {"d": databases[case]}))
                    wal_before = asyncio.run(wal(server))
                    stop = threading.Event()
                    sampler = threading.Thread(
                        target=sample, args=(server, databases[case], stop, every, total.seen)
                    )
                    script = decide_script(logs / "decide.lua", keys, entries[next(slices) :][:per])
                    watch = None
                    if watching:
                        metrics = (
                            {}
                            if case == "reference"
                            else {
                                "approvals": variants[case].metrics_url,
                                "timesheets": timesheets.metrics_url,
                                "audit": audit.metrics_url,
                            }
                        )
                        watch = RoundWatch(urls[case], meter.pids, metrics)
                        watch.start()
                    sampler.start()
                    meter.start()
                    result = run_wrk(variants[case].url, script, seconds)
                    used = meter.stop()
                    if watch is not None:
                        watch.stop()
                    stop.set()
                    sampler.join()
                    time.sleep(3)  # the relays drain
                    after = asyncio.run(snapshot(server, {"d": databases[case]}))
                    wal_after = asyncio.run(wal(server))
                    n = max(1, result["requests"])
                    total.add(result, used, before, after, wal_before, wal_after)
                    print(
                        f"round {number} {case}: {n} decisions, {result['rps']} rps, p50 {result['p50_ms']}"
                        f" p99 {result['p99_ms']} ms, CPU us/decision "
                        + ", ".join(f"{who} {sec * 1e6 / n:.0f}" for who, sec in used.items()),
                        flush=True,
                    )
                    if watch is not None:
                        watch.report(f"round {number} {case}", sum(used.values()), n)
                for loop in loops:
                    loop.kill()
                    loop.wait()
                loops = []
            for case, total in totals.items():
                total.report(case, every)
    finally:
        for loop in loops:  # a round that failed midway leaves none running
            loop.kill()
            loop.wait()
        if reference is not None:
            reference.terminate()
            reference.wait(10)
        for process in reversed(processes):
            process.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
