"""The approvals service under load: the approval queue and decisions, at 32 concurrent clients.

What runs (real processes on loopback): the approvals service, the timesheets service it asks for
entries and applies decisions at, the audit service both relay their events to, and PostgreSQL/Redis
from ``DATABASE_URL``/``REDIS_URL`` (embedded ones when unset). 16,000 submitted entries of 32
employees are seeded; 8 managers decide. Requests go straight to the approvals service with
pre-signed identity headers (as the gateway would send them):

- ``queue``: ``GET /approvals?limit=20`` (a manager's first page: the newest submitted entries of
  everyone else, served by the timesheets service's internal route);
- ``decide``: ``PUT /approvals/{id}`` ``{"decision": "approved"}`` on a different entry every time (a
  decision is recorded once: the approvals service records it pending, applies it at the timesheets
  service, settles it with its audit event).

``BENCH_APPROVALS_ROUNDS`` (default 3) interleaved rounds, ``BENCH_APPROVALS_SECONDS`` (default 8)
each; medians, each round's rps, the CPU time per request of every server process. Writes
``bench/results/approvals.json`` and prints a table. Benchmarks assert nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
from svckit.identity import Identity
from svckit.migrations import migrate

from bench._backing import fresh_database, servers
from bench._measure import CpuMeter
from bench._presigned import Request, write_pool
from bench.api import CLIENTS, measured, median_of, pid_of, run_wrk
from testkit.fixtures import ServiceProcess, new_pair_keys, pair_signer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ISSUER = "http://127.0.0.1:9/"
EMPLOYEES = 32
PER_EMPLOYEE = 500
MANAGERS = 8
SCOPES = frozenset({"read:timesheets", "approve:timesheets"})

DECISION = b'{"decision":"approved"}'
#: pre-signed queue requests per second of a run (more than the service answers here)
QUEUE_PER_SECOND = 1500


def manager(n: int) -> Identity:
    return Identity(ISSUER, f"bench-manager-{n % MANAGERS}", "user", "timesheets-spa", SCOPES, "")


async def seed(url: str) -> list[uuid.UUID]:
    """The schemas, and the employees' submitted entries (their ids, in a shuffled-free order)."""
    for service in ("timesheets", "approvals", "audit"):
        await migrate(url, service, ROOT / "services" / service / service / "migrations")
    conn = await asyncpg.connect(url)
    try:
        ids = [uuid.uuid4() for _ in range(EMPLOYEES * PER_EMPLOYEE)]
        day = dt.date(2026, 11, 27)
        await conn.copy_records_to_table(
            "entries",
            schema_name="timesheets",
            columns=["id", "owner_issuer", "owner_subject", "date", "project", "hours", "source"],
            records=[
                (
                    entry_id,
                    ISSUER,
                    f"bench-user-{n % EMPLOYEES:02d}",
                    day - dt.timedelta(days=n % 300),
                    "Seed",
                    8,
                    "api",
                )
                for n, entry_id in enumerate(ids)
            ],
        )
        await conn.execute("ANALYZE timesheets.entries")
    finally:
        await conn.close()
    return ids


def queue_script(path: Path, keys: dict[str, str], requests: int) -> Path:
    """``requests`` pre-signed queue reads (each its own nonce), rotating over the managers."""
    signer = pair_signer(keys, "gateway", "approvals")
    target = "/approvals?limit=20"
    return write_pool(
        path,
        (
            ("GET", target, signer.headers(manager(n), method="GET", target=target), b"")
            for n in range(requests)
        ),
    )


