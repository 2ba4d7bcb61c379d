"""API mix through the gateway: create and list timesheet entries at 32 concurrent clients.

What runs (real processes on loopback, started and stopped here): a minimal OIDC issuer (discovery +
JWKS, in this process), the gateway as it ships (token verification, rate limiting, audit of
denials, metrics; one worker), the timesheets service (one worker, its outbox relaying to) the audit
service, and PostgreSQL/Redis from ``DATABASE_URL``/``REDIS_URL`` (embedded ones when unset). The
load is ``wrk -t1 -c32`` pinned to the last core: each request alternates between
``POST /api/timesheets`` (a new entry) and ``GET /api/timesheets?limit=20`` (the first page of the
caller's ~100 entries), each connection rotating over 32 users' tokens.

The same mix is also sent, in the same run, to three peers:

- ``direct``: straight to the timesheets service with pre-signed identity headers (the gateway's hop
  removed);
- ``reference``: a minimal same-stack app (:mod:`bench._reference_app`: Starlette + asyncpg, the
  service's own SQL in the same transactions, the kit's pool) with the same requests;
- ``reference_identity``: the same reference app behind the kit's identity gate, as the timesheets
  service receives (``REFERENCE_IDENTITY=1``: signature, body digest, nonce in the replay memory shared
  over Redis), on the reference's database: the least a same-stack app does that honours DESIGN.md's
  identity contract. Checked before the load (an unsigned request gets 401). Informational: the
  issue's targets stay against the plain reference (``ratios.service_vs_reference_identity_*``);
- ``pgbench``: the same statements and transactions (:func:`pgbench_scripts`, the service's SQL text
  with its parameters as pgbench expressions), ``-M prepared -c32 -j1`` pinned like wrk.

The two peers work on a database of their own, seeded like the service's: their outbox rows are not
audit events the audit service accepts, and in the service's database its outbox relay spent its CPU
on them (each refused batch split and re-sent event by event, thousands of 422s per round), counted
as the service's.

With ``BENCH_API_BASELINE`` set to a checkout (a directory holding ``services/timesheets`` and
``services/kit``, e.g. ``git archive main services | tar -x -C /tmp/before``), a second timesheets
service runs from that code (its own database, seeded alike; the same audit service), sent the direct
mix in the same rounds as ``direct_before`` (``direct_to_timesheets_before``;
``ratios.service_vs_before_cpu_per_request``): an A/B of a change in one run, the two cases' order
swapped every other round. ``BENCH_API_CASES`` (comma-separated, default all) runs only some cases
(e.g. ``direct,direct_before,reference`` for a quick A/B; a full run for ``bench/results``).

``BENCH_API_ROTATE=1`` rotates the cases' order every round (each case first in turn): the
embedded Postgres's CPU is the whole server's over a case's run, it drifts within a run, and what a
case leaves behind (autovacuum, the relay's last batch) lands in the next case's run; a fixed order
charges that to the same case every round (``bench/_pgwork.py`` for what each case's requests cost
the database statement by statement). ``BENCH_API_PG_SPLIT=1`` prints that CPU split by process
(:class:`PostgresSplit`: each app's backends, the audit services', the background processes), each
round's and per kind of process the user and system CPU, the context switches and how many
processes were busy, each case's database counters a request, the processes that started during a
run and the oldest snapshot held, and at the end the tables' sizes and dead rows: what tells a
difference in the work or in how it arrives from one in what the same work cost (issue 17).
``BENCH_API_PERF=<prefix>`` samples the whole machine with ``perf record`` over each case's run.
On a shared two-core machine the same statements' CPU moves by more than the cases differ: two
identical services in one run (``BENCH_API_BASELINE`` = the same code) were up to 12 % apart in a
round, and which of the service and reference_audited paid more turned between runs (issue 17,
``services/timesheets/README.md``): a difference in Postgres's CPU between cases is a finding only if
it holds across runs.

``BENCH_API_ROUNDS`` (default 3) interleaved rounds of the cases, ``BENCH_API_SECONDS`` (default
10) each, after a 3-second warm-up; medians, each round's rps beside them. Beside throughput and
p50/p90/p99, the CPU time per request of each server process (gateway, timesheets, audit, the
reference app; pgbench's own; the embedded Postgres's, all its processes, when this run started it:
the machine's two cores are shared by all of them, so throughput follows their sum, and the service's
creates are relayed into the audit trail where the reference's outbox rows stay unread), and the
ratios the issue sets targets for, from the same run.

Writes ``bench/results/api.json``: the gateway case at the top level (as before), the direct case
under ``direct_to_timesheets``, ``reference``, ``pgbench``, ``ratios`` and ``targets``; prints a
table. Works with ``DATABASE_URL``/``REDIS_URL`` or without (embedded servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from svckit.identity import Identity
from svckit.migrations import migrate

from bench._backing import embedded_postgres, fresh_database, servers
from bench._measure import CpuMeter, median_case, sampled
from bench._presigned import Request, write_pool
from testkit.fixtures import ServiceProcess, free_port, new_pair_keys, pair_signer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
AUDIENCE = "https://timesheets.abc.example/api"
CLIENTS = 32
USERS = 32
SEED_PER_USER = 100
SCOPES = "openid read:timesheets create:timesheets"
CASES = (
    "gateway",
    "direct",
    "direct_before",
    "reference",
    "reference_identity",
    "reference_audited",
    "pgbench",
)
#: pre-signed requests per second of a direct run: more than the service answers on a fast, quiet
#: machine of this kind (~9,000/s at the 2026-12-04 run, where 2,500 ran out); a pool that runs out
#: shows as 401 replays among the non-2xx, and the run then fails
POOL_PER_SECOND = 20_000
#: the gateway's rate limits in this benchmark (per subject and per client, a minute): far above any run
RATE_LIMIT = 10_000_000
#: the issue's targets for the service against the peers measured in the same run (never asserted)
TARGETS = {
    "service_vs_reference_rps": ">= 1.0",
    "service_vs_reference_cpu_per_request": "<= 1.0",
    "service_vs_pgbench_rps": ">= 0.5",
    "p99_ms_at_32_clients": "<= 50",
}


class Issuer:
    """Discovery + JWKS for one RSA key; tokens minted here verify at the gateway like real ones
    (also used by ``tests/domain/test_through_gateway.py``)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/"
        jwk = {**RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": "bench-1", "alg": "RS256"}
        documents = {
            "/.well-known/openid-configuration": {"issuer": self.issuer, "jwks_uri": self.issuer + "jwks"},
            "/jwks": {"keys": [jwk]},
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(documents.get(self.path, {})).encode()
                self.send_response(200 if self.path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, subject: str, scope: str = SCOPES, name: str | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": AUDIENCE,
            "azp": "timesheets-spa",
            "iat": now,
            "exp": now + 3600,
            "scope": scope,
            "jti": uuid.uuid4().hex,
        }
        if name:
            claims["name"] = name
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench-1", "typ": "at+jwt"})

    def close(self) -> None:
        self.server.shutdown()


async def prepare_database(url: str, issuer: str, subjects: list[str]) -> None:
    for service in ("timesheets", "audit"):
        await migrate(url, service, ROOT / "services" / service / service / "migrations")
    conn = await asyncpg.connect(url)
    try:
        today = dt.date(2026, 11, 27)
        await conn.copy_records_to_table(
            "entries",
            schema_name="timesheets",
            columns=["id", "owner_issuer", "owner_subject", "date", "project", "hours", "source"],
            records=[
                (uuid.uuid4(), issuer, subject, today - dt.timedelta(days=n), "Seed", 8, "api")
                for subject in subjects
                for n in range(SEED_PER_USER)
            ],
        )
        await conn.execute("ANALYZE timesheets.entries")
    finally:
        await conn.close()


async def count_entries(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM timesheets.entries")
        return value
    finally:
        await conn.close()


async def relation_state(url: str) -> list[str]:
    """The database's tables: size with indexes, live and dead tuples, autovacuums (``BENCH_API_PG_SPLIT``:
    whether one case's database has grown or rotted more than another's)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, pg_total_relation_size(relid) AS size,"
            " n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables"
            " WHERE n_live_tup + n_dead_tup > 0 ORDER BY 1"
        )
        return [
            f"{row['name']}: {row['size'] / 1e6:.1f} MB, live {row['n_live_tup']}, dead {row['n_dead_tup']},"
            f" autovacuums {row['autovacuum_count']}"
            for row in rows
        ]
    finally:
        await conn.close()


async def relayed(url: str, seeded: int, timeout: float = 30.0) -> dict[str, int]:
    """After the load: the entries created (beyond the ``seeded`` ones), the audit records of their
    creation, and the outbox rows still waiting once the relay had ``timeout`` seconds to drain them
    (a case whose relay falls behind or fails shows it here, not as a cheaper run)."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            waiting: int = await conn.fetchval("SELECT count(*) FROM timesheets.outbox")
            if waiting == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        created: int = await conn.fetchval("SELECT count(*) FROM timesheets.entries") - seeded
        # this database's entries only: with BENCH_API_BASELINE the baseline service's creates (in a
        # database of their own) are relayed to the same audit service, into this trail
        audited: int = await conn.fetchval(
            "SELECT count(*) FROM audit.records r JOIN timesheets.entries e ON e.id::text = r.resource_id"
            " WHERE r.action = 'timesheet.created'"
        )
        return {"entries_created": created, "creations_audited": audited, "outbox_waiting": waiting}
    finally:
        await conn.close()


LUA = """
local tokens = {%(tokens)s}
local n = 0
request = function()
  n = n + 1
  local auth = "Bearer " .. tokens[(n %% #tokens) + 1]
  if n %% 2 == 0 then
    local day = os.date("!%%Y-%%m-%%d", 946684800 + ((n * 7919) %% 36500) * 86400)
    local body = string.format('{"date":"%%s","project":"Bench","hours":0.25,"notes":"wrk"}', day)
    return wrk.format("POST", "/api/timesheets",
                      {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/api/timesheets?limit=20", {["Authorization"] = auth})
end
"""


def spread_date(n: int) -> str:
    """The date of the ``n``-th request's create: spread over the work-date window (a stride through
    its 36,500 days, as the wrk script's), with a quarter hour each, so that no user's day nears the
    24 hours a day holds (a full day answers 422, which would be measured instead of the create)."""
    return (dt.date(2000, 1, 1) + dt.timedelta(days=(n * 7919) % 36500)).isoformat()


def direct_script(
    path: Path, identity_keys: dict[str, str], issuer: str, subjects: list[str], requests: int
) -> Path:
    """The mix as the gateway would forward it: ``requests`` pre-signed requests (each with its own
    nonce and body digest, :mod:`bench._presigned`), alternating a list and a create, rotating over
    the users. Minted right before the run (timestamps are valid for 60 s)."""
    signer = pair_signer(identity_keys, "gateway", "timesheets")
    identities = [
        Identity(issuer, subject, "user", "timesheets-spa", frozenset(SCOPES.split()), "")
        for subject in subjects
    ]

    def pool() -> Iterator[Request]:
        for n in range(requests):
            identity = identities[n % len(identities)]
            if n % 2:
                date = spread_date(n)
                body = f'{{"date":"{date}","project":"Bench","hours":0.25,"notes":"wrk"}}'.encode()
                headers = signer.headers(identity, method="POST", target="/timesheets", body=body)
                yield "POST", "/timesheets", {**headers, "Content-Type": "application/json"}, body
            else:
                target = "/timesheets?limit=20"
                yield "GET", target, signer.headers(identity, method="GET", target=target), b""

    return write_pool(path, pool())


def run_wrk(url: str, script: Path, seconds: float, *, connections: int = CLIENTS) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url]
    if cores > 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(cores - 1), *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = re.search(r"(\d+) requests in", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "requests": int(requests[1]) if requests else 0,
        "rps": float(rps[1]) if rps else 0.0,
        "p50_ms": latency("50"),
        "p90_ms": latency("90"),
        "p99_ms": latency("99"),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": socket_errors[1].strip() if socket_errors else "",
        "raw": output,
    }


PGBENCH_CREATE = """\\set u random(0, %(last)d)
\\set d random(0, 36499)
%(create)s;
"""

PGBENCH_LIST = """\\set u random(0, %(last)d)
%(list)s;
"""


def pgbench_scripts(directory: Path, issuer: str) -> list[Path]:
    """The service's own SQL text (``timesheets.store``) with its parameters written as pgbench
    expressions: the same statements in the same transactions (a create is one statement in
    autocommit, as the service sends it without an Idempotency-Key), 50% create / 50% list."""
    from svckit.contracts.timesheets import DAY_HOURS_LIMIT
    from timesheets.store import CREATE_ENTRY

    from bench._reference_app import LIST_FIRST_PAGE

    subject = "('bench-user-' || lpad(:u::text, 2, '0'))"
    quoted_issuer = "'" + issuer.replace("'", "''") + "'"
    create_values = {
        1: "gen_random_uuid()",
        2: quoted_issuer,
        3: subject,
        4: "''",
        5: "(date '2000-01-01' + :d::int)",
        6: "'Bench'",
        7: "0.25",
        8: "'pgbench'",
        9: "'timesheets-spa'",
        10: "gen_random_uuid()",
        11: "now()",
        12: '\'{"action": "timesheet.created"}\'',
        13: str(DAY_HOURS_LIMIT),
    }
    list_values = {1: quoted_issuer, 2: subject, 3: "21"}

    def bind(sql: str, values: dict[int, str]) -> str:
        return re.sub(r"\$(\d+)", lambda match: values[int(match[1])], sql)

    create = directory / "create.sql"
    create.write_text(PGBENCH_CREATE % {"last": USERS - 1, "create": bind(CREATE_ENTRY, create_values)})
    listing = directory / "list.sql"
    listing.write_text(PGBENCH_LIST % {"last": USERS - 1, "list": bind(LIST_FIRST_PAGE, list_values)})
    return [create, listing]


def run_pgbench(url: str, scripts: list[Path], seconds: float, logs: Path) -> dict[str, Any]:
    """``pgbench -M prepared -c32 -j1`` pinned to the last core like wrk; latencies from its
    per-transaction log, its own CPU time from the children's rusage."""
    cores = os.cpu_count() or 1
    prefix = logs / f"pgbench-{time.monotonic_ns()}"
    command = ["pgbench", "-n", "-M", "prepared", f"-c{CLIENTS}", "-j1", f"-T{int(seconds)}", "-l"]
    command += [f"--log-prefix={prefix}", *(f"-f{script}@1" for script in scripts), url]
    if cores > 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(cores - 1), *command]
    env = {**os.environ, "PGOPTIONS": "-c search_path=timesheets,public"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"pgbench failed: {completed.stderr.strip()[-500:]}")
    latencies: list[float] = []
    failed = 0
    for log in logs.glob(prefix.name + "*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000)
            else:
                failed += 1
        log.unlink()
    latencies.sort()
    tps = re.search(r"tps = ([\d.]+)", completed.stdout)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "requests": len(latencies),
        "rps": float(tps[1]) if tps else 0.0,
        "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else float("nan"),
        "p90_ms": round(latencies[int(len(latencies) * 0.9)], 2) if latencies else float("nan"),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2) if latencies else float("nan"),
        "non_2xx": failed,
        "cpu_us_per_request": {"pgbench": round(cpu * 1e6 / max(1, len(latencies)), 1)},
    }


