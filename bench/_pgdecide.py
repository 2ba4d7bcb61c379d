"""What Postgres does per decision for the services, and what their backends wait for under the load.

``python -m bench _pgdecide`` (under the bench lock, without ``DATABASE_URL``/``REDIS_URL``): the
embedded Postgres of ``bench._pgwork`` (``pg_stat_statements`` preloaded) and a Redis of its own; the
audit, timesheets and approvals services on one database seeded as ``bench/approvals.py`` seeds it.
The decision load (``bench/approvals.py``'s pre-signed PUTs, 32 connections) runs ``PGDECIDE_SECONDS``
(10); meanwhile ``pg_stat_activity`` is sampled every ``PGDECIDE_SAMPLE_MS`` (10) ms: the wait events
of the active backends by application, and each ungranted lock in ``pg_locks``. Printed: the
statements per decision (calls, rows, execution + planning ms, WAL bytes), the wait histogram, and the
latencies wrk saw. A diagnostic: nothing is written.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import asyncpg

from bench._backing import MAX_CONNECTIONS, fresh_database
from bench._pgwork import STATE, enable, snapshot
from bench.api import run_wrk
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


def main() -> int:
    from devstack.backing import EmbeddedPostgres, EmbeddedRedis

    seconds = float(os.environ.get("PGDECIDE_SECONDS", "10"))
    every = float(os.environ.get("PGDECIDE_SAMPLE_MS", "10")) / 1000
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
    try:
        asyncio.run(enable(server))
        with fresh_database(name) as url:
            per = int(seconds * 3000)
            entries = asyncio.run(seed(url, per + 4000))
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
            approvals = ServiceProcess(
                "approvals", {**env, "AUDIT_URL": audit.url, "TIMESHEETS_URL": timesheets.url}, log_dir=logs
            ).start()
            processes.append(approvals)
            run_wrk(approvals.url, decide_script(logs / "warm.lua", keys, entries[per:]), 3)
            time.sleep(3)
            before = asyncio.run(snapshot(server, {"d": name}))
            seen: Counter[str] = Counter()
            stop = threading.Event()
            sampler = threading.Thread(target=sample, args=(server, name, stop, every, seen))
            sampler.start()
            result = run_wrk(approvals.url, decide_script(logs / "decide.lua", keys, entries[:per]), seconds)
            stop.set()
            sampler.join()
            time.sleep(3)  # the relays drain
            after = asyncio.run(snapshot(server, {"d": name}))
            n = max(1, result["requests"])
            print(
                f"{result['requests']} decisions, {result['rps']} rps, p50 {result['p50_ms']} p90 "
                f"{result['p90_ms']} p99 {result['p99_ms']} ms, non-2xx {result['non_2xx']}"
            )
            print(f"{'calls/dec':>9} {'rows/dec':>9} {'us/dec':>8} {'wal B/dec':>9}  statement")
            rows = []
            for key, (calls, count, ms, wal) in after["statements"]["d"].items():
                was = before["statements"]["d"].get(key, (0, 0, 0.0, 0))
                if calls - was[0]:
                    rows.append(
                        (
                            (ms - was[2]) * 1000 / n,
                            (calls - was[0]) / n,
                            (count - was[1]) / n,
                            (wal - was[3]) / n,
                            key,
                        )
                    )
            for us, calls, count, wal, key in sorted(rows, reverse=True):
                print(f"{calls:>9.3f} {count:>9.3f} {us:>8.1f} {wal:>9.0f}  {key[:140]}")
            samples = seen.pop("(samples)", 1)
            print(f"active backends per sample ({samples} samples every {every * 1000:.0f} ms):")
            for what, count in seen.most_common(40):
                print(f"{count / samples:>7.3f}  {what}")
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
