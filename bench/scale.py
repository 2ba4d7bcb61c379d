"""One replica or two: what a second replica of the gateway, timesheets and audit services buys, and
whether the platform stays correct when replicas share Postgres and Redis.

What runs (real processes on loopback, started and stopped here): a minimal OIDC issuer (in this
process), and for N = 1 and N = 2 a *stack* of N gateways, N timesheets and N audit services (one
worker each; gateway i forwards to timesheets i, whose outbox relays to audit i, as a Service would
spread connections over pods), all on one PostgreSQL database and one Redis. The load is the API mix
of ``bench/api.py`` (50% ``POST /api/timesheets``, 50% ``GET /api/timesheets?limit=20``) from 32
connections in all, split over the gateways (one ``wrk`` per gateway, pinned to the last core).
Rounds alternate 1, 2, 2, 1 (``BENCH_SCALE_ROUNDS`` pairs), each a fresh stack; medians per case.

After each load, the correctness checks that replicas could break (and that the load itself was
answered 2xx throughout: a round whose load met a limit measured the refusals):

* no duplicates — every request carries a unique tag in ``notes``; no tag is stored twice;
* nothing lost — a second, short load from an HTTP client records the entry id of every 201 and
  finds each stored, once;
* every entry audited — once the outboxes are empty, each entry of the run has exactly one
  ``timesheet.created`` record, and ``python -m audit verify`` finds the chain intact (both audit
  replicas appended to it concurrently);
* rate limits counted across replicas — one more user, limited to ``PROBE_LIMIT`` requests per
  window, sends twice that many requests alternating over the gateways in small bursts: the number
  admitted must be the limit (one replica: exactly; two: at most what the other replica can admit
  before its next sync, see ``gateway/ratelimit.py``).

CPU per request is the user + system time of every server process of the stack (gateways, timesheets,
audit) during the measured load divided by the requests served, also given per service. On a 2-core
machine shared with Postgres, Redis and wrk, a second replica cannot add cores: the figure to read is
the CPU per request (what replication costs), and the checks.

Writes ``bench/results/scale.json``. ``BENCH_SCALE_SECONDS`` (default 10) is each measured load.
Works with and without ``DATABASE_URL`` / ``REDIS_URL`` (embedded servers when unset).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from audit.checkpoints import CheckpointKeys

from bench._backing import fresh_database, servers
from bench._measure import cpu_seconds
from bench.api import AUDIENCE, Issuer, prepare_database, run_wrk
from testkit.fixtures import ServiceProcess, new_pair_keys

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONNECTIONS = 32
CACHE_SECRET = secrets.token_urlsafe(32)  # one key for both gateway replicas of a run
#: many users, so the load itself stays below the per-subject limit (PROBE_LIMIT a round for each:
#: 128 users capped a fast machine's round at 25,600 requests, and 86% of the load was 429s)
USERS = 2048
PROJECT = "Scale"
PROBE_LIMIT = 200
CLIENT_LIMIT = 100_000_000
PROBE_BURST = 10  # requests in flight per gateway in one burst of the rate-limit probe
SERVICES = ("gateway", "timesheets", "audit")

LUA = """
local tokens = {%(tokens)s}
local tag = "%(tag)s"
local n = 0
request = function()
  n = n + 1
  local auth = "Bearer " .. tokens[(n %% #tokens) + 1]
  if n %% 2 == 0 then
    local day = os.date("!%%Y-%%m-%%d", 946684800 + ((n * 7919) %% 36500) * 86400)
    local body = string.format(
      '{"date":"%%s","project":"%(project)s","hours":0.25,"notes":"%%s-%%d"}', day, tag, n)
    return wrk.format("POST", "/api/timesheets",
                      {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/api/timesheets?limit=20", {["Authorization"] = auth})
end
"""


@dataclass
class Stack:
    """N replicas of each service, wired pairwise."""

    replicas: int
    processes: dict[str, list[ServiceProcess]] = field(default_factory=dict)

    def all(self) -> list[ServiceProcess]:
        return [p for name in SERVICES for p in self.processes.get(name, [])]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds of each service's replicas (and their workers) together."""
        return {
            name: sum(
                cpu_seconds(service.process.pid if service.process else None)
                for service in self.processes.get(name, [])
            )
            for name in SERVICES
        }

    def stop(self) -> None:
        for service in reversed(self.all()):
            service.stop()


def start_stack(
    replicas: int, url: str, redis_url: str, issuer: Issuer, logs: Path, tag: str, checkpoint_keys: str
) -> Stack:
    stack = Stack(replicas)
    keys = new_pair_keys("scale")
    common = {
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"tsp-bench-scale:{tag}:",
        **keys,
        "LOG_LEVEL": "WARNING",
    }
    try:
        for _ in range(replicas):
            # the audit replicas sign checkpoints (one at a time), as in production
            audit_env = {**common, "AUDIT_CHECKPOINT_KEYS": checkpoint_keys}
            audit = ServiceProcess("audit", audit_env, log_dir=logs).start("/readyz")
            stack.processes.setdefault("audit", []).append(audit)
            timesheets = ServiceProcess("timesheets", {**common, "AUDIT_URL": audit.url}, log_dir=logs).start(
                "/readyz"
            )
            stack.processes.setdefault("timesheets", []).append(timesheets)
            gateway_env = {
                **common,
                "OIDC_ISSUER": issuer.issuer,
                "OIDC_AUDIENCE": AUDIENCE,
                "TIMESHEETS_URL": timesheets.url,
                "APPROVALS_URL": "http://127.0.0.1:9",
                "AUDIT_URL": audit.url,
                "GATEWAY_WORKERS": "1",
                "GATEWAY_CACHE_SECRET": CACHE_SECRET,  # replicas share their key-set copies in Redis
                "GATEWAY_ACCESS_LOG": "false",
                "RATE_LIMIT_PER_SUBJECT": str(PROBE_LIMIT),
                # every token of the run is one client's: its limit (12,000 a window by default) must not
                # bind, or a fast round's own load uses it up and the probe measures the wrong limit
                "RATE_LIMIT_PER_CLIENT": str(CLIENT_LIMIT),
                "RATE_LIMIT_WINDOW_SECONDS": "3600",
            }
            gateway = ServiceProcess("gateway", gateway_env, log_dir=logs).start("/readyz")
            stack.processes.setdefault("gateway", []).append(gateway)
    except BaseException:
        stack.stop()
        raise
    return stack


def run_wrk_split(stack: Stack, tokens: list[str], seconds: float, logs: Path, tag: str) -> dict[str, Any]:
    """One wrk per gateway, CONNECTIONS in all; returns the summed figures."""
    gateways = stack.processes["gateway"]
    per_gateway = CONNECTIONS // len(gateways)
    scripts = []
    for index, _ in enumerate(gateways):
        script = logs / f"scale-{tag}-{index}.lua"
        share = tokens[index :: len(gateways)]
        script.write_text(
            LUA
            % {
                "tokens": ", ".join(f'"{t}"' for t in share),
                "tag": f"{tag}-{index}",
                "project": PROJECT,
            }
        )
        scripts.append(script)
    results: list[dict[str, Any]] = [{} for _ in gateways]

    def one(index: int) -> None:
        results[index] = run_wrk(gateways[index].url, scripts[index], seconds, connections=per_gateway)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(gateways))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        result.pop("raw", None)
    return {
        "requests": sum(r["requests"] for r in results),
        "rps": round(sum(r["rps"] for r in results), 1),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "per_gateway_rps": [round(r["rps"], 1) for r in results],
    }


async def wait_for_outbox(conn: asyncpg.Connection, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while await conn.fetchval("SELECT count(*) FROM timesheets.outbox"):
        if time.monotonic() - started > timeout:
            raise RuntimeError("the outbox did not drain")
        await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 2)


async def write_and_record(stack: Stack, issuer: Issuer, tag: str, count: int = 200) -> dict[str, str]:
    """A short load from an HTTP client that remembers what was acknowledged: tag -> entry id."""
    gateways = [g.url for g in stack.processes["gateway"]]
    acked: dict[str, str] = {}
    tokens = [issuer.token(f"scale-writer-{i}") for i in range(16)]
    queue = list(range(count))

    async def writer(session: aiohttp.ClientSession, index: int) -> None:
        while queue:
            n = queue.pop()
            note = f"{tag}-acked-{n}"
            day = dt.date(2026, 6, 1) - dt.timedelta(days=n % 365)  # a day holds 24 hours a person
            body = {"date": day.isoformat(), "project": PROJECT, "hours": 1, "notes": note}
            headers = {"Authorization": f"Bearer {tokens[index]}", "Idempotency-Key": note}
            for attempt in range(3):  # a retry keeps the Idempotency-Key: never a second entry
                url = gateways[(n + attempt) % len(gateways)] + "/api/timesheets"
                try:
                    async with session.post(url, json=body, headers=headers) as response:
                        if response.status == 201:
                            acked[note] = (await response.json())["id"]
                            break
                except aiohttp.ClientError:
                    pass

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(writer(session, i) for i in range(len(tokens))))
    return acked


async def probe_rate_limit(stack: Stack, issuer: Issuer, tag: str) -> dict[str, Any]:
    """PROBE_LIMIT requests are allowed per window to one user, whichever replica counts them."""
    gateways = [g.url for g in stack.processes["gateway"]]
    token = issuer.token(f"scale-probe-{tag}")
    statuses: dict[int, int] = {}
    per_gateway_429 = [0] * len(gateways)
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}

        async def one(index: int) -> None:
            url = gateways[index] + "/api/timesheets?limit=1"
            async with session.get(url, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 429:
                    per_gateway_429[index] += 1

        sent = 0
        while sent < 2 * PROBE_LIMIT:
            await asyncio.gather(*(one(i) for i in range(len(gateways)) for _ in range(PROBE_BURST)))
            sent += PROBE_BURST * len(gateways)
            await asyncio.sleep(0.3)  # longer than RATE_LIMIT_SYNC_SECONDS: replicas share counts
    admitted = statuses.get(200, 0)
    # a replica may admit what it cannot yet know the others admitted: at most one burst each
    slack = 0 if len(gateways) == 1 else PROBE_BURST * (len(gateways) - 1)
    return {
        "limit": PROBE_LIMIT,
        "sent": sent,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "admitted": admitted,
        "allowed_overshoot": slack,
        "refused_by_each_gateway": per_gateway_429,
        "ok": PROBE_LIMIT <= admitted <= PROBE_LIMIT + slack and all(per_gateway_429),
    }


async def check(url: str, stack: Stack, issuer: Issuer, tag: str, checkpoint_keys: str) -> dict[str, Any]:
    acked = await write_and_record(stack, issuer, tag)
    conn = await asyncpg.connect(url)
    try:
        drained_s = await wait_for_outbox(conn)
        stored = {
            row["notes"]: str(row["id"])
            for row in await conn.fetch(
                "SELECT id, notes FROM timesheets.entries WHERE notes = ANY($1::text[])", list(acked)
            )
        }
        lost = sum(1 for note, entry_id in acked.items() if stored.get(note) != entry_id)
        duplicates = await conn.fetchval(
            """SELECT count(*) FROM (SELECT notes FROM timesheets.entries WHERE project = $1
                                     AND notes LIKE $2 GROUP BY notes HAVING count(*) > 1) AS twice""",
            PROJECT,
            f"{tag}-%",
        )
        unaudited = await conn.fetchval(
            """SELECT count(*) FROM timesheets.entries e WHERE e.project = $1 AND e.notes LIKE $2 AND 1 <>
                   (SELECT count(*) FROM audit.records r
                    WHERE r.action = 'timesheet.created' AND r.resource_id = e.id::text)""",
            PROJECT,
            f"{tag}-%",
        )
        entries = await conn.fetchval(
            "SELECT count(*) FROM timesheets.entries WHERE project = $1 AND notes LIKE $2",
            PROJECT,
            f"{tag}-%",
        )
    finally:
        await conn.close()
    verify = subprocess.run(
        [sys.executable, "-m", "audit", "verify"],
        env={**os.environ, "DATABASE_URL": url, "AUDIT_CHECKPOINT_KEYS": checkpoint_keys},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        chain = json.loads(verify.stdout)
    except ValueError:
        chain = {"ok": False, "output": (verify.stdout + verify.stderr)[-500:]}
    rate_limit = await probe_rate_limit(stack, issuer, tag)
    return {
        "entries_of_the_run": int(entries),
        "acknowledged_by_the_recording_client": len(acked),
        "lost": lost,
        "duplicates": int(duplicates),
        "entries_without_one_audit_record": int(unaudited),
        "outbox_drained_after_s": drained_s,
        "chain_ok": bool(chain.get("ok")),
        "chain_records_checked": chain.get("checked"),
        "rate_limit": rate_limit,
        "ok": (
            lost == 0
            and duplicates == 0
            and unaudited == 0
            and bool(chain.get("ok"))
            and bool(rate_limit["ok"])
            and len(acked) > 0
        ),
    }


def one_round(
    replicas: int,
    url: str,
    redis_url: str,
    issuer: Issuer,
    tokens: list[str],
    seconds: float,
    logs: Path,
    checkpoint_keys: str,
) -> dict[str, Any]:
    tag = f"r{replicas}-{uuid.uuid4().hex[:8]}"
    stack = start_stack(replicas, url, redis_url, issuer, logs, tag, checkpoint_keys)
    try:
        run_wrk_split(stack, tokens, 3, logs, f"{tag}-warm")  # keys fetched, pools filled, caches hot
        before = stack.cpu_seconds()
        load = run_wrk_split(stack, tokens, seconds, logs, tag)
        after = stack.cpu_seconds()
        requests = max(1, load["requests"])
        per_service = {name: round((after[name] - before[name]) * 1e6 / requests, 1) for name in SERVICES}
        load["cpu_us_per_request"] = round(sum(per_service.values()), 1)
        load["cpu_us_per_request_by_service"] = per_service
        checks = asyncio.run(check(url, stack, issuer, tag, checkpoint_keys))
        # a load answered with errors (a limit's 429s, say) measures the errors, not the platform
        checks["load_all_2xx"] = load["non_2xx"] == 0
        checks["ok"] = checks["ok"] and checks["load_all_2xx"]
        load["checks"] = checks
        return load
    finally:
        stack.stop()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs)), 2)

    return {
        "rps": median("rps"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "cpu_us_per_request": median("cpu_us_per_request"),
        "cpu_us_per_request_by_service": {
            name: round(statistics.median(r["cpu_us_per_request_by_service"][name] for r in runs), 1)
            for name in SERVICES
        },
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "checks_ok": all(r["checks"]["ok"] for r in runs),
        "rounds": runs,
    }


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (make system-deps); skipping the scale benchmark")
        return 1
    seconds = float(os.environ.get("BENCH_SCALE_SECONDS", "10"))
    pairs = int(os.environ.get("BENCH_SCALE_ROUNDS", "1"))
    order = [n for _ in range(pairs) for n in (1, 2, 2, 1)]
    issuer = Issuer()
    subjects = [f"scale-user-{i:03d}" for i in range(USERS)]
    logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    # one checkpoint key for the run: each round's check verifies every round's checkpoints
    checkpoint_keys = CheckpointKeys.generate("scale-ck1")
    try:
        with servers(redis=True) as backing, fresh_database(f"tsp_bench_scale_{os.getpid()}") as url:
            assert backing.redis_url is not None
            asyncio.run(prepare_database(url, issuer.issuer, subjects))
            tokens = [issuer.token(subject) for subject in subjects]
            for replicas in order:
                result = one_round(
                    replicas, url, backing.redis_url, issuer, tokens, seconds, logs, checkpoint_keys
                )
                runs[replicas].append(result)
                checks = result["checks"]
                print(
                    f"  {replicas} replica(s): {result['rps']:>7.0f} rps  p99 {result['p99_ms']:>6.1f} ms  "
                    f"cpu/req {result['cpu_us_per_request']:>6.0f} us  "
                    f"checks {'ok' if checks['ok'] else 'FAILED'}"
                    f"  (rate limit admitted {checks['rate_limit']['admitted']}/{PROBE_LIMIT})",
                    flush=True,
                )
    finally:
        issuer.close()
        shutil.rmtree(logs, ignore_errors=True)

    one, two = summarise(runs[1]), summarise(runs[2])
    ratios = {
        "rps": round(two["rps"] / one["rps"], 3) if one["rps"] else None,
        "cpu_us_per_request": (
            round(two["cpu_us_per_request"] / one["cpu_us_per_request"], 3)
            if one["cpu_us_per_request"]
            else None
        ),
    }
    report = {
        "benchmark": "scale",
        "what": "1 vs 2 replicas of gateway, timesheets and audit; create+list mix at 32 connections",
        "connections": CONNECTIONS,
        "seconds": seconds,
        "cores": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cases": {"one_replica": one, "two_replicas": two},
        "two_over_one": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{'case':<14} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu/req us':>11}"
        "  gateway/timesheets/audit us"
    )
    for label, case in (("1 replica", one), ("2 replicas", two)):
        by = case["cpu_us_per_request_by_service"]
        print(
            f"{label:<14} {case['rps']:>8.0f} {case['p50_ms']:>8.1f} {case['p99_ms']:>8.1f} "
            f"{case['cpu_us_per_request']:>11.0f}  "
            f"{by['gateway']:.0f}/{by['timesheets']:.0f}/{by['audit']:.0f}"
            f"  checks {'ok' if case['checks_ok'] else 'FAILED'}"
        )
    print(f"2 / 1: rps {ratios['rps']}, cpu/req {ratios['cpu_us_per_request']}")
    print(f"written to {RESULTS / 'scale.json'}")
    return 0 if one["checks_ok"] and two["checks_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
