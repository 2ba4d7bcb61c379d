"""The approvals service under load: the approval queue and decisions, at 32 concurrent clients.

What runs (real processes on loopback): the approvals service, the timesheets service it asks for
entries and applies decisions at, the audit service both relay their events to, and PostgreSQL/Redis
from ``DATABASE_URL``/``REDIS_URL`` (embedded ones when unset). Submitted entries of 32
employees are seeded, a slice of its own for each round's decisions (each decides a different entry)
large enough for 1,000 decisions a second (32,000 entries for 3 rounds of 8 s); 8 managers decide.
Requests go straight to the approvals service with pre-signed identity headers (as the gateway would
send them):

- ``queue``: ``GET /approvals?limit=20`` (a manager's first page: the newest submitted entries of
  everyone else, served by the timesheets service's internal route);
- ``decide``: ``PUT /approvals/{id}`` ``{"decision": "approved"}`` on a different entry every time (a
  decision is recorded once: the approvals service records it pending, applies it at the timesheets
  service, settles it with its audit event).

The same two cases also go, in the same run, to three peers, each working on a database of its own
seeded alike (the same entry ids; in one database pgbench's random decisions would decide the
entries the reference's requests are about):

- ``reference``: the minimal same-stack app (:mod:`bench._reference_app`), built like the two
  services: its approvals routes call its own minimal timesheets routes over HTTP; the services' SQL
  in the same transactions; the same pre-signed requests (it reads the caller unverified). Its one
  process does what the approvals and timesheets services do together, so the services' CPU per
  request is compared as their sum;
- ``reference_identity``: the same reference app honouring DESIGN.md's identity contract
  (``REFERENCE_IDENTITY=1``: each route behind its service's identity gate, the kit's verifier and
  replay memory over Redis; its calls to its own internal routes signed as ``service:approvals``), on a
  database of its own seeded alike. Informational: the issue's targets stay against the plain
  reference (``ratios.<case>.service_vs_reference_identity_*``);
- ``reference_audited``: that reference doing the consistency rule's work too (``REFERENCE_RELAY=1``:
  whole audit events in both outboxes, relayed by the kit's relays to an audit service of its own and
  chained there), on a database of its own: the same work as the services'. Informational
  (``ratios.<case>.service_vs_reference_audited_*``, every process's CPU included). The database sees
  the same from both per decision, counted by the server (``tests/bench/test_decision_statements.py``:
  four statements, each once and in autocommit; the relays' and the audit appends' per batch), so a
  gap in Postgres's CPU between the two is not statements the services add (in a short A/A run, the
  same code as ``before``, the two pairs' Postgres CPU per decision differed by 3%);
- ``pgbench``: the same statements and transactions in one script per case (:func:`pgbench_scripts`:
  the services' SQL text, tables qualified by schema since pgbench has one ``search_path``, the
  parameters as pgbench expressions), ``-M prepared -c32 -j1``. A decision picks an entry at random
  (some twice: the second pending insert then conflicts and records nothing).

With ``BENCH_APPROVALS_BASELINE`` set to a checkout (a directory holding ``services/approvals`` and
``services/kit``, e.g. ``git archive main services | tar -x -C /tmp/before``), a second approvals
service runs from that code with the same settings, beside the first (the same timesheets and audit
services and database; its decisions on entries of their own), measured in the same rounds as
``before`` (``ratios.<case>.approvals_vs_before_cpu_per_request``): an A/B of a change in one run.
With ``BENCH_APPROVALS_BASELINE_TIMESHEETS=1`` as well, the old approvals service has a timesheets
service from that checkout of its own too (the same database and audit service), so ``before`` is the
old pair against the new one (``timesheets_vs_before_cpu_per_request``,
``services_vs_before_cpu_per_request``, and round by round ``services_vs_before_cpu_rounds``: the
paired ratios, whose spread says what the median can resolve; each service's own by round too,
``approvals_vs_before_cpu_rounds``, ``timesheets_vs_before_cpu_rounds``): the A/B of a change to the
timesheets side of a decision. With ``BENCH_APPROVALS_BASELINE_SCHEMA=1`` on top, that old pair works
on a database of its own, migrated with the checkout's migrations and seeded alike (the same audit
service): the A/B of a migration (a trigger, an index) in one run, Postgres's CPU per request of each
pair beside the services' (the pairs take turns, so each round's Postgres CPU is the running pair's).
A round's load moves both pairs alike, so for a change to one service
the other's ratio in the same round is a control (an A/A run: approvals' ratio over timesheets'
0.985-1.011 by round) — but a whole run can sit a few percent off (one A/B read 0.933-0.962 in every
round, its repeat 0.980-1.020): repeat the run, not only the rounds.

``BENCH_APPROVALS_CASES`` (``queue,decide``) and ``BENCH_APPROVALS_PEERS`` (a comma list of
``reference_identity``, ``reference_audited``, ``pgbench``; all by default; the service, ``before`` and
the plain reference always run) choose what runs; a run of less than every case and peer writes
``$TMPDIR/approvals.partial.json`` instead of the results file.

``BENCH_APPROVALS_ROUNDS`` (default 3) interleaved rounds (every other one in reverse order),
``BENCH_APPROVALS_SECONDS`` (default 8) each; medians, each round's rps, the CPU time per request
of every server process (the embedded Postgres's too, when this run started it), and the ratios the
issue sets targets for (the same as ``bench/api.py``'s). Writes ``bench/results/approvals.json``
(the service's cases under ``queue`` and ``decide`` as before; ``reference``, ``pgbench``, ``ratios``,
``targets``) and prints a table. Benchmarks assert nothing.

``BENCH_APPROVALS_PROFILE`` naming an output prefix samples the approvals and timesheets services
with py-spy while the ``service`` peer runs, and the reference while it runs (collapsed stacks,
``--format raw``: one file per process, case and round, ``<prefix>.<case>.<round>.<process>``): where a
decision's time goes on both sides, and in the one process that does the same work. Each profile is
printed with the CPU its process used meanwhile: on this machine the services wait for a core for
much of what py-spy samples as running (:class:`bench._measure.ProfileTime`), the reference hardly at
all, so compare lines across them by CPU, not by share. Off by default (sampling costs the processes
some CPU too, counted in their figures).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from svckit.identity import Identity
from svckit.migrations import migrate

from bench._backing import embedded_postgres, fresh_database, servers
from bench._measure import CpuMeter, sampled
from bench._presigned import Request, write_pool
from bench.api import (
    CLIENTS,
    TARGETS,
    measured,
    median_of,
    pid_of,
    refuses_unsigned,
    run_pgbench,
    run_wrk,
    start_reference,
    start_reference_audited,
)
from testkit.fixtures import ServiceProcess, new_pair_keys, pair_signer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ISSUER = "http://127.0.0.1:9/"
EMPLOYEES = 32
#: the fewest entries a round's decisions get (each decides a different entry); more when a round
#: could decide more than that (``BENCH_APPROVALS_SECONDS`` at :data:`DECISIONS_PER_SECOND`)
MIN_PER_SLICE = 4000
DECISIONS_PER_SECOND = 3000  # above what a quiet machine of this kind decides
MANAGERS = 8
SCOPES = frozenset({"read:timesheets", "approve:timesheets"})

DECISION = b'{"decision":"approved"}'
#: pre-signed queue requests per second of a run (more than the service answers on a quiet machine)
QUEUE_PER_SECOND = 10_000


def entry_uuid(n: int) -> uuid.UUID:
    """The ``n``-th seeded entry's id (also computed by the pgbench script: :data:`PGBENCH_ENTRY`)."""
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


