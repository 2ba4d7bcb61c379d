"""What a decision (``PUT /approvals/{id}``) sends to Postgres, counted by the server: the two services
send the same statements per decision as the benchmark's ``reference_audited`` (which does the same
work in one process: :mod:`bench._reference_app` with ``REFERENCE_IDENTITY`` and ``REFERENCE_RELAY``),
and nothing else once per decision.

A decision is four statements, each in autocommit (one round trip, no ``BEGIN``/``COMMIT``): the entry
read (timesheets), the pending insert (approvals), the apply with its outbox row (timesheets), the
settle with its outbox row (approvals). Everything else the services' database sees is per batch
(the outbox relays' claims and acknowledgements, the audit service's appends: each in a transaction)
or periodic (the reconciler, gauges). A statement added to the path (a read before a write, a
transaction around a single statement, a pool reset query on release, a lookup of the live decision
on the common path) shows here as a count, not as a timing the noise of this machine hides.

Counted with ``pg_stat_statements`` on a private Postgres (:class:`testkit.pgproc.PrivatePostgres`:
the shared server is not reconfigured), each side on a database of its own, so that the counts are
the server's, whatever sent them. Decisions go one at a time, after a warm-up (statements prepared,
pools filled): the counts are then exact.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from svckit.identity import IdentitySigner

from bench.api import start_reference
from bench.approvals import DECISION, entry_uuid, manager, seed
from testkit.fixtures import ServiceProcess, new_pair_keys, pair_signer
from testkit.pgproc import PrivatePostgres, postgres_bin

DECISIONS = 20
WARM_UP = 4
#: what a decision runs, by the start of each statement's text (``store``'s SQL, whitespace folded):
#: exactly once each per decision. A constant may show as its placeholder: ``pg_stat_statements``
#: keeps the text of a statement's first sighting after the reset, as sent when that was an
#: execution of a statement prepared before it, with its constants replaced (``'applied'`` → ``$6``)
#: when it was a connection opened in the window preparing it (a pool growing under load: CI saw the
#: settle counted 0.0 a decision, its 20 calls under the replaced text)
DECISION_PATH = {
    "entry read": r"SELECT id, owner_issuer, owner_subject",
    "pending insert": r"INSERT INTO decisions",
    "apply": r"WITH change AS \( UPDATE entries",
    "settle": r"WITH change AS \(UPDATE decisions SET state = ('applied'|\$\d+), applied_at",
}


def on_path(query: str, name: str | None = None) -> bool:
    """Whether ``query`` is the decision statement ``name`` (any of them: None)."""
    starts = DECISION_PATH.values() if name is None else (DECISION_PATH[name],)
    return any(re.match(start, query) for start in starts)


#: statements of batches and periodic tasks, not of a decision (their count follows the relays'
#: timing): the relays' (``outbox``), the audit service's appends (``chain_head``, and what
#: ``append_documents`` runs inside, tracked as nested statements), the gauges and the reconciler
BATCHED = (
    "outbox",
    "chain_head",
    "append_documents",
    "WITH parsed AS",
    "found_seq",
    "FROM decisions WHERE state",
)
#: what asyncpg runs once per new connection (its type introspection, with JIT off meanwhile), and the
#: pool's check of its role once it exists: not per decision (a pool may open a connection in the window)
CONNECTION_SETUP = (
    "WITH RECURSIVE typeinfo_tree",
    "SELECT set_config",
    "SELECT current_setting",
    "SELECT current_user",
)
TRANSACTIONS = ("BEGIN", "COMMIT", "ROLLBACK")
#: the transactions of the batches: a relay's claim (``FOR UPDATE SKIP LOCKED``), an audit append
BATCH_TRANSACTIONS = ("FOR UPDATE SKIP LOCKED", "FROM chain_head")


def stat_statements() -> bool:
    found = postgres_bin()
    if found is None:
        return False
    libraries = Path(str(found).removesuffix("/bin")) / "lib"
    return (libraries / "pg_stat_statements.so").exists()


pytestmark = pytest.mark.skipif(not stat_statements(), reason="no PostgreSQL with pg_stat_statements here")


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres(
        settings={
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.track_utility": "on",
            "max_connections": "120",
        }
    )
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.remove()


def put(url: str, target: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url + target, data=DECISION, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.loads(reply.read())["state"] == "applied"
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def statements(dsn: str, database: str, *, reset: bool = False) -> dict[str, int]:
    """The calls of each statement run in ``database`` since the last reset (text: whitespace folded)."""
    conn = await asyncpg.connect(dsn)
    try:
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return {}
        rows = await conn.fetch(
            "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = $1",
            database,
        )
    finally:
        await conn.close()
    counted: collections.Counter[str] = collections.Counter()
    for row in rows:
        counted[" ".join(row["query"].split())] += row["calls"]
    return dict(counted)


async def drained(url: str) -> None:
    """Both outboxes empty: the relays have delivered every event of the decisions."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(200):
            waiting = await conn.fetchval(
                "SELECT (SELECT count(*) FROM timesheets.outbox) + (SELECT count(*) FROM approvals.outbox)"
            )
            if waiting == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the outboxes were not drained")
    finally:
        await conn.close()