def decide_script(path: Path, keys: dict[str, str], entries: list[uuid.UUID]) -> Path:
    """One signed PUT per entry (the signature binds the path, the body's digest and a nonce)."""
    signer = pair_signer(keys, "gateway", "approvals")

    def pool() -> Iterator[Request]:
        for n, entry_id in enumerate(entries):
            target = f"/approvals/{entry_id}"
            headers = signer.headers(manager(n), method="PUT", target=target, body=DECISION)
            yield "PUT", target, {**headers, "Content-Type": "application/json"}, DECISION

    return write_pool(path, pool())


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (make system-deps); skipping the approvals benchmark")
        return 1
    seconds = float(os.environ.get("BENCH_APPROVALS_SECONDS", "8"))
    rounds = int(os.environ.get("BENCH_APPROVALS_ROUNDS", "3"))
    logs = Path(tempfile.mkdtemp(prefix="bench-approvals-"))
    processes: list[ServiceProcess] = []
    runs: dict[str, list[dict[str, Any]]] = {"queue": [], "decide": []}
    try:
        with servers(redis=True) as backing, fresh_database(f"tsp_bench_approvals_{os.getpid()}") as url:
            entries = asyncio.run(seed(url))
            try:
                keys = new_pair_keys("bench")
                env = {
                    "DATABASE_URL": url,
                    "REDIS_URL": backing.redis_url or "",
                    "REDIS_KEY_PREFIX": f"tsp-bench-approvals:{os.getpid()}:",
                    **keys,
                    "LOG_LEVEL": "WARNING",
                }
                audit = ServiceProcess("audit", env, log_dir=logs).start()
                processes.append(audit)
                timesheets = ServiceProcess(
                    "timesheets", {**env, "AUDIT_URL": audit.url}, log_dir=logs
                ).start()
                processes.append(timesheets)
                approvals_env = {**env, "AUDIT_URL": audit.url, "TIMESHEETS_URL": timesheets.url}
                approvals = ServiceProcess("approvals", approvals_env, log_dir=logs).start()
                processes.append(approvals)
                meter = CpuMeter(
                    {"approvals": pid_of(approvals), "timesheets": pid_of(timesheets), "audit": pid_of(audit)}
                )
                per_round = len(entries) // (rounds + 1)
                slices = [entries[i * per_round : (i + 1) * per_round] for i in range(rounds + 1)]
                run_wrk(
                    approvals.url, queue_script(logs / "queue.lua", keys, 2 * QUEUE_PER_SECOND), 2
                )  # warm-up
                run_wrk(approvals.url, decide_script(logs / "decide.lua", keys, slices[-1]), 2)
                for n in range(rounds):
                    scripts = {
                        "queue": queue_script(logs / "queue.lua", keys, int(seconds * QUEUE_PER_SECOND)),
                        "decide": decide_script(logs / "decide.lua", keys, slices[n]),
                    }
                    for name, script in scripts.items():
                        runs[name].append(measured(lambda: run_wrk(approvals.url, script, seconds), meter))  # noqa: B023
            finally:
                for process in reversed(processes):
                    process.stop()
    finally:
        shutil.rmtree(logs, ignore_errors=True)

    cases = {name: median_of(found) for name, found in runs.items()}
    for case in cases.values():
        case.pop("raw", None)
    report = {
        "benchmark": "approvals",
        "what": "straight to the approvals service: GET /approvals?limit=20, PUT /approvals/{id} approved",
        "clients": CLIENTS,
        "seconds": seconds,
        "rounds": rounds,
        "cores": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **cases,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "approvals.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'case':<32} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}   cpu us/request   rps per round"
    )
    for label, case in (
        ("queue GET /approvals (c=32)", cases["queue"]),
        ("decide PUT /approvals/{id}", cases["decide"]),
    ):
        cpu = ", ".join(f"{name} {value:.0f}" for name, value in case["cpu_us_per_request"].items())
        print(
            f"{label:<32} {case['rps']:>8.0f} {case['p50_ms']:>8.1f} {case['p99_ms']:>8.1f}"
            f" {case['non_2xx']:>8}   {cpu}   {case['rps_rounds']}"
        )
    print(f"written to {RESULTS / 'approvals.json'}")
    return 0 if all(case["non_2xx"] == 0 for case in cases.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