def manager(n: int) -> Identity:
    return Identity(ISSUER, f"bench-manager-{n % MANAGERS}", "user", "timesheets-spa", SCOPES, "")


async def seed(url: str, count: int, root: Path = ROOT) -> list[uuid.UUID]:
    """The schemas (the migrations of the checkout at ``root``), and the employees' submitted entries
    (their ids, in order: :func:`entry_uuid`)."""
    for service in ("timesheets", "approvals", "audit"):
        await migrate(url, service, root / "services" / service / service / "migrations")
    conn = await asyncpg.connect(url)
    try:
        ids = [entry_uuid(n) for n in range(count)]
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


async def relayed(url: str, timeout: float = 30.0, *, also: tuple[str, ...] = ()) -> dict[str, int]:
    """After the load: decisions applied, their ``approval.decided`` audit records, and the rows still
    waiting in the two outboxes once the relays had ``timeout`` seconds to drain them (a peer whose
    relay falls behind or fails shows it here, not as a cheaper run). ``also``: databases of services
    relaying to the same audit service (at ``url``), their decisions and outboxes counted too."""
    conns = [await asyncpg.connect(database) for database in (url, *also)]
    try:
        deadline = time.monotonic() + timeout
        while True:
            waiting = 0
            for conn in conns:
                waiting += await conn.fetchval(
                    "SELECT (SELECT count(*) FROM timesheets.outbox)"
                    " + (SELECT count(*) FROM approvals.outbox)"
                )
            if waiting == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        applied = 0
        for conn in conns:
            applied += await conn.fetchval("SELECT count(*) FROM approvals.decisions WHERE state = 'applied'")
        audited: int = await conns[0].fetchval(
            "SELECT count(*) FROM audit.records WHERE action = 'approval.decided'"
        )
        return {"decisions_applied": applied, "decisions_audited": audited, "outbox_waiting": waiting}
    finally:
        for conn in conns:
            await conn.close()


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