def per_decision(counted: dict[str, int]) -> dict[str, float]:
    """What the counts say about one decision: each decision statement's calls, every other
    statement's outside batches and periodic tasks, and transactions beyond the batches' (each per
    decision)."""
    found: dict[str, float] = {}
    for name in DECISION_PATH:
        found[name] = sum(calls for query, calls in counted.items() if on_path(query, name)) / DECISIONS
    others = {
        query: calls
        for query, calls in counted.items()
        if not on_path(query)
        and not any(part in query for part in BATCHED)
        and not query.startswith((*TRANSACTIONS, *CONNECTION_SETUP))
    }
    found["other statements"] = sum(others.values()) / DECISIONS
    found.update({f"other: {query[:80]}": calls for query, calls in others.items()})
    begun = sum(calls for query, calls in counted.items() if query.startswith("BEGIN"))
    batches = sum(
        calls for query, calls in counted.items() if any(part in query for part in BATCH_TRANSACTIONS)
    )
    found["transactions beyond the batches'"] = max(0, begun - batches) / DECISIONS
    return found


def decide_all(url: str, signer: IdentitySigner, first: int, count: int) -> None:
    for n in range(first, first + count):
        target = f"/approvals/{entry_uuid(n)}"
        headers = signer.headers(manager(n), method="PUT", target=target, body=DECISION)
        assert put(url, target, {**headers, "Content-Type": "application/json"}) == 200


def test_a_decision_sends_what_the_reference_sends_and_nothing_more(
    server: PrivatePostgres, redis_url: str, tmp_path: Path
) -> None:
    base = server.dsn.rsplit("/", 1)[0]

    async def databases() -> None:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            for name in ("services", "reference"):
                await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        for name in ("services", "reference"):
            await seed(f"{base}/{name}", WARM_UP + DECISIONS)

    asyncio.run(databases())
    keys = new_pair_keys("s")
    prefix = f"tsp-test:{uuid.uuid4().hex}:"
    env = {**keys, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING"}
    services_url, reference_url = f"{base}/services", f"{base}/reference"
    started: list[ServiceProcess] = []
    audited = None
    try:
        audit = ServiceProcess(
            "audit", {**env, "DATABASE_URL": services_url, "REDIS_KEY_PREFIX": prefix}, log_dir=tmp_path
        ).start()
        started.append(audit)
        common = {**env, "DATABASE_URL": services_url, "REDIS_KEY_PREFIX": prefix, "AUDIT_URL": audit.url}
        timesheets = ServiceProcess("timesheets", common, log_dir=tmp_path).start()
        started.append(timesheets)
        approvals = ServiceProcess(
            "approvals", {**common, "TIMESHEETS_URL": timesheets.url}, log_dir=tmp_path
        ).start()
        started.append(approvals)
        reference_audit = ServiceProcess(
            "audit",
            {**env, "DATABASE_URL": reference_url, "REDIS_KEY_PREFIX": prefix + "ra:"},
            log_dir=tmp_path,
        ).start()
        started.append(reference_audit)
        audited = start_reference(
            reference_url,
            tmp_path,
            {
                **env,
                "REFERENCE_IDENTITY": "1",
                "REFERENCE_RELAY": "1",
                "AUDIT_URL": reference_audit.url,
                "REDIS_KEY_PREFIX": prefix + "reference:",
            },
            "reference_audited",
        )
        signer = pair_signer(keys, "gateway", "approvals")
        found = {}
        for name, url, database_url in (
            ("services", approvals.url, services_url),
            ("reference", audited.reference_url, reference_url),  # type: ignore[attr-defined]
        ):
            decide_all(url, signer, 0, WARM_UP)  # statements prepared, connections open
            asyncio.run(drained(database_url))
            time.sleep(0.2)
            asyncio.run(statements(server.dsn, name, reset=True))
            decide_all(url, signer, WARM_UP, DECISIONS)
            asyncio.run(drained(database_url))
            found[name] = per_decision(asyncio.run(statements(server.dsn, name)))

        expected = {name: 1.0 for name in DECISION_PATH}
        services = found["services"]
        assert {name: services[name] for name in DECISION_PATH} == expected, services
        # nothing else once per decision (a few periodic statements may fall in the window)
        assert services["other statements"] < 0.25, services
        assert services["transactions beyond the batches'"] < 0.25, services
        # the reference runs the same statements per decision: the services add none
        reference = found["reference"]
        assert {name: reference[name] for name in DECISION_PATH} == expected, reference
    finally:
        if audited is not None:
            audited.terminate()
            audited.wait(10)
        for process in reversed(started):
            process.stop()


def test_a_decision_statement_counts_in_either_text_the_server_kept() -> None:
    """The settle's text as kept after an execution of the statement prepared before the reset, and
    as kept after a connection opened in the window prepared it first (its constants replaced)."""
    sent = (
        "WITH change AS (UPDATE decisions SET state = 'applied', applied_at = clock_timestamp(), "
        "updated_at = clock_timestamp(), last_error = NULL WHERE id = $1 AND state IS NOT DISTINCT "
        "FROM 'pending' RETURNING id)"
    )
    replaced = (
        "WITH change AS (UPDATE decisions SET state = $6, applied_at = clock_timestamp(), "
        "updated_at = clock_timestamp(), last_error = NULL WHERE id = $1 AND state IS NOT DISTINCT "
        "FROM $7 RETURNING id)"
    )
    void = "WITH change AS (UPDATE decisions SET state = 'void', void_reason = $2"
    for text in (sent, replaced):
        found = per_decision({text: DECISIONS})
        assert found["settle"] == 1.0, found
        assert found["other statements"] == 0, found
    assert per_decision({void: DECISIONS})["settle"] == 0  # a void is no settle of an applied decision
