"""What each index of ``audit.records`` costs an append: ``append_documents`` with and without it.

What runs: one schema per variant in a fresh database (the audit migrations, then a trail of
``BENCH_AUDIT_INDEX_TRAIL`` records shaped like the platform's, ``services/audit/tests/realistic_trail``,
then the variant's statements: an index dropped, or added back), and in this process one connection
that appends realistic events to each schema in turn, as the audit service does (``append_documents``,
autocommit), ``BENCH_AUDIT_INDEX_ROUNDS`` interleaved rounds (the order reversed every other round)
of ``BENCH_AUDIT_INDEX_APPENDS`` appends of ``BENCH_AUDIT_INDEX_GROUP`` events per variant.

Measured per append: the backend's CPU time (``/proc/<pid>/schedstat``, nanoseconds: a local server
only, else ``null``) and, as counts that do not move with the machine's load, the buffers the append
touches, its WAL records and bytes (``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of a few appends: the
function's statements are counted in its node). Medians of the rounds, each variant's difference from
``all`` beside them, each round's CPU figure after them.

``BENCH_AUDIT_INDEX_VARIANTS`` (comma-separated names) runs only those variants (``all`` always).
Writes ``bench/results/audit_indexes.json`` and prints a table; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import asyncpg
from audit.chain import canonical_text, timestamp
from audit.jsonb import jsonb_text
from svckit.migrations import migrate

from bench._backing import fresh_database, servers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MIGRATIONS = ROOT / "services" / "audit" / "audit" / "migrations"
sys.path.insert(0, str(ROOT / "services" / "audit"))
from tests.realistic_trail import PARTNER, seed  # noqa: E402

TRAIL = int(os.environ.get("BENCH_AUDIT_INDEX_TRAIL", "100000"))
ROUNDS = int(os.environ.get("BENCH_AUDIT_INDEX_ROUNDS", "7"))
APPENDS = int(os.environ.get("BENCH_AUDIT_INDEX_APPENDS", "300"))
GROUP = int(os.environ.get("BENCH_AUDIT_INDEX_GROUP", "1"))
#: appends per variant and round run under EXPLAIN for the counts (their mean)
PROBES = 20

#: the filter indexes of records as migrations 0002-0013 made them (not the primary key, not the
#: unique id): each one present has a variant without it, each one absent a variant with it again
FILTER_INDEXES = {
    "records_actor": "(actor_subject, seq)",
    "records_client": "(actor_client_id, seq)",
    "records_action": "(action, seq)",
    "records_resource": "(resource_type, resource_id, seq)",
    "records_occurred": "(occurred_at)",
    "records_outcome": "(outcome, seq)",
    "records_source": "(source, seq)",
    "records_actor_issuer": "(actor_issuer, seq)",
    "records_resource_id": "(resource_id, seq)",
    "records_source_outcome": "(source, outcome, seq)",
    "records_source_action": "(source, action, seq)",
    "records_client_outcome": "(actor_client_id, outcome, seq)",
    "records_action_outcome": "(action, outcome, seq)",
}
#: a set of indexes measured together (comma-separated names): ``-cut`` drops those present, ``+cut``
#: adds those absent
CUT = os.environ.get("BENCH_AUDIT_INDEX_CUT", "records_source,records_client,records_action")


def variants(present: set[str]) -> dict[str, list[str]]:
    """Statements per variant, on the schema ``{schema}``: ``all`` is the schema as migrated."""
    found: dict[str, list[str]] = {"all": []}
    for index, columns in FILTER_INDEXES.items():
        if index in present:
            found[f"-{index}"] = [f"DROP INDEX {{schema}}.{index}"]
        else:
            found[f"+{index}"] = [f"CREATE INDEX {index} ON {{schema}}.records {columns}"]
    cut = [name.strip() for name in CUT.split(",") if name.strip()]
    if any(index in present for index in cut):
        found["-cut"] = [f"DROP INDEX {{schema}}.{index}" for index in cut if index in present]
    if any(index not in present for index in cut):
        found["+cut"] = [
            f"CREATE INDEX {index} ON {{schema}}.records {FILTER_INDEXES[index]}"
            for index in cut
            if index not in present
        ]
    found["-all filters"] = [f"DROP INDEX {{schema}}.{index}" for index in FILTER_INDEXES if index in present]
    wanted = os.environ.get("BENCH_AUDIT_INDEX_VARIANTS")
    if wanted:
        names = {name.strip() for name in wanted.split(",")}
        found = {name: steps for name, steps in found.items() if name in names or name == "all"}
    return found


class Events:
    """Realistic events (the mix of realistic_trail), chained as ``audit.store`` chains them."""

    def __init__(self) -> None:
        self.n = 0

    def one(self, seq: int, prev: str, recorded: str, when: datetime) -> str:
        self.n += 1
        n = self.n
        k = n % 20
        gateway = 16 <= k <= 18
        return canonical_text(
            seq,
            uuid.uuid4(),
            timestamp(when - timedelta(seconds=n % 7)),
            recorded,
            "approvals" if k in (12, 13) else "gateway" if gateway else "timesheets",
            "" if gateway else "http://localhost:9000/",
            "anonymous"
            if gateway
            else "timesheets-batch@clients"
            if k == 15
            else f"local|manager{n % 50}"
            if k in (12, 13, 14)
            else f"local|user{n % 500}",
            "anonymous" if gateway else "client" if k == 15 else "user",
            "" if gateway else "timesheets-batch" if k == 15 else PARTNER if k == 19 else "timesheets-spa",
            f"User {n % 500}",
            "timesheet.created"
            if k < 10 or k == 19
            else "timesheet.deleted"
            if k < 12
            else "approval.decided"
            if k < 14
            else "timesheet.decided"
            if k == 14
            else "timesheet.uploaded"
            if k == 15
            else "access.denied",
            "route" if gateway else "timesheet_upload" if k == 15 else "timesheet",
            "GET /timesheets" if gateway else str(uuid.uuid4()),
            "denied" if gateway or (k == 13 and n % 1000 == 13) else "success",
            uuid.uuid4().hex,
            jsonb_text(
                {"count": 3, "reason": "missing_token", "status": 401, "route": "/timesheets"}
                if gateway
                else {"date": "2026-11-23", "hours": 7.5, "project": "Store rollout"}
            ),
            prev,
        )

    def group(self, seq: int, prev: str) -> tuple[list[str], list[str]]:
        when = datetime.now(UTC)
        recorded = timestamp(when)
        documents, hashes = [], []
        for _ in range(GROUP):
            seq += 1
            document = self.one(seq, prev, recorded, when)
            prev = sha256(document.encode()).hexdigest()
            documents.append(document)
            hashes.append(prev)
        return documents, hashes


def cpu_ns(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except OSError:
        return None  # not a server on this machine


async def one_round(conn: asyncpg.Connection, pid: int, schema: str, events: Events) -> dict[str, Any]:
    call = f"SELECT * FROM {schema}.append_documents(0, $1, $2, $3, $4)"
    head = await conn.fetchrow(f"SELECT seq, hash FROM {schema}.chain_head")
    assert head is not None
    seq, prev = head["seq"], head["hash"]
    touched = wal_bytes = wal_records = 0
    for _ in range(PROBES):
        documents, hashes = events.group(seq, prev)
        explain = "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS, WAL, FORMAT JSON) " + call
        plan = json.loads(await conn.fetchval(explain, seq, prev, documents, hashes))[0]["Plan"]
        touched += plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        wal_bytes += plan["WAL Bytes"]
        wal_records += plan["WAL Records"]
        seq, prev = seq + GROUP, hashes[-1]
    groups = []
    for _ in range(APPENDS):
        documents, hashes = events.group(seq, prev)
        groups.append((seq, prev, documents, hashes))
        seq, prev = seq + GROUP, hashes[-1]
    statement = await conn.prepare(call)
    before = cpu_ns(pid)
    started = time.perf_counter()
    for expected, last, documents, hashes in groups:
        row = await statement.fetchrow(expected, last, documents, hashes)
        assert row is not None
        assert row["head_seq"] == expected + GROUP, row
    wall = time.perf_counter() - started
    after = cpu_ns(pid)
    return {
        "cpu_us": (after - before) / 1000 / APPENDS if before is not None and after is not None else None,
        "wall_us": wall * 1e6 / APPENDS,
        "buffers": touched / PROBES,
        "wal_bytes": wal_bytes / PROBES,
        "wal_records": wal_records / PROBES,
    }


def median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


async def run(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(dsn, "audit", MIGRATIONS)
        present = {
            row["indexname"]
            for row in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'audit'")
        }
        chosen = variants(present)
        schemas = {}
        for number, (name, steps) in enumerate(chosen.items()):
            schema = f"v{number}"
            await migrate(dsn, schema, MIGRATIONS)
            # seeded without its filter indexes, built afterwards (a sort each: minutes faster)
            built = await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'records'"
                " AND indexname = ANY($2::text[])",
                schema,
                list(FILTER_INDEXES),
            )
            for row in built:
                await conn.execute(f"DROP INDEX {schema}.{row['indexname']}")
            await seed(conn, schema, TRAIL)
            for row in built:
                await conn.execute(row["indexdef"])
            for step in steps:
                await conn.execute(step.format(schema=schema))
            await conn.execute(f"VACUUM ANALYZE {schema}.records")
            schemas[name] = schema
        indexes = {
            name: sorted(
                row["indexname"]
                for row in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)
                if row["indexname"].startswith("records")
            )
            for name, schema in schemas.items()
        }
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("SET synchronous_commit = off")
        events = Events()
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in schemas}
        names = list(schemas)
        for number in range(ROUNDS):
            for name in names if number % 2 == 0 else names[::-1]:
                rounds[name].append(await one_round(conn, pid, schemas[name], events))
    finally:
        await conn.close()
    results = {}
    for name, measured in rounds.items():
        results[name] = {
            **{key: median([r[key] for r in measured]) for key in measured[0]},
            "cpu_us_rounds": [round(r["cpu_us"]) if r["cpu_us"] is not None else None for r in measured],
            "indexes": indexes[name],
        }
    return {"trail": TRAIL, "group": GROUP, "rounds": ROUNDS, "appends": APPENDS, "variants": results}


def main() -> int:
    with servers() as _, fresh_database(f"tsp_bench_audit_indexes_{secrets.token_hex(3)}") as dsn:
        results = asyncio.run(run(dsn))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit_indexes.json").write_text(json.dumps(results, indent=2) + "\n")
    variants_ = results["variants"]
    base = variants_["all"]
    print(
        f"trail {results['trail']} records, groups of {results['group']}, {results['rounds']} rounds of"
        f" {results['appends']} appends; 'all': {len(base['indexes'])} indexes"
    )
    print(
        f"{'variant':<28}{'cpu us':>9}{'delta':>8}{'wall us':>9}{'buffers':>9}{'delta':>7}"
        f"{'WAL B':>8}{'delta':>7}{'WAL rec':>8}{'delta':>7}   cpu us rounds"
    )

    def figure(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for name, v in variants_.items():
        known = v["cpu_us"] is not None and base["cpu_us"] is not None
        cpu_delta = v["cpu_us"] - base["cpu_us"] if known else None
        print(
            f"{name:<28}{figure(v['cpu_us']):>9}{figure(cpu_delta):>8}{figure(v['wall_us']):>9}"
            f"{v['buffers']:>9.1f}{v['buffers'] - base['buffers']:>7.1f}{v['wal_bytes']:>8.0f}"
            f"{v['wal_bytes'] - base['wal_bytes']:>7.0f}{v['wal_records']:>8.1f}"
            f"{v['wal_records'] - base['wal_records']:>7.1f}   {v['cpu_us_rounds']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
