"""One use of a pooled connection, in process: the kit's context managers against the generators
they replaced.

Every statement a service sends goes through :meth:`svckit.db.Database.connection` (or
``transaction``): four per approval decision across the two services, one per relay batch. Those
were ``contextlib.asynccontextmanager`` generators; they are classes now
(:class:`svckit.db.PooledConnection`, :class:`svckit.db.PooledTransaction`). This measures what that
saves, with the generators as they were (:func:`generator_connection`, :func:`generator_transaction`)
beside the classes on the same pool, in one process on uvloop as the services run:

* ``use``: the block sends nothing (acquire and release only: what the manager adds, with asyncpg's
  acquire and release, which both pay);
* ``fetch``: the block sends ``SELECT 1`` (a use as a handler makes one; the round trip is the same
  for both and dilutes the difference);
* ``transaction``: ``transaction()`` around ``SELECT 1`` (BEGIN, the statement, COMMIT).

``BENCH_CONNECTION_ROUNDS`` (default 15) interleaved rounds of ``BENCH_CONNECTION_USES`` (default 3,000)
uses per variant and case, the order reversed every other round; CPU time of the process
(``time.process_time``) per use, medians over the rounds, and the medians of the paired per-round
differences (``saved_us_per_use``) and ratios. Writes ``bench/results/connection_use.json``.
Benchmarks assert nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvloop
from svckit.db import (
    READ_ONLY_ERRORS,
    UNAVAILABLE_ERRORS,
    Connection,
    Database,
    IsolationLevel,
    abandon,
)

from bench._backing import fresh_database, servers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
Use = Callable[[Database], contextlib.AbstractAsyncContextManager[Connection]]


@contextlib.asynccontextmanager
async def generator_connection(database: Database) -> AsyncIterator[Connection]:
    """``Database.connection`` as it was (a generator), for the comparison."""
    pool = database.pool
    async with asyncio.timeout(database.connect_timeout):
        conn: Connection = await pool.acquire()
    try:
        yield conn
    except READ_ONLY_ERRORS:
        conn.terminate()
        raise
    except TimeoutError:
        abandon(conn)
        raise
    finally:
        await pool.release(conn, timeout=database.connect_timeout)


@contextlib.asynccontextmanager
async def generator_transaction(
    database: Database, isolation: IsolationLevel = "read_committed"
) -> AsyncIterator[Connection]:
    """``Database.transaction`` as it was (a generator; the lost-COMMIT resolution, never reached
    here, left out), for the comparison."""
    async with generator_connection(database) as conn:
        conn.get_server_pid()
        body_done = False
        try:
            async with conn.transaction(isolation=isolation):
                try:
                    yield conn
                except TimeoutError:
                    abandon(conn)
                    raise
                body_done = True
        except UNAVAILABLE_ERRORS:
            if not body_done:
                raise


async def _uses(database: Database, manager: Use, statement: bool, count: int) -> float:
    """CPU µs per use of ``manager`` (``statement``: the block sends ``SELECT 1``)."""
    started = time.process_time()
    for _ in range(count):
        async with manager(database) as conn:
            if statement:
                await conn.fetchval("SELECT 1")
    return (time.process_time() - started) / count * 1e6


CASES: dict[str, tuple[Use, Use, bool]] = {
    "use": (generator_connection, Database.connection, False),
    "fetch": (generator_connection, Database.connection, True),
    "transaction": (generator_transaction, Database.transaction, True),
}


async def _measure(url: str, rounds: int, count: int) -> dict[str, Any]:
    database = Database(url, min_size=1, max_size=10)
    await database.wait_connected(30)
    try:
        samples: dict[str, dict[str, list[float]]] = {case: {"generator": [], "class": []} for case in CASES}
        for old, new, statement in CASES.values():  # warm both (prepared statements, caches)
            await _uses(database, old, statement, 200)
            await _uses(database, new, statement, 200)
        for number in range(rounds):
            for case, (old, new, statement) in CASES.items():
                order: list[tuple[str, Use]] = [("generator", old), ("class", new)]
                if number % 2:
                    order.reverse()
                for name, manager in order:
                    samples[case][name].append(await _uses(database, manager, statement, count))
    finally:
        await database.close()
    found: dict[str, Any] = {}
    for case, runs in samples.items():
        old_us, new_us = statistics.median(runs["generator"]), statistics.median(runs["class"])
        pairs = list(zip(runs["class"], runs["generator"], strict=True))
        paired = statistics.median(n / o for n, o in pairs)
        saved = statistics.median(o - n for n, o in pairs)
        found[case] = {
            "generator_cpu_us_per_use": round(old_us, 2),
            "class_cpu_us_per_use": round(new_us, 2),
            "saved_us_per_use": round(saved, 2),
            "class_vs_generator": round(paired, 3),
            "generator_rounds": [round(v, 2) for v in runs["generator"]],
            "class_rounds": [round(v, 2) for v in runs["class"]],
        }
    return found


def main() -> int:
    rounds = int(os.environ.get("BENCH_CONNECTION_ROUNDS", "15"))
    count = int(os.environ.get("BENCH_CONNECTION_USES", "3000"))
    with servers() as backing, fresh_database(f"bench_connection_use_{os.getpid()}") as url:
        del backing
        cases = uvloop.run(_measure(url, rounds, count))
    result = {
        "benchmark": "connection_use",
        "what": "one use of a pooled connection in process: svckit.db's classes vs the generators",
        "rounds": rounds,
        "uses_per_round": count,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cases": cases,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "connection_use.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'case':<12} {'generator µs':>13} {'class µs':>9} {'saved µs':>9} {'class/gen':>9}")
    for case, figures in cases.items():
        print(
            f"{case:<12} {figures['generator_cpu_us_per_use']:>13} {figures['class_cpu_us_per_use']:>9}"
            f" {figures['saved_us_per_use']:>9} {figures['class_vs_generator']:>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