PGBENCH_ENTRY = "('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid"
#: a decision id of its own per transaction: two clients picking the same entry at once then conflict
#: on the live-decision index (the pending insert records nothing), not on the primary key (an error
#: that aborted a run when the id was the entry's number)
PGBENCH_DECISION = "('00000000-0000-4000-9000-' || lpad(:d::text, 12, '0'))::uuid"
_TABLES = re.compile(r"\b(FROM|INTO|UPDATE)\s+(entries|decisions|outbox)\b")


def qualified(sql: str, schema: str) -> str:
    """``sql`` with its tables named with ``schema`` (a service's connection has it on its search path)."""
    return _TABLES.sub(lambda match: f"{match[1]} {schema}.{match[2]}", sql)


def bind(sql: str, values: dict[int, str]) -> str:
    return re.sub(r"\$(\d+)", lambda match: values[int(match[1])], sql)


def pgbench_scripts(directory: Path, count: int) -> dict[str, Path]:
    """The services' SQL for one queue read and one decision, with the parameters as pgbench
    expressions: the queue is the timesheets service's pending query; a decision is what the two
    services send for one ``PUT``, in order and in the same transactions — the entry read
    (timesheets), the pending insert (approvals; the live-decision lookup follows only when it
    conflicts), the decision with its outbox row in one statement that locks the entry by updating
    it (timesheets: ``APPLY_DECISION``, in autocommit), the applied + outbox statement (approvals)."""
    from approvals.store import MARK_APPLIED, RECORD_PENDING
    from timesheets.store import APPLY_DECISION, GET_ENTRY, PENDING_FIRST_PAGE

    issuer = "'" + ISSUER.replace("'", "''") + "'"
    approver = "('bench-manager-' || :m)"
    now = "clock_timestamp()"
    queue = directory / "queue.sql"
    queue.write_text(
        f"\\set m random(0, {MANAGERS - 1})\n"
        + bind(qualified(PENDING_FIRST_PAGE, "timesheets"), {1: issuer, 2: approver, 3: "21"})
        + ";\n"
    )
    event = {"id": "gen_random_uuid()", "at": now}
    statements = [
        bind(qualified(GET_ENTRY, "timesheets"), {1: PGBENCH_ENTRY}),
        bind(
            qualified(RECORD_PENDING, "approvals"),
            {
                1: PGBENCH_DECISION,
                2: PGBENCH_ENTRY,
                3: "'approved'",
                4: "NULL",
                5: issuer,
                6: approver,
                7: "''",
                8: "'timesheets-spa'",
                9: "NULL",
                10: "'user'",
            },
        ),
        bind(
            qualified(APPLY_DECISION, "timesheets"),
            {
                1: PGBENCH_ENTRY,
                2: "'approved'",
                3: PGBENCH_DECISION,
                4: issuer,
                5: approver,
                6: "''",
                7: now,
                8: "NULL",
                9: event["id"],
                10: event["at"],
                11: '\'{"action": "timesheet.decided", "details": {}}\'',
            },
        ),
        bind(
            qualified(MARK_APPLIED, "approvals"),
            {1: PGBENCH_DECISION, 2: event["id"], 3: event["at"], 4: '\'{"action": "approval.decided"}\''},
        ),
    ]
    decide = directory / "decide.sql"
    decide.write_text(
        f"\\set n random(0, {count - 1})\n\\set m random(0, {MANAGERS - 1})\n"
        "\\set d random(0, 999999999999)\n"
        + "".join(" ".join(statement.split()) + ";\n" for statement in statements)
    )
    return {"queue": queue, "decide": decide}