def measured(run: Callable[[], dict[str, Any]], meter: CpuMeter) -> dict[str, Any]:
    """``run`` (a wrk run) with the CPU time of each server per request beside its figures."""
    meter.start()
    result = run()
    used = meter.stop()
    requests = max(1, result["requests"])
    result["cpu_us_per_request"] = {  # beside what the run measured itself (pgbench its own CPU)
        **result.get("cpu_us_per_request", {}),
        **{name: round(seconds * 1e6 / requests, 1) for name, seconds in used.items()},
    }
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Interleaved rounds of one case: medians (CPU per server too), each round's rps beside."""
    case = median_case(
        [{k: v for k, v in run.items() if k not in ("raw", "cpu_us_per_request")} for run in runs]
    )
    servers = runs[0]["cpu_us_per_request"]
    case["cpu_us_per_request"] = {
        name: round(statistics.median(run["cpu_us_per_request"][name] for run in runs), 1) for name in servers
    }
    case["rps_rounds"] = [round(run["rps"]) for run in runs]
    # each round's too: an A/B's paired ratios (the same round of two builds) beside the medians
    case["cpu_rounds"] = {
        name: [round(run["cpu_us_per_request"][name], 1) for run in runs] for name in servers
    }
    case["raw"] = runs[-1].get("raw", "")
    return case


