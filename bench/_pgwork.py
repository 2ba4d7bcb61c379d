"""What Postgres does per request for the timesheets service and for ``reference_audited``.

``python -m bench _pgwork`` (under the bench lock, without ``DATABASE_URL``/``REDIS_URL``): an
embedded Postgres of its own (``.local/bench-pgwork``, started with ``pg_stat_statements`` preloaded,
``track = all`` so statements inside the day cap's functions count too) and Redis; the timesheets
service and its audit service on one database, ``reference_audited`` (``bench/api.py``'s case: the
reference with the identity contract and the outbox relay) and its own audit service on another, both
seeded as ``bench/api.py`` seeds them. The direct mix (``bench/api.py``'s pre-signed creates and
lists) is sent to each in turn, ``PGWORK_ROUNDS`` (2) rounds of ``PGWORK_SECONDS`` (10) each, and
for each case it prints, per request and per database (``dbid``, so the other case's idle relay is
not counted): the statements (calls, rows, execution time), the transactions and tuples
(``pg_stat_database``), and Postgres's CPU (every process's, the run's only, and split by process:
each app's backends, its audit service's, the background processes). A diagnostic, not a benchmark
with results to keep: it prints, nothing is written (its figures: services/timesheets/README.md).

``PGWORK_SETTLE`` (11 s) is the pause after each run before the counters are read (backends flush
``pg_stat_database`` within 10 s of going idle); ``PGWORK_CONNECTIONS`` (32) wrk's connections (fewer:
a machine that is not saturated); ``PGWORK_PERF=<prefix>`` samples each case's app backends with
``perf record`` into ``<prefix>.<case>.<round>``; ``PGWORK_BUFFERS=1`` shows each statement's shared
buffers touched (hit + read) in the WAL bytes' column (also in ``bench._pgdecide``'s table): what its
plan visits, which the machine's load does not blur. ``PGWORK_PLAIN=1`` adds a third case, the plain
``reference`` (``bench/api.py``'s: no identity check, no relay, its outbox rows stubs left unread) on a
database of its own: what the issue's comparison is against (``bench._pgmicro`` has the same split
per statement, from one connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from bench._backing import MAX_CONNECTIONS, embedded_postgres, fresh_database
from bench._measure import cpu_seconds
from bench.api import (
    USERS,
    Issuer,
    direct_script,
    prepare_database,
    run_wrk,
    start_reference,
    start_reference_audited,
)
from testkit.fixtures import ServiceProcess, new_pair_keys

ROOT = Path(__file__).resolve().parents[1]
#: ``PGWORK_STATEMENTS=0``: without pg_stat_statements (its own cost off the figures; no statements),
#: on a server of its own (the other's configuration names the extension's settings)
STATEMENTS = os.environ.get("PGWORK_STATEMENTS", "1") != "0"
STATE = ROOT / ".local" / ("bench-pgwork" if STATEMENTS else "bench-pgwork-plain")
DATABASE_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_hit",
    "blks_read",
    "sessions",
)


async def snapshot(server: str, names: dict[str, str]) -> dict[str, Any]:
    """Statement and database counters of the databases ``names`` (case → database name)."""
    conn = await asyncpg.connect(server)
    try:
        oids = {
            case: await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
            for case, name in names.items()
        }
        statements: dict[str, dict[str, tuple[int, int, float, int]]] = {case: {} for case in names}
        rows = []
        if STATEMENTS:
            # PGWORK_PLANS: the plannings (a statement prepared again shows here) instead of the rows
            counted = "plans" if os.environ.get("PGWORK_PLANS") else "rows"
            # PGWORK_BUFFERS: the shared buffers each statement touched (hit + read: what its plan
            # visits, unlike its time free of the machine's load) instead of its WAL bytes
            touched = (
                "shared_blks_hit + shared_blks_read" if os.environ.get("PGWORK_BUFFERS") else "wal_bytes"
            )
            rows = await conn.fetch(
                f"SELECT dbid, toplevel, query, calls, {counted} AS rows, total_exec_time, total_plan_time,"
                f" {touched} AS wal_bytes FROM pg_stat_statements"
            )
        for row in rows:
            for case, oid in oids.items():
                if row["dbid"] == oid:
                    key = ("" if row["toplevel"] else "  (in fn) ") + " ".join(row["query"].split())[:150]
                    calls, count, ms, wal = statements[case].get(key, (0, 0, 0.0, 0))
                    statements[case][key] = (
                        calls + row["calls"],
                        count + row["rows"],
                        ms + row["total_exec_time"] + row["total_plan_time"],
                        wal + int(row["wal_bytes"]),
                    )
        database = {}
        for case, name in names.items():
            record = await conn.fetchrow(
                f"SELECT {', '.join(DATABASE_COUNTERS)} FROM pg_stat_database WHERE datname = $1", name
            )
            database[case] = dict(record) if record is not None else {}
        return {"statements": statements, "database": database}
    finally:
        await conn.close()


async def backends(server: str) -> dict[int, str]:
    """Postgres's processes by pid: backend type, database and application name."""
    conn = await asyncpg.connect(server)
    try:
        rows = await conn.fetch("SELECT pid, backend_type, datname, application_name FROM pg_stat_activity")
        return {
            row[
                "pid"
            ]: f"{row['backend_type']} {row['datname'] or ''} {row['application_name'] or ''}".strip()
            for row in rows
        }
    finally:
        await conn.close()