def ratios(
    service: dict[str, Any],
    reference: dict[str, Any],
    pgbench: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    *,
    both_before: bool = False,
    gated: dict[str, Any] | None = None,
    audited: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The issue's ratios for one case; the services' CPU is approvals + timesheets (the reference's
    one process does both). With ``before`` (``BENCH_APPROVALS_BASELINE``), the approvals service's
    CPU per request and throughput against the old code's; ``both_before``: the old approvals
    service had an old timesheets service of its own (the two services' CPU against the old pair's).
    ``gated``: the reference honouring the identity contract, ``audited``: and relaying its outboxes
    to an audit service of its own (informational ratios)."""
    cpu = service["cpu_us_per_request"]
    service_cpu = cpu["approvals"] + cpu["timesheets"]
    reference_cpu = reference["cpu_us_per_request"]["reference"]
    found: dict[str, Any] = {
        "service_vs_reference_rps": round(service["rps"] / reference["rps"], 3) if reference["rps"] else None,
        "service_vs_reference_cpu_per_request": round(service_cpu / reference_cpu, 3)
        if reference_cpu
        else None,
        "service_vs_pgbench_rps": round(service["rps"] / pgbench["rps"], 3)
        if pgbench and pgbench["rps"]
        else None,
    }
    database, reference_database = cpu.get("postgres"), reference["cpu_us_per_request"].get("postgres")
    if database is not None and reference_database:
        # informational: the embedded Postgres's CPU per request, and every process's together (the
        # services' creates and decisions are also relayed and chained into the audit trail)
        found["service_vs_reference_postgres_cpu_per_request"] = round(database / reference_database, 3)
        found["service_all_vs_reference_all_cpu_per_request"] = round(
            sum(cpu.values()) / sum(reference["cpu_us_per_request"].values()), 3
        )
    if gated is not None:
        gated_cpu = gated["cpu_us_per_request"]["reference"]
        found["service_vs_reference_identity_rps"] = (
            round(service["rps"] / gated["rps"], 3) if gated["rps"] else None
        )
        found["service_vs_reference_identity_cpu_per_request"] = (
            round(service_cpu / gated_cpu, 3) if gated_cpu else None
        )
        found["reference_identity_vs_reference_cpu_per_request"] = (
            round(gated_cpu / reference_cpu, 3) if reference_cpu else None
        )
    if audited is not None:
        audited_cpu = audited["cpu_us_per_request"]
        found["service_vs_reference_audited_rps"] = (
            round(service["rps"] / audited["rps"], 3) if audited["rps"] else None
        )
        found["service_vs_reference_audited_cpu_per_request"] = (
            round(service_cpu / audited_cpu["reference"], 3) if audited_cpu["reference"] else None
        )
        found["service_all_vs_reference_audited_all_cpu_per_request"] = round(
            sum(cpu.values()) / sum(audited_cpu.values()), 3
        )
    if before is not None:
        old = before["cpu_us_per_request"]
        found["approvals_vs_before_cpu_per_request"] = (
            round(cpu["approvals"] / old["approvals"], 3) if old["approvals"] else None
        )
        if both_before:
            old_cpu = old["approvals"] + old["timesheets"]
            found["timesheets_vs_before_cpu_per_request"] = (
                round(cpu["timesheets"] / old["timesheets"], 3) if old["timesheets"] else None
            )
            found["services_vs_before_cpu_per_request"] = round(service_cpu / old_cpu, 3) if old_cpu else None
            # paired by round (the two pairs ran in the same rounds, next to each other): the spread
            new_rounds, old_rounds = service.get("cpu_rounds", {}), before.get("cpu_rounds", {})
            if new_rounds and old_rounds:
                # each service's own, round by round: on this machine a round's load moves both pairs
                # alike, so when a change touches one service only, its ratio over the other's (the
                # same round) cancels most of that (an A/A run: 0.985-1.011 by round)
                for who in ("approvals", "timesheets"):
                    found[f"{who}_vs_before_cpu_rounds"] = [
                        round(a / b, 3) for a, b in zip(new_rounds[who], old_rounds[who], strict=True) if b
                    ]
                found["services_vs_before_cpu_rounds"] = [
                    round((a + t) / (oa + ot), 3)
                    for a, t, oa, ot in zip(
                        new_rounds["approvals"],
                        new_rounds["timesheets"],
                        old_rounds["approvals"],
                        old_rounds["timesheets"],
                        strict=True,
                    )
                    if oa + ot
                ]
        found["service_vs_before_rps"] = round(service["rps"] / before["rps"], 3) if before["rps"] else None
    return found


def profiled(pids: dict[str, int | None], name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run`` with py-spy sampling each of ``pids`` when ``BENCH_APPROVALS_PROFILE`` names an output
    prefix (``<prefix>.<name>.<process>``), else just ``run``."""
    output = os.environ.get("BENCH_APPROVALS_PROFILE", "")
    if not output:
        return run()
    return sampled({f"{output}.{name}.{who}": pid for who, pid in pids.items()}, run)


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (make system-deps); skipping the approvals benchmark")
        return 1
    seconds = float(os.environ.get("BENCH_APPROVALS_SECONDS", "8"))
    rounds = int(os.environ.get("BENCH_APPROVALS_ROUNDS", "3"))
    logs = Path(tempfile.mkdtemp(prefix="bench-approvals-"))
    processes: list[ServiceProcess] = []
    reference: Any = None
    gated: Any = None
    audited: Any = None
    relay_checks: dict[str, dict[str, int]] = {}
    baseline = os.environ.get("BENCH_APPROVALS_BASELINE", "")
    both_before = bool(baseline) and os.environ.get("BENCH_APPROVALS_BASELINE_TIMESHEETS", "") == "1"
    before_schema = both_before and os.environ.get("BENCH_APPROVALS_BASELINE_SCHEMA", "") == "1"
    cases = tuple(os.environ.get("BENCH_APPROVALS_CASES", "queue,decide").split(","))
    peers: tuple[str, ...] = (
        "service",
        "before",
        "reference",
        "reference_identity",
        "reference_audited",
        "pgbench",
    )
    if not baseline:
        peers = tuple(peer for peer in peers if peer != "before")
    chosen = os.environ.get("BENCH_APPROVALS_PEERS", "")
    if chosen:  # the service and the plain reference always run (the targets' ratios need both)
        wanted = {"service", "reference", *chosen.split(",")}
        peers = tuple(peer for peer in peers if peer in wanted or peer == "before")
    partial = set(cases) != {"queue", "decide"} or not {
        "reference_identity",
        "reference_audited",
        "pgbench",
    } <= set(peers)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {peer: {case: [] for case in cases} for peer in peers}
    # a slice of entries per round and approvals service, and one for each one's warm-up
    instances = 2 if baseline else 1
    per_slice = max(MIN_PER_SLICE, int(seconds * DECISIONS_PER_SECOND))
    count = per_slice * (rounds + 1) * instances
    name = f"tsp_bench_approvals_{os.getpid()}"
    try:
        with (
            servers(redis=True) as backing,
            fresh_database(name) as url,
            fresh_database(name + "_peers") as peers_url,
            fresh_database(name + "_pgbench") as pgbench_url,
            fresh_database(name + "_gated") as gated_url,
            fresh_database(name + "_audited") as audited_url,
            fresh_database(name + "_before") as before_url,
        ):
            entries = asyncio.run(seed(url, count))
            for database in (peers_url, pgbench_url, gated_url, audited_url):
                asyncio.run(seed(database, count))
            if before_schema:  # the old pair's own database, with the old migrations
                asyncio.run(seed(before_url, count, Path(baseline)))
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
                reference = start_reference(peers_url, logs)
                gated_env = {
                    **keys,
                    "REFERENCE_IDENTITY": "1",
                    "REDIS_URL": backing.redis_url or "",
                    "REDIS_KEY_PREFIX": f"tsp-bench-approvals:{os.getpid()}:reference:",
                }
                if "reference_identity" in peers:
                    gated = start_reference(gated_url, logs, gated_env, "reference_identity")
                    if not refuses_unsigned(gated.reference_url):
                        raise RuntimeError("reference_identity admitted an unsigned request")
                if "reference_audited" in peers:
                    reference_audit, audited = start_reference_audited(
                        audited_url, logs, env, f"tsp-bench-approvals:{os.getpid()}:", processes
                    )
                urls = {"service": approvals.url, "reference": reference.reference_url}
                meters = {}
                # the embedded Postgres's CPU beside each peer's (see bench/api.py)
                postgres = embedded_postgres() if backing.embedded else None
                postgres_pids = {"postgres": postgres} if postgres else {}
                if baseline:
                    old_timesheets = timesheets
                    old_env = {**env, "DATABASE_URL": before_url} if before_schema else env
                    if both_before:
                        old_timesheets = ServiceProcess(
                            "timesheets",
                            {
                                **old_env,
                                "AUDIT_URL": audit.url,
                                "PYTHONPATH": os.pathsep.join(
                                    (f"{baseline}/services/timesheets", f"{baseline}/services/kit")
                                ),
                            },
                            log_dir=logs,
                        ).start()
                        processes.append(old_timesheets)
                    before = ServiceProcess(
                        "approvals",
                        {
                            **approvals_env,
                            **({"DATABASE_URL": before_url} if before_schema else {}),
                            "TIMESHEETS_URL": old_timesheets.url,
                            "PYTHONPATH": f"{baseline}/services/approvals{os.pathsep}{baseline}/services/kit",
                        },
                        log_dir=logs,
                    ).start()
                    processes.append(before)
                    urls = {"service": approvals.url, "before": before.url, "reference": urls["reference"]}
                    meters["before"] = CpuMeter(
                        {
                            "approvals": pid_of(before),
                            "timesheets": pid_of(old_timesheets),
                            "audit": pid_of(audit),
                            **postgres_pids,
                        }
                    )
                if gated is not None:
                    urls["reference_identity"] = gated.reference_url
                if audited is not None:
                    urls["reference_audited"] = audited.reference_url
                meters |= {
                    "service": CpuMeter(
                        {
                            "approvals": pid_of(approvals),
                            "timesheets": pid_of(timesheets),
                            "audit": pid_of(audit),
                            **postgres_pids,
                        }
                    ),
                    "reference": CpuMeter({"reference": reference.pid, **postgres_pids}),
                }
                if gated is not None:
                    meters["reference_identity"] = CpuMeter({"reference": gated.pid, **postgres_pids})
                if audited is not None:
                    meters["reference_audited"] = CpuMeter(
                        {"reference": audited.pid, "audit": pid_of(reference_audit), **postgres_pids}
                    )
                pgbench = (
                    pgbench_scripts(logs, count) if shutil.which("pgbench") and "pgbench" in peers else None
                )
                slices = [entries[i * per_slice : (i + 1) * per_slice] for i in range(count // per_slice)]

                def entries_of(peer: str, n: int) -> list[uuid.UUID]:
                    """Round ``n``'s entries (``rounds``: the warm-up's) for ``peer``: the two approvals
                    services share a database, each reference has one of its own seeded alike."""
                    return slices[n * instances + (1 if peer == "before" else 0)]

                for peer, target in urls.items():  # warm-up
                    run_wrk(target, queue_script(logs / "queue.lua", keys, 2 * QUEUE_PER_SECOND), 2)
                    run_wrk(target, decide_script(logs / "decide.lua", keys, entries_of(peer, rounds)), 2)
                for n in range(rounds):  # interleaved: a noisy moment hurts every case alike
                    # every other round in reverse: no peer always runs right after another's load
                    # (whose relays and audit appends may still be draining)
                    order = list(urls.items()) if n % 2 == 0 else list(reversed(urls.items()))
                    for case in cases:
                        for peer, target in order:
                            script = (
                                queue_script(logs / "queue.lua", keys, int(seconds * QUEUE_PER_SECOND))
                                if case == "queue"
                                else decide_script(logs / "decide.lua", keys, entries_of(peer, n))
                            )

                            def work() -> dict[str, Any]:
                                return measured(
                                    lambda: run_wrk(target, script, seconds),  # noqa: B023
                                    meters[peer],  # noqa: B023
                                )

                            pids: dict[str, int | None] = {}
                            if peer == "service":
                                pids = {"approvals": pid_of(approvals), "timesheets": pid_of(timesheets)}
                            elif peer == "reference":
                                pids = {"reference": reference.pid}
                            elif peer == "reference_identity" and gated is not None:
                                pids = {"reference": gated.pid}
                            elif peer == "reference_audited" and audited is not None:
                                pids = {"reference": audited.pid}
                            runs[peer][case].append(profiled(pids, f"{case}.{n}", work))
                        if pgbench is not None:
                            runs["pgbench"][case].append(
                                measured(
                                    lambda: run_pgbench(pgbench_url, [pgbench[case]], seconds, logs),  # noqa: B023
                                    CpuMeter(postgres_pids),
                                )
                            )
                # every applied decision audited, by the services and by the reference doing the same work
                # (the old pair on a database of its own relays to the same audit service)
                shared = (before_url,) if before_schema else ()
                relay_checks["service"] = asyncio.run(relayed(url, also=shared))
                if audited is not None:
                    relay_checks["reference_audited"] = asyncio.run(relayed(audited_url))
            finally:  # the servers stop before their databases are dropped
                for peer_process in (reference, gated, audited):
                    if peer_process is not None:
                        peer_process.terminate()
                        peer_process.wait(10)
                for process in reversed(processes):
                    process.stop()
    finally:
        shutil.rmtree(logs, ignore_errors=True)

    found = {peer: {case: median_of(r) for case, r in by_case.items() if r} for peer, by_case in runs.items()}
    for peer in ("pgbench", "reference_identity", "reference_audited"):
        found.setdefault(peer, {})
    for results in found.values():
        for result in results.values():
            result.pop("raw", None)
    service, minimal, pg = found["service"], found["reference"], found["pgbench"]
    gated_found = found["reference_identity"]
    audited_found = found["reference_audited"]
    old = found.get("before")
    report: dict[str, Any] = {
        "benchmark": "approvals",
        "what": "straight to the approvals service: GET /approvals?limit=20, PUT /approvals/{id} approved",
        "clients": CLIENTS,
        "seconds": seconds,
        "rounds": rounds,
        "cores": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **service,
        "reference": minimal,
        "reference_identity": gated_found,
        "reference_audited": audited_found,
        "pgbench": pg or None,
        **(
            {
                "before": old,
                "before_timesheets": "baseline" if both_before else "shared",
                "before_database": "own, baseline migrations" if before_schema else "shared",
            }
            if old
            else {}
        ),
        "ratios": {
            case: ratios(
                service[case],
                minimal[case],
                pg.get(case),
                old[case] if old else None,
                both_before=both_before,
                gated=gated_found.get(case),
                audited=audited_found.get(case),
            )
            for case in cases
        },
        "targets": TARGETS,
        "relayed_after_the_load": relay_checks,
    }
    # a run of some cases or peers only is not the benchmark's figures: written beside, not over them
    written = (
        Path(tempfile.gettempdir()) / "approvals.partial.json" if partial else RESULTS / "approvals.json"
    )
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'case':<52} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}   cpu us/request   rps per round"
    )
    labels = {"queue": "queue GET /approvals (c=32)", "decide": "decide PUT /approvals/{id}"}
    for case, label in ((case, labels[case]) for case in cases):
        for peer, result in (
            ("service", service),
            ("before", old or {}),
            ("reference", minimal),
            ("reference_identity", gated_found),
            ("reference_audited", audited_found),
            ("pgbench", pg),
        ):
            if peer == "before" and not old:
                continue
            row = result.get(case)
            if row is None:
                print(f"{label + ' ' + peer:<52} (not run: pgbench not installed, or not chosen)")
                continue
            cpu = ", ".join(f"{who} {value:.0f}" for who, value in row["cpu_us_per_request"].items())
            print(
                f"{label + ' ' + peer:<52} {row['rps']:>8.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
                f" {row['non_2xx']:>8}   {cpu}   {row['rps_rounds']}"
            )
        r = report["ratios"][case]
        print(
            f"{case}: services / reference {r['service_vs_reference_rps']} by throughput (target >= 1.0), "
            f"{r['service_vs_reference_cpu_per_request']} by CPU per request, approvals + timesheets "
            f"(target <= 1.0); / pgbench {r['service_vs_pgbench_rps']} (target >= 0.5); "
            f"p99 {service[case]['p99_ms']} ms (target <= 50)"
        )
        if "service_all_vs_reference_all_cpu_per_request" in r:
            print(
                f"{case}: with the database (informational): Postgres's CPU per request, services / "
                f"reference {r['service_vs_reference_postgres_cpu_per_request']}; every process's "
                f"{r['service_all_vs_reference_all_cpu_per_request']}"
            )
        if "service_vs_reference_identity_cpu_per_request" in r:
            print(
                f"{case}: services / reference + identity contract (informational) "
                f"{r['service_vs_reference_identity_rps']} by throughput, "
                f"{r['service_vs_reference_identity_cpu_per_request']} by CPU per request; the contract "
                f"costs the reference {r['reference_identity_vs_reference_cpu_per_request']}x its CPU"
            )
        if "service_vs_reference_audited_cpu_per_request" in r:
            print(
                f"{case}: services / reference + contract + audit relay (informational: the same work) "
                f"{r['service_vs_reference_audited_rps']} by throughput, "
                f"{r['service_vs_reference_audited_cpu_per_request']} by CPU per request; every process's "
                f"{r['service_all_vs_reference_audited_all_cpu_per_request']}"
            )
        if old:
            print(
                f"{case}: approvals / before (BENCH_APPROVALS_BASELINE) CPU per request "
                f"{r['approvals_vs_before_cpu_per_request']}, throughput {r['service_vs_before_rps']}"
            )
        if both_before:
            print(
                f"{case}: timesheets / before {r['timesheets_vs_before_cpu_per_request']}, approvals + "
                f"timesheets / before {r['services_vs_before_cpu_per_request']} (CPU per request; by "
                f"round {r.get('services_vs_before_cpu_rounds', '')})"
            )
    for who, check in relay_checks.items():
        print(
            f"after the load, {who}: {check['decisions_applied']} decisions applied, "
            f"{check['decisions_audited']} audited, {check['outbox_waiting']} outbox rows waiting"
        )
    print(f"written to {written}")
    relays_ok = all(
        check["outbox_waiting"] == 0 and check["decisions_audited"] == check["decisions_applied"]
        for check in relay_checks.values()
    )
    return 0 if all(case["non_2xx"] == 0 for case in service.values()) and relays_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