def profiled(pid: int | None, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run`` with py-spy sampling ``pid`` throughout when ``BENCH_API_PROFILE`` names an output
    file (``--format raw``, collapsed stacks; one file per round, suffixed): where the direct case's
    CPU goes. Off by default (sampling costs the process some CPU too)."""
    output = os.environ.get("BENCH_API_PROFILE", "")
    if not output:
        return run()
    return sampled({f"{output}.{time.monotonic_ns()}": pid}, run)


def start_reference(
    url: str, logs: Path, env: dict[str, str] | None = None, name: str = "reference"
) -> subprocess.Popen[bytes]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._reference_app"],
        env={**os.environ, **(env or {}), "DATABASE_URL": url, "PORT": str(port)},
        stdout=(logs / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            process.reference_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {name} app did not start: " + (logs / f"{name}.log").read_text()[-500:])


def start_reference_audited(
    database: str,
    logs: Path,
    env: dict[str, str],
    prefix: str,
    processes: list[ServiceProcess],
) -> tuple[ServiceProcess, subprocess.Popen[bytes]]:
    """The reference doing the service's whole work (``REFERENCE_IDENTITY`` + ``REFERENCE_RELAY``,
    :mod:`bench._reference_app`): an audit service of its own on ``database`` (appended to
    ``processes``, to be stopped with them), and the reference relaying its outboxes to it, checked
    to refuse an unsigned request. ``env``: the services' (pair keys, ``REDIS_URL``)."""
    audit = ServiceProcess(
        "audit", {**env, "DATABASE_URL": database, "REDIS_KEY_PREFIX": prefix + "ra:"}, log_dir=logs
    ).start()
    processes.append(audit)
    reference_env = {
        **{name: value for name, value in env.items() if name.startswith("IDENTITY_KEYS_")},
        "REFERENCE_IDENTITY": "1",
        "REFERENCE_RELAY": "1",
        "AUDIT_URL": audit.url,
        "REDIS_URL": env["REDIS_URL"],
        "REDIS_KEY_PREFIX": prefix + "reference-audited:",
    }
    reference = start_reference(database, logs, reference_env, "reference_audited")
    if not refuses_unsigned(reference.reference_url):  # type: ignore[attr-defined]
        reference.terminate()
        reference.wait(10)
        raise RuntimeError("reference_audited admitted an unsigned request")
    return audit, reference