def process_cpu(root: int | None) -> dict[int, float]:
    return {pid: usage[0] + usage[1] for pid, usage in process_usage(root).items()}


def process_usage(root: int | None) -> dict[int, tuple[float, float, int, int]]:
    """Each child of ``root``: user and system CPU seconds, voluntary and involuntary context
    switches (a backend that sleeps between statements is woken for each: the system time and the
    voluntary switches say how often)."""
    import psutil

    found: dict[int, tuple[float, float, int, int]] = {}
    if root is None:
        return found
    for process in psutil.Process(root).children(recursive=True):
        try:
            with process.oneshot():
                times = process.cpu_times()
                switches = process.num_ctx_switches()
        except psutil.Error:
            continue
        found[process.pid] = (times.user, times.system, switches.voluntary, switches.involuntary)
    return found


#: the part of a run's CPU no live process accounts for: backends that ended during it, the postmaster
ENDED = "(ended during the run, postmaster's own)"


class ProcessSplit:
    """Postgres's CPU between :meth:`start` and :meth:`stop`, split by process: each backend by type,
    database and application name (:func:`backends`), and :data:`ENDED` for the rest of the whole
    server's (:func:`bench._measure.cpu_seconds`, which counts ended children too). The values add up
    to the server's CPU over the run."""

    def __init__(self, server: str, postgres: int) -> None:
        self.server = server
        self.postgres = postgres
        self._per_process: dict[int, tuple[float, float, int, int]] = {}
        self._total = 0.0
        #: the last run's user and system seconds, voluntary and involuntary switches and the number of
        #: processes that used 1 % or more of the kind's CPU, by kind (live processes only)
        self.detail: dict[str, list[float]] = {}

    def start(self) -> None:
        self._per_process = process_usage(self.postgres)
        self._total = cpu_seconds(self.postgres)

    def stop(self) -> dict[str, float]:
        now = process_usage(self.postgres)
        total = cpu_seconds(self.postgres) - self._total
        kinds = asyncio.run(backends(self.server))
        split: dict[str, float] = defaultdict(float)
        used: dict[str, list[float]] = defaultdict(list)
        detail: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0, 0])
        for pid, usage in now.items():
            was = self._per_process.get(pid, (0.0, 0.0, 0, 0))
            kind = kinds.get(pid, "(not in pg_stat_activity)")
            delta = [usage[i] - was[i] for i in range(4)]
            split[kind] += delta[0] + delta[1]
            used[kind].append(delta[0] + delta[1])
            for i in range(4):
                detail[kind][i] += delta[i]
        for kind, seconds in used.items():
            detail[kind][4] = sum(1 for s in seconds if s >= 0.01 * max(1e-9, split[kind]))
        split[ENDED] = total - sum(split.values())
        self.detail = dict(detail)
        return dict(split)