def refuses_unsigned(url: str) -> bool:
    """True when ``url`` answers an unsigned list request with 401 (the identity gate is in front)."""
    try:
        urllib.request.urlopen(f"{url}/timesheets?limit=20", timeout=5).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    return False


class PostgresSplit:
    """``BENCH_API_PG_SPLIT=1``: the embedded Postgres's CPU over each case's runs split by process
    (:class:`bench._pgwork.ProcessSplit`: each database's backends by application name, the
    background processes, the ended ones), summed per case and printed per request: which process the
    ``postgres`` figure of a case is spent in."""

    def __init__(self, server: str, postgres: int) -> None:
        from bench._pgwork import ProcessSplit

        self.run = ProcessSplit(server, postgres)
        self.used: dict[str, dict[str, float]] = {}
        self.detail: dict[str, dict[str, list[float]]] = {}
        self.requests: dict[str, int] = {}

    def before(self) -> None:
        from bench._pgwork import backends

        self._watching = threading.Event()
        self._seen_at_start = set(asyncio.run(backends(self.run.server)))
        self._appeared: set[str] = set()
        self._holders: dict[str, tuple[int, str]] = {}
        self._counters = asyncio.run(self._database_counters())
        self._watcher = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)
        self._watcher.start()
        self.run.start()  # last: the look-ups above are not the case's

    async def _database_counters(self) -> dict[str, tuple[int, ...]]:
        conn = await asyncpg.connect(self.run.server)
        try:
            rows = await conn.fetch(
                "SELECT datname, xact_commit, blks_hit, tup_returned, tup_fetched FROM pg_stat_database"
                " WHERE datname IS NOT NULL"
            )
            return {row["datname"]: tuple(row)[1:] for row in rows}
        finally:
            await conn.close()

    async def _watch(self) -> None:
        """The oldest snapshot each database's sessions hold while the case runs (its age in
        transactions, the session): what keeps the dead rows of its tables from being pruned."""
        conn = await asyncpg.connect(self.run.server)
        try:
            while not self._watching.is_set():
                rows = await conn.fetch(
                    "SELECT datname, application_name, state, age(backend_xmin) AS age,"
                    " left(query, 60) AS query"
                    " FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()"
                )
                for row in await conn.fetch(
                    "SELECT pid, backend_type, datname, application_name, left(query, 80) AS query"
                    " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                ):
                    if row["pid"] not in self._seen_at_start:
                        kind = f"{row['backend_type']} {row['datname']} {row['application_name']}"
                        self._appeared.add(f"{kind} {row['query']!r}")
                for row in rows:
                    held = self._holders.get(row["datname"] or "", (0, ""))
                    if row["age"] > held[0]:
                        what = f"{row['application_name']} {row['state']} {row['query']!r}"
                        self._holders[row["datname"] or ""] = (row["age"], what)
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    def after(self, case: str, requests: int) -> None:
        stopped = self.run.stop()  # first: the pause below is not the case's
        self._watching.set()
        self._watcher.join(10)
        time.sleep(1.5)  # active backends flush their counters once a second
        now = asyncio.run(self._database_counters())
        deltas = {
            name: [a - b for a, b in zip(values, self._counters.get(name, (0, 0, 0, 0)), strict=True)]
            for name, values in now.items()
        }
        busiest = max(deltas, key=lambda name: deltas[name][0])
        per = [value / max(1, requests) for value in deltas[busiest]]
        print(
            f"  [{case}] {busiest}: commits {per[0]:.3f}, buffer hits {per[1]:.1f}, tuples returned"
            f" {per[2]:.1f}, fetched {per[3]:.1f} a request",
            flush=True,
        )
        for started in sorted(self._appeared):
            print(f"  [{case}] started during the run: {started}", flush=True)
        for database, (age, what) in sorted(self._holders.items()):
            print(f"  [{case}] oldest snapshot in {database}: {age} transactions, {what}", flush=True)
        used = self.used.setdefault(case, {})
        shown = ", ".join(
            f"{kind.replace('client backend ', '')} {seconds * 1e6 / max(1, requests):.0f}"
            for kind, seconds in sorted(stopped.items(), key=lambda x: -x[1])[:4]
        )
        print(f"  [{case}] {requests} requests; postgres us/request: {shown}", flush=True)
        for kind, seconds in stopped.items():
            used[kind] = used.get(kind, 0.0) + seconds
        detail = self.detail.setdefault(case, {})
        for kind, values in self.run.detail.items():
            summed = detail.setdefault(kind, [0.0] * len(values))
            for i, value in enumerate(values):
                summed[i] += value
        self.requests[case] = self.requests.get(case, 0) + requests

    def report(self) -> None:
        print("postgres cpu us/request by process (BENCH_API_PG_SPLIT):")
        for case, used in self.used.items():
            requests = max(1, self.requests[case])
            shown = sorted(
                ((kind, seconds * 1e6 / requests) for kind, seconds in used.items()), key=lambda x: -x[1]
            )
            print(
                f"  {case}: " + "; ".join(f"{kind} {value:.1f}" for kind, value in shown if abs(value) >= 0.5)
            )
        print("  per request: user / system CPU us, voluntary / involuntary switches; busy processes a round")
        for case, detail in self.detail.items():
            requests = max(1, self.requests[case])
            for kind, (user, system, voluntary, involuntary, busy) in sorted(detail.items()):
                if user + system >= 0.5e-6 * requests:
                    cpu = f"{user * 1e6 / requests:.1f} / {system * 1e6 / requests:.1f}"
                    switches = f"{voluntary / requests:.3f} / {involuntary / requests:.3f}"
                    print(f"    {case} {kind[:50]}: {cpu}, {switches}; {busy:.0f} (sum of rounds)")


def system_profile(case: str, number: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """``BENCH_API_PERF=<prefix>``: the whole machine sampled by ``perf record`` (call graphs) over
    the case's run, into ``<prefix>.<case>.<round>`` (``perf report --comm postgres``: what its
    Postgres processes spent their CPU in)."""
    prefix = os.environ.get("BENCH_API_PERF", "")
    if not prefix:
        return None
    command = ["perf", "record", "-F", "499", "-g", "-a", "-o", f"{prefix}.{case}.{number}"]
    return subprocess.Popen(
        [*command, "--", "sleep", str(max(1.0, seconds - 1))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pid_of(process: ServiceProcess) -> int | None:
    return process.process.pid if process.process is not None else None


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (make system-deps); skipping the API benchmark")
        return 1
    seconds = float(os.environ.get("BENCH_API_SECONDS", "10"))
    rounds = int(os.environ.get("BENCH_API_ROUNDS", "3"))
    rotate = os.environ.get("BENCH_API_ROTATE", "") not in ("", "0")
    split: PostgresSplit | None = None
    issuer = Issuer()
    subjects = [f"bench-user-{i:02d}" for i in range(USERS)]
    name = f"tsp_bench_api_{os.getpid()}"
    baseline = os.environ.get("BENCH_API_BASELINE", "")
    selected = [c.strip() for c in os.environ.get("BENCH_API_CASES", ",".join(CASES)).split(",") if c.strip()]
    unknown = set(selected) - set(CASES)
    if unknown:
        raise SystemExit(f"BENCH_API_CASES: unknown cases {sorted(unknown)} (known: {', '.join(CASES)})")
    if not baseline and "direct_before" in selected:
        selected.remove("direct_before")
    processes: list[ServiceProcess] = []
    reference: subprocess.Popen[bytes] | None = None
    gated: subprocess.Popen[bytes] | None = None
    audited: subprocess.Popen[bytes] | None = None
    logs = Path(tempfile.mkdtemp(prefix="bench-api-"))
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    relay_checks: dict[str, dict[str, int]] = {}
    try:
        with (
            servers(redis=True) as backing,
            fresh_database(name) as url,
            fresh_database(name + "_peers") as peers_url,
            fresh_database(name + "_before") as before_url,
            # a database of its own: the other references' stub outbox rows are not events to relay
            fresh_database(name + "_audited") as audited_db,
        ):
            redis_url = backing.redis_url
            assert redis_url is not None
            for database in (url, peers_url, before_url) if baseline else (url, peers_url):
                asyncio.run(prepare_database(database, issuer.issuer, subjects))
            if "reference_audited" in selected:
                asyncio.run(prepare_database(audited_db, issuer.issuer, subjects))
            try:
                identity_keys = new_pair_keys("bench")
                env = {
                    "DATABASE_URL": url,
                    "REDIS_URL": redis_url,
                    "REDIS_KEY_PREFIX": f"tsp-bench:{os.getpid()}:",
                    **identity_keys,
                    "LOG_LEVEL": "WARNING",
                }
                audit = ServiceProcess("audit", env, log_dir=logs).start()
                processes.append(audit)
                timesheets_env = {**env, "AUDIT_URL": audit.url}
                timesheets = ServiceProcess("timesheets", timesheets_env, log_dir=logs).start()
                processes.append(timesheets)
                before_service: ServiceProcess | None = None
                if baseline:
                    code = f"{baseline}/services/timesheets{os.pathsep}{baseline}/services/kit"
                    before_env = {**timesheets_env, "DATABASE_URL": before_url, "PYTHONPATH": code}
                    before_service = ServiceProcess("timesheets", before_env, log_dir=logs).start()
                    processes.append(before_service)
                gateway = ServiceProcess(
                    "gateway",
                    {
                        **env,
                        "OIDC_ISSUER": issuer.issuer,
                        "OIDC_AUDIENCE": AUDIENCE,
                        "TIMESHEETS_URL": timesheets.url,
                        "APPROVALS_URL": "http://127.0.0.1:9",
                        "AUDIT_URL": audit.url,
                        "GATEWAY_WORKERS": "1",
                        "GATEWAY_ACCESS_LOG": "false",
                        # counted as shipped, never reached: the 32 users share one client id, whose
                        # default limit (12,000 a minute) a run past 200 rps exceeds, answered with 429s
                        "RATE_LIMIT_PER_SUBJECT": str(RATE_LIMIT),
                        "RATE_LIMIT_PER_CLIENT": str(RATE_LIMIT),
                    },
                    log_dir=logs,
                ).start()
                processes.append(gateway)
                reference = start_reference(peers_url, logs)
                reference_url: str = reference.reference_url  # type: ignore[attr-defined]
                gated_url = ""
                if "reference_identity" in selected:
                    gated_env = {
                        **identity_keys,
                        "REFERENCE_IDENTITY": "1",
                        "REDIS_URL": redis_url,
                        "REDIS_KEY_PREFIX": f"tsp-bench:{os.getpid()}:reference:",
                    }
                    gated = start_reference(peers_url, logs, gated_env, "reference_identity")
                    gated_url = gated.reference_url  # type: ignore[attr-defined]
                    if not refuses_unsigned(gated_url):
                        raise RuntimeError("reference_identity admitted an unsigned request")
                audited_url = ""
                reference_audit: ServiceProcess | None = None
                if "reference_audited" in selected:
                    # the reference doing the consistency rule's work too: its outbox relayed to an
                    # audit service of its own (on its database), chained there
                    reference_audit, audited = start_reference_audited(
                        audited_db, logs, env, f"tsp-bench:{os.getpid()}:", processes
                    )
                    audited_url = audited.reference_url  # type: ignore[attr-defined]

                tokens = [issuer.token(subject) for subject in subjects]
                script = logs / "api.lua"
                script.write_text(LUA % {"tokens": ", ".join(f'"{t}"' for t in tokens)})
                direct = logs / "direct.lua"
                pgbench = pgbench_scripts(logs, issuer.issuer) if shutil.which("pgbench") else None
                # the embedded Postgres's CPU beside each case's (its backends and background
                # processes): where the cases' throughput differs more than their servers' CPU does
                postgres = embedded_postgres() if backing.embedded else None
                postgres_pids = {"postgres": postgres} if postgres else {}
                if postgres and os.environ.get("BENCH_API_PG_SPLIT", "") not in ("", "0"):
                    split = PostgresSplit(backing.database_url, postgres)
                services = {"timesheets": pid_of(timesheets), "audit": pid_of(audit), **postgres_pids}
                meters = {
                    "gateway": CpuMeter({"gateway": pid_of(gateway), **services}),
                    "direct": CpuMeter(services),
                    "reference": CpuMeter({"reference": reference.pid, **postgres_pids}),
                }
                if gated is not None:
                    meters["reference_identity"] = CpuMeter({"reference": gated.pid, **postgres_pids})
                if audited is not None and reference_audit is not None:
                    meters["reference_audited"] = CpuMeter(
                        {"reference": audited.pid, "audit": pid_of(reference_audit), **postgres_pids}
                    )
                if before_service is not None:
                    meters["direct_before"] = CpuMeter(
                        {"timesheets": pid_of(before_service), "audit": pid_of(audit), **postgres_pids}
                    )
                targets: dict[str, Callable[[], dict[str, Any]]] = {
                    "gateway": lambda: measured(
                        lambda: run_wrk(gateway.url, script, seconds), meters["gateway"]
                    ),
                    "direct": lambda: measured(
                        lambda: profiled(
                            pid_of(timesheets), lambda: run_wrk(timesheets.url, signed(), seconds)
                        ),
                        meters["direct"],
                    ),
                    "reference": lambda: measured(
                        lambda: run_wrk(reference_url, signed(), seconds), meters["reference"]
                    ),
                }
                if gated is not None:
                    targets["reference_identity"] = lambda: measured(
                        lambda: run_wrk(gated_url, signed(), seconds), meters["reference_identity"]
                    )
                if audited is not None:
                    targets["reference_audited"] = lambda: measured(
                        lambda: run_wrk(audited_url, signed(), seconds), meters["reference_audited"]
                    )
                if before_service is not None:
                    before_url_http = before_service.url
                    targets["direct_before"] = lambda: measured(
                        lambda: run_wrk(before_url_http, signed(), seconds), meters["direct_before"]
                    )
                if pgbench is not None:
                    scripts = pgbench
                    targets["pgbench"] = lambda: measured(
                        lambda: run_pgbench(peers_url, scripts, seconds, logs), CpuMeter(postgres_pids)
                    )
                order = [case for case in CASES if case in selected and case in targets]

                def signed(run_seconds: float = seconds) -> Path:  # minted right before each run
                    pool = int(run_seconds * POOL_PER_SECOND)
                    return direct_script(direct, identity_keys, issuer.issuer, subjects, pool)

                before = asyncio.run(count_entries(url))
                # warm-up: JWKS fetched, pools filled, caches and prepared statements hot
                if "gateway" in order:
                    run_wrk(gateway.url, script, 3)
                run_wrk(timesheets.url, signed(3), 3)
                if before_service is not None:
                    run_wrk(before_service.url, signed(3), 3)
                run_wrk(reference_url, signed(3), 3)
                if gated is not None:
                    run_wrk(gated_url, signed(3), 3)
                if audited is not None:
                    run_wrk(audited_url, signed(3), 3)
                for number in range(rounds):  # interleaved: a noisy moment hurts every case alike
                    cases_now = list(order)
                    if number % 2 and "direct_before" in cases_now and "direct" in cases_now:
                        # the A/B pair's order swapped every other round: neither always runs first
                        a, b = cases_now.index("direct"), cases_now.index("direct_before")
                        cases_now[a], cases_now[b] = cases_now[b], cases_now[a]
                    if rotate:
                        # each case first in turn: Postgres's CPU per request drifts within a run (and
                        # a case's background work lands in the next one), which a fixed order charges
                        # to the same case every round
                        shift = number % len(cases_now)
                        cases_now = cases_now[shift:] + cases_now[:shift]
                    for case in cases_now:
                        if split is not None:
                            split.before()
                        perf = system_profile(case, number, seconds)
                        runs[case].append(targets[case]())
                        if perf is not None:
                            perf.wait(30)
                        if split is not None:
                            split.after(case, runs[case][-1]["requests"])
                created = asyncio.run(count_entries(url)) - before
                # every creation audited, by the service and by the reference doing the same work
                seeded = SEED_PER_USER * len(subjects)
                relay_checks["service"] = asyncio.run(relayed(url, seeded))
                if audited is not None:
                    relay_checks["reference_audited"] = asyncio.run(relayed(audited_db, seeded))
                if split is not None:
                    for label, database in (("service", url), ("reference_audited", audited_db)):
                        if label == "service" or audited is not None:
                            print(f"tables of the {label}'s database:")
                            for line in asyncio.run(relation_state(database)):
                                print(f"  {line}")
            finally:  # the servers stop before their database is dropped
                for peer in (reference, gated, audited):
                    if peer is not None:
                        peer.terminate()
                        peer.wait(10)
                for process in reversed(processes):
                    process.stop()
    finally:
        issuer.close()
        shutil.rmtree(logs, ignore_errors=True)

    cases = {case: median_of(found) for case, found in runs.items() if found}
    raws = {case: cases[case].pop("raw", "") for case in cases}
    result, direct_result = cases.get("gateway"), cases.get("direct")
    minimal, pg, before_result = cases.get("reference"), cases.get("pgbench"), cases.get("direct_before")
    gated_result = cases.get("reference_identity")
    audited_result = cases.get("reference_audited")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def cpu(case: dict[str, Any] | None, server: str) -> float | None:
        """``server``'s CPU per request in ``case``; None without the case or a figure for it (the
        embedded Postgres's is measured only where its process is known)."""
        return case["cpu_us_per_request"].get(server) if case is not None else None

    def total_cpu(case: dict[str, Any] | None) -> float | None:
        """Every measured process's CPU per request: the service's, the audit service's and the
        database's, or the reference's and the database's."""
        return sum(case["cpu_us_per_request"].values()) if case is not None else None

    def rps(case: dict[str, Any] | None) -> float | None:
        return case["rps"] if case is not None else None

    ratios = {
        "service_vs_reference_rps": ratio(rps(direct_result), rps(minimal)),
        "service_vs_reference_cpu_per_request": ratio(
            cpu(direct_result, "timesheets"), cpu(minimal, "reference")
        ),
        "service_vs_pgbench_rps": ratio(rps(direct_result), rps(pg)),
    }
    if cpu(direct_result, "postgres") is not None:
        # the embedded Postgres's CPU per request beside the servers': the service's creates are also
        # relayed and chained into the audit trail (the reference's outbox rows are left unread)
        ratios["service_vs_reference_postgres_cpu_per_request"] = ratio(
            cpu(direct_result, "postgres"), cpu(minimal, "postgres")
        )
        ratios["service_all_vs_reference_all_cpu_per_request"] = ratio(
            total_cpu(direct_result), total_cpu(minimal)
        )
    if gated_result is not None:
        ratios["service_vs_reference_identity_rps"] = ratio(rps(direct_result), rps(gated_result))
        ratios["service_vs_reference_identity_cpu_per_request"] = ratio(
            cpu(direct_result, "timesheets"), cpu(gated_result, "reference")
        )
        ratios["reference_identity_vs_reference_cpu_per_request"] = ratio(
            cpu(gated_result, "reference"), cpu(minimal, "reference")
        )
    if audited_result is not None:
        # the same work as the service's (identity contract, whole events, relayed and chained): the
        # service's own cost beside the least that work can cost on this stack
        ratios["service_vs_reference_audited_rps"] = ratio(rps(direct_result), rps(audited_result))
        ratios["service_vs_reference_audited_cpu_per_request"] = ratio(
            cpu(direct_result, "timesheets"), cpu(audited_result, "reference")
        )
        ratios["service_all_vs_reference_audited_all_cpu_per_request"] = ratio(
            total_cpu(direct_result), total_cpu(audited_result)
        )
    if before_result is not None:
        ratios["service_vs_before_cpu_per_request"] = ratio(
            cpu(direct_result, "timesheets"), cpu(before_result, "timesheets")
        )
        ratios["service_vs_before_rps"] = ratio(rps(direct_result), rps(before_result))
        ratios["before_vs_reference_cpu_per_request"] = ratio(
            cpu(before_result, "timesheets"), cpu(minimal, "reference")
        )
    report: dict[str, Any] = {
        "benchmark": "api",
        "what": "through the gateway: 50% POST /api/timesheets, 50% GET /api/timesheets?limit=20",
        "clients": CLIENTS,
        "users": USERS,
        "seconds": seconds,
        "rounds": rounds,
        "cores": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(result or {}),
        "entries_created_incl_warmup": created,
        "relayed_after_the_load": relay_checks,
        "direct_to_timesheets": direct_result,
        "gateway_rps_ratio": ratio(rps(result), rps(direct_result)),
        "reference": minimal,
        "reference_identity": gated_result,
        "reference_audited": audited_result,
        "pgbench": pg,
        "ratios": ratios,
        "targets": TARGETS,
    }
    if before_result is not None:
        report["direct_to_timesheets_before"] = {**before_result, "code": baseline}
    complete = all(case in cases for case in ("gateway", "direct", "reference"))
    # only a run of every case is the benchmark's result; a partial one (BENCH_API_CASES) is a probe
    written = RESULTS / "api.json" if complete else Path(tempfile.gettempdir()) / "bench-api-partial.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(report, indent=2) + "\n")
    if "gateway" in raws:
        print(raws["gateway"].strip())
        print()
    print(
        f"{'case':<36} {'rps':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}   cpu us/request"
        "   rps per round"
    )
    for label, key in (
        ("create+list via gateway (c=32)", "gateway"),
        ("create+list direct to timesheets", "direct"),
        ("the same, baseline code", "direct_before"),
        ("reference app (same SQL)", "reference"),
        ("reference + identity contract", "reference_identity"),
        ("reference + contract + audit relay", "reference_audited"),
        ("pgbench (same SQL)", "pgbench"),
    ):
        shown = cases.get(key)
        if shown is None:
            if key in selected:
                print(f"{label:<36} (not run: pgbench is not installed)")
            continue
        spent = ", ".join(f"{name} {value:.0f}" for name, value in shown["cpu_us_per_request"].items())
        print(
            f"{label:<36} {shown['rps']:>8.0f} {shown['p50_ms']:>8.1f} "
            f"{shown['p90_ms']:>8.1f} {shown['p99_ms']:>8.1f} {shown['non_2xx']:>8}   {spent}"
            f"   {shown.get('rps_rounds', '')}"
        )
        if key in ("direct", "direct_before"):
            rounds_cpu = [run["cpu_us_per_request"]["timesheets"] for run in runs[key]]
            print(f"{'':<36} timesheets cpu us/request per round: {rounds_cpu}")
        if "postgres" in shown["cpu_us_per_request"]:
            # the whole server's CPU over each run: background work (autovacuum, checkpoints) lands
            # in whichever case runs at the time, so a round far from the others says so here
            postgres_rounds = [run["cpu_us_per_request"].get("postgres") for run in runs[key]]
            print(f"{'':<36} postgres cpu us/request per round: {postgres_rounds}")
    print(
        f"timesheets / reference: {ratios['service_vs_reference_rps']} by throughput (target >= 1.0), "
        f"{ratios['service_vs_reference_cpu_per_request']} by CPU per request (target <= 1.0); "
        f"timesheets / pgbench: {ratios['service_vs_pgbench_rps']} (target >= 0.5); "
        f"p99 direct {direct_result['p99_ms'] if direct_result else None} ms (target <= 50)"
    )
    if "service_all_vs_reference_all_cpu_per_request" in ratios:
        print(
            "with the database (informational): Postgres's CPU per request, timesheets / reference "
            f"{ratios['service_vs_reference_postgres_cpu_per_request']}; every process's (service, audit,"
            f" Postgres / reference, Postgres) {ratios['service_all_vs_reference_all_cpu_per_request']}"
        )
    if gated_result is not None:
        print(
            "timesheets / reference + identity contract (informational): "
            f"{ratios['service_vs_reference_identity_rps']} by throughput, "
            f"{ratios['service_vs_reference_identity_cpu_per_request']} by CPU per request; the contract "
            f"costs the reference {ratios['reference_identity_vs_reference_cpu_per_request']}x its CPU"
        )
    if audited_result is not None:
        print(
            "timesheets / reference + identity contract + audit relay (informational: the same work): "
            f"{ratios['service_vs_reference_audited_rps']} by throughput, "
            f"{ratios['service_vs_reference_audited_cpu_per_request']} by CPU per request; every process's "
            f"{ratios.get('service_all_vs_reference_audited_all_cpu_per_request')}"
        )
    if before_result is not None:
        print(
            "timesheets / baseline (BENCH_API_BASELINE): "
            f"{ratios['service_vs_before_cpu_per_request']} by CPU per request, "
            f"{ratios['service_vs_before_rps']} by throughput; baseline / reference "
            f"{ratios['before_vs_reference_cpu_per_request']} by CPU"
        )
    for who, check in relay_checks.items():
        print(
            f"after the load, {who}: {check['entries_created']} entries created, "
            f"{check['creations_audited']} creations audited, {check['outbox_waiting']} outbox rows waiting"
        )
    if split is not None:
        split.report()
    print(f"written to {written}")
    checked = [
        case
        for case in (result, direct_result, minimal, gated_result, audited_result, before_result)
        if case is not None
    ]
    ok = all(case["non_2xx"] == 0 and case["requests"] > 0 for case in checked) and all(
        check["outbox_waiting"] == 0 and check["creations_audited"] == check["entries_created"]
        for check in relay_checks.values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