async def table_counters(url: str) -> dict[str, dict[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, seq_scan, idx_scan, n_tup_ins, n_tup_upd,"
            " n_tup_hot_upd, n_tup_del, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables"
        )
        return {row["name"]: {k: int(v or 0) for k, v in dict(row).items() if k != "name"} for row in rows}
    finally:
        await conn.close()


async def enable(server: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


def main() -> int:
    from devstack.backing import EmbeddedPostgres, EmbeddedRedis

    seconds = float(os.environ.get("PGWORK_SECONDS", "10"))
    rounds = int(os.environ.get("PGWORK_ROUNDS", "2"))
    connections = int(os.environ.get("PGWORK_CONNECTIONS", "32"))  # fewer: a machine not saturated
    settle = float(os.environ.get("PGWORK_SETTLE", "11"))  # pg_stat_database is flushed within 10 s
    postgres = EmbeddedPostgres(
        STATE,
        {"max_connections": str(MAX_CONNECTIONS)}
        | ({"shared_preload_libraries": "pg_stat_statements"} if STATEMENTS else {}),
    )
    server = postgres.start()
    redis = EmbeddedRedis(STATE, port=6384)
    redis_url = redis.start()
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = server
    issuer = Issuer()
    subjects = [f"bench-user-{i:02d}" for i in range(USERS)]
    logs = Path(tempfile.mkdtemp(prefix="bench-pgwork-"))
    processes: list[ServiceProcess] = []
    audited = None
    plain: subprocess.Popen[bytes] | None = None
    name = f"tsp_pgwork_{os.getpid()}"
    try:
        if STATEMENTS:
            asyncio.run(enable(server))
        plain_case = os.environ.get("PGWORK_PLAIN", "") not in ("", "0")
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(fresh_database(name))
            audited_db = stack.enter_context(fresh_database(name + "_audited"))
            plain_db = stack.enter_context(fresh_database(name + "_plain")) if plain_case else None
            for database in (url, audited_db, plain_db):
                if database is not None:
                    asyncio.run(prepare_database(database, issuer.issuer, subjects))
            keys = new_pair_keys("bench")
            prefix = f"tsp-pgwork:{os.getpid()}:"
            env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix, **keys}
            env["LOG_LEVEL"] = "WARNING"
            audit = ServiceProcess("audit", env, log_dir=logs).start()
            processes.append(audit)
            timesheets = ServiceProcess("timesheets", {**env, "AUDIT_URL": audit.url}, log_dir=logs).start()
            processes.append(timesheets)
            _, audited = start_reference_audited(audited_db, logs, env, prefix, processes)
            urls = {"service": timesheets.url, "reference_audited": audited.reference_url}  # type: ignore[attr-defined]
            names = {"service": name, "reference_audited": name + "_audited"}
            databases = {"service": url, "reference_audited": audited_db}
            if plain_db is not None:
                plain = start_reference(plain_db, logs, None, "reference")
                urls["reference"] = plain.reference_url  # type: ignore[attr-defined]
                names["reference"] = name + "_plain"
                databases["reference"] = plain_db
            postgres_pid = embedded_postgres(STATE)
            assert postgres_pid is not None, "the embedded Postgres is not running"
            splitter = ProcessSplit(server, postgres_pid)
            script = logs / "direct.lua"

            def signed(run_seconds: float) -> Path:
                return direct_script(script, keys, issuer.issuer, subjects, int(run_seconds * 20_000))

            for target in urls.values():  # warm-up
                run_wrk(target, signed(3), 3)
            time.sleep(settle)
            totals: dict[str, dict[str, Any]] = {
                case: {
                    "requests": 0,
                    "cpu": 0.0,
                    "statements": defaultdict(lambda: [0, 0, 0.0, 0]),
                    "database": defaultdict(int),
                    "tables": defaultdict(lambda: defaultdict(int)),
                    "by_process": defaultdict(float),
                }
                for case in urls
            }
            for number in range(rounds):
                order = list(urls) if number % 2 == 0 else list(reversed(urls))
                for case in order:
                    before = asyncio.run(snapshot(server, names))
                    tables_before = asyncio.run(table_counters(databases[case]))
                    perf = None
                    if os.environ.get("PGWORK_PERF"):  # the app's backends sampled by perf (a file per case)
                        app = "timesheets" if case == "service" else "bench-reference"
                        kinds_now = asyncio.run(backends(server))
                        pids = [
                            str(pid)
                            for pid, kind in kinds_now.items()
                            if kind == f"client backend {names[case]} {app}"
                        ]
                        perf = subprocess.Popen(
                            [
                                "perf",
                                "record",
                                "-F",
                                "499",
                                "-g",
                                "-o",
                                f"{os.environ['PGWORK_PERF']}.{case}.{number}",
                                "-p",
                                ",".join(pids),
                                "--",
                                "sleep",
                                str(seconds - 1),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    splitter.start()
                    result = run_wrk(urls[case], signed(seconds), seconds, connections=connections)
                    by_kind = splitter.stop()
                    cpu = sum(by_kind.values())
                    if perf is not None:
                        perf.wait(30)
                    total = totals[case]
                    for kind, used in by_kind.items():
                        total["by_process"][kind] += used
                    time.sleep(settle)
                    after = asyncio.run(snapshot(server, names))
                    tables_after = asyncio.run(table_counters(databases[case]))
                    total["requests"] += result["requests"]
                    total["cpu"] += cpu
                    print(
                        f"round {number} {case}: {result['requests']} requests, {result['rps']} rps,"
                        f" non-2xx {result['non_2xx']}, postgres {cpu * 1e6 / result['requests']:.0f} us/req",
                        flush=True,
                    )
                    for key, (calls, count, ms, wal) in after["statements"][case].items():
                        was = before["statements"][case].get(key, (0, 0, 0.0, 0))
                        row = total["statements"][key]
                        row[0] += calls - was[0]
                        row[1] += count - was[1]
                        row[2] += ms - was[2]
                        row[3] += wal - was[3]
                    for counter in DATABASE_COUNTERS:
                        total["database"][counter] += int(
                            after["database"][case][counter] - before["database"][case][counter]
                        )
                    for table, counters in tables_after.items():
                        for counter, value in counters.items():
                            total["tables"][table][counter] += value - tables_before.get(table, {}).get(
                                counter, 0
                            )
            report(totals)
    finally:
        for reference in (audited, plain):
            if reference is not None:
                reference.terminate()
                reference.wait(10)
        for process in reversed(processes):
            process.stop()
        issuer.close()
        redis.stop()
        postgres.stop()
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved
        shutil.rmtree(logs, ignore_errors=True)
    return 0


def report(totals: dict[str, dict[str, Any]]) -> None:
    cases = list(totals)
    per = {case: max(1, totals[case]["requests"]) for case in cases}
    print("\nper request:", ", ".join(f"{case} {totals[case]['requests']} requests" for case in cases))
    print(f"{'postgres cpu us':<40}" + "".join(f"{totals[c]['cpu'] * 1e6 / per[c]:>20.1f}" for c in cases))
    print("postgres cpu us per request by process:")
    kinds = sorted({k for c in cases for k in totals[c]["by_process"]})
    for kind in kinds:
        values = "".join(f"{totals[c]['by_process'].get(kind, 0.0) * 1e6 / per[c]:>20.1f}" for c in cases)
        print(f"  {kind[:60]:<60}{values}")
    for counter in DATABASE_COUNTERS:
        values = "".join(f"{totals[c]['database'][counter] / per[c]:>20.3f}" for c in cases)
        print(f"{counter:<40}{values}")
    print("\ntables (n per request):")
    tables = sorted({t for c in cases for t in totals[c]["tables"]})
    for table in tables:
        for counter in (
            "seq_scan",
            "idx_scan",
            "n_tup_ins",
            "n_tup_upd",
            "n_tup_hot_upd",
            "n_tup_del",
            "autovacuum_count",
            "autoanalyze_count",
        ):
            shares = [totals[c]["tables"][table][counter] / per[c] for c in cases]
            if any(abs(share) > 0.0005 for share in shares):
                print(f"  {table + ' ' + counter:<50}" + "".join(f"{share:>14.4f}" for share in shares))
    print("\nstatements (calls / rows / exec+plan us / WAL bytes, per request):")
    keys = sorted({k for c in cases for k in totals[c]["statements"]})
    for key in keys:
        cells = []
        for case in cases:
            calls, count, ms, wal = totals[case]["statements"].get(key, [0, 0, 0.0, 0])
            if calls == 0:
                cells.append(f"{case}: -")
                continue
            cells.append(
                f"{case}: {calls / per[case]:.4f} / {count / per[case]:.3f} / {ms * 1000 / per[case]:.1f}"
                f" / {wal / per[case]:.0f}"
            )
        if any(not cell.endswith("-") for cell in cells):
            print(f"- {key}\n    " + "   |   ".join(cells))
