"""``GET /audit/verify`` and ``GET /audit/checkpoints`` are bounded like the listing: a turn among a
few (503 with ``Retry-After`` without one, never a queue that holds connections) and a time limit
(a clear problem when a read runs into it), so a reader with ``read:audit`` cannot hold the pool that
ingestion needs.

Deterministic, without timing: a walk that verifies against checkpoints reads the ``checkpoints``
table, so the owner holding ``ACCESS EXCLUSIVE`` on it keeps a verification (or a checkpoint page)
running — waiting for that lock in Postgres — for exactly as long as the test wants, while the
records, and so ingestion and listings, stay free. The tests wait for the lock request to show in
``pg_locks``, never for a while.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest
from audit.app import create_app
from audit.checkpoints import CheckpointKeys
from audit.settings import AuditSettings
from prometheus_client import REGISTRY
from svckit.settings import load_settings

from testkit.auditevents import make_event
from testkit.client import Reply, SignedApi
from testkit.fixtures import (
    Caller,
    create_migrated_database,
    drop_database,
    runtime_url,
    serve_app,
)

from .conftest import AUDITOR, PACKAGE_DIR, TIMESHEETS, wait_ready

T = TypeVar("T")

#: what a test allows a call that should answer at once (a read left waiting on the lock would
#: otherwise answer only after the driver's 30 s command timeout): a guard, not a measurement
PROMPT = 15.0


@dataclass
class Trail:
    dsn: str  # the owner's
    keys: str
    env: dict[str, str]

    async def anchor(self) -> str:
        conn = await asyncpg.connect(self.dsn)
        try:
            row = await conn.fetchrow("SELECT seq, hash FROM audit.records ORDER BY seq DESC LIMIT 1")
        finally:
            await conn.close()
        assert row is not None
        return f"{row['seq']}:{row['hash']}"


@pytest.fixture(scope="module")
async def trail(identity_keys: dict[str, str], service_env: dict[str, str]) -> AsyncIterator[Trail]:
    name = f"tsp_test_bounds_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name, "audit", PACKAGE_DIR)
    keys = CheckpointKeys.generate("rb-1")
    try:
        env = {
            **service_env,
            "DATABASE_URL": runtime_url(dsn, "audit"),
            **identity_keys,
            "AUDIT_CHECKPOINT_KEYS": keys,  # a verification then reads the checkpoints table too
            "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0",
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
        }
        yield Trail(dsn, keys, env)
    finally:
        await drop_database(name)


@pytest.fixture
async def serve(trail: Trail, caller: Caller) -> AsyncIterator[Callable[..., Awaitable[SignedApi]]]:
    """``await serve(**settings)``: the service over the trail with those settings, a few records in."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> SignedApi:
        context = serve_app(create_app(load_settings(AuditSettings, env=trail.env, **overrides)))
        url = await context.__aenter__()
        stack.append(context)
        await wait_ready(url)
        api = SignedApi(url, caller)
        stack.append(api)
        await ingested(api)
        return api

    yield start
    for item in reversed(stack):
        if isinstance(item, SignedApi):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


async def ingested(api: SignedApi) -> None:
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [make_event()]})
    assert reply.status == 200, reply.text


class CheckpointsLocked:
    """The owner holds ``ACCESS EXCLUSIVE`` on ``audit.checkpoints`` until :meth:`release`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> CheckpointsLocked:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute("BEGIN; LOCK TABLE audit.checkpoints IN ACCESS EXCLUSIVE MODE")
        return self

    async def waiting(self) -> int:
        """Sessions of the service waiting for the lock."""
        assert self.conn is not None
        count: int = await self.conn.fetchval(
            """SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
               WHERE NOT l.granted AND c.relname = 'checkpoints'
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
        )
        return count

    async def until_waiting(self, count: int) -> None:
        async with asyncio.timeout(PROMPT):
            while await self.waiting() != count:
                await asyncio.sleep(0.01)

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.close()  # the transaction ends with the session: the lock is gone
            self.conn = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


def refused(metric: str, reason: str) -> float:
    return REGISTRY.get_sample_value(metric, {"reason": reason}) or 0.0


def walks() -> float:
    return sum(
        REGISTRY.get_sample_value("audit_chain_verifications_total", {"result": result}) or 0.0
        for result in ("ok", "broken")
    )


async def promptly(call: Awaitable[T]) -> T:
    async with asyncio.timeout(PROMPT):
        return await call


def assert_busy(reply: Reply) -> None:
    assert reply.status == 503, reply.text
    assert reply.problem, reply.text
    assert int(reply.headers["retry-after"]) >= 1


@pytest.mark.parametrize("running", ["full", "anchored"])
async def test_verifications_beyond_the_bound_are_refused_at_once_while_one_runs(
    trail: Trail, serve: Callable[..., Awaitable[SignedApi]], running: str
) -> None:
    """One verification on request at a time (AUDIT_VERIFY_CONCURRENCY 1): while it runs, others that
    would start a walk of their own are refused at once with 503 and Retry-After — not queued behind
    it, each waiting for its turn — while ingestion and listings go on."""
    api = await serve()
    anchor = await trail.anchor()
    params = {"anchor": anchor} if running == "anchored" else None
    busy = refused("audit_verifications_refused_total", "busy")
    async with CheckpointsLocked(trail.dsn) as lock:
        first = asyncio.ensure_future(api.call("GET", "/audit/verify", AUDITOR, params=params))
        await lock.until_waiting(1)
        others = [
            {"anchor": anchor},
            {"anchor": anchor},
            {"anchor": anchor},
            {"since": "1"},  # a ranged walk is a walk of its own too
            *([None] if running == "anchored" else []),  # a full walk, then, would be a second one
        ]
        replies = await promptly(
            asyncio.gather(*(api.call("GET", "/audit/verify", AUDITOR, params=p) for p in others))
        )
        for reply in replies:
            assert_busy(reply)
            assert "verification" in reply.body["detail"]
        assert refused("audit_verifications_refused_total", "busy") == busy + len(others)
        assert await lock.waiting() == 1  # the refused ones never reached the database
        # the pool is not theirs: ingestion and listings go on
        await promptly(ingested(api))
        listing = await promptly(api.call("GET", "/audit/events", AUDITOR, params={"limit": "1"}))
        assert listing.status == 200, listing.text
        assert not first.done()
        await lock.release()
        reply = await promptly(first)
    assert reply.status == 200, reply.text
    assert reply.body["ok"] is True
    # the turn is free again
    reply = await promptly(api.call("GET", "/audit/verify", AUDITOR, params={"anchor": anchor}))
    assert reply.status == 200, reply.text
    assert reply.body["ok"] is True


async def test_a_running_verification_takes_a_listing_turn(
    trail: Trail, serve: Callable[..., Awaitable[SignedApi]]
) -> None:
    """Verifications are part of the listings' share of the pool (AUDIT_READ_CONCURRENCY, held below
    DB_POOL_MAX): on a pool of two, the one listing turn is the running verification's, so a listing
    waits for it and is refused 503 — and ingestion keeps the other connection."""
    api = await serve(db_pool_min=0, db_pool_max=2, audit_read_timeout_seconds=0.3)
    busy = refused("audit_listings_refused_total", "busy")
    async with CheckpointsLocked(trail.dsn) as lock:
        running = asyncio.ensure_future(api.call("GET", "/audit/verify", AUDITOR))
        await lock.until_waiting(1)
        listing = await promptly(api.call("GET", "/audit/events", AUDITOR, params={"limit": "1"}))
        assert_busy(listing)
        assert refused("audit_listings_refused_total", "busy") == busy + 1
        await promptly(ingested(api))
        await lock.release()
        reply = await promptly(running)
    assert reply.status == 200, reply.text


async def test_a_verification_past_its_time_limit_is_stopped_with_a_clear_problem(
    trail: Trail, serve: Callable[..., Awaitable[SignedApi]]
) -> None:
    """A walk that runs into AUDIT_VERIFY_TIMEOUT_SECONDS is stopped (in Postgres too) and answered
    422 ``chain_too_long``, saying where the chain is verified instead; it says nothing about the
    chain, so audit_chain_ok and the verification counter are left alone. The lock stays held for the
    whole call: the walk cannot end any other way."""
    api = await serve(audit_verify_timeout_seconds=0.5)
    too_long, before = refused("audit_verifications_refused_total", "too_long"), walks()
    async with CheckpointsLocked(trail.dsn) as lock:
        reply = await promptly(api.call("GET", "/audit/verify", AUDITOR))
        assert reply.status == 422, reply.text
        assert reply.problem, reply.text
        assert reply.body["errors"][0]["type"] == "chain_too_long"
        assert "python -m audit verify" in reply.body["detail"]
        assert "?from_checkpoint=latest" in reply.body["detail"]  # what can be verified on request
        assert refused("audit_verifications_refused_total", "too_long") == too_long + 1
        assert walks() == before
        # the walk's statement is cancelled, not left behind: by a CancelRequest that asyncpg sends on a
        # connection of its own when the limit stops the walk, which the server may act on a moment
        # after the 422 went out (on a loaded CI machine the ranged walk's check below once saw it
        # still waiting); a statement left behind would wait on the lock for the whole PROMPT
        await lock.until_waiting(0)
        # a ranged walk is held to the same limit (its anchor is looked up in the checkpoints too)
        reply = await promptly(api.call("GET", "/audit/verify", AUDITOR, params={"since": "1"}))
        assert reply.status == 422, reply.text
        assert reply.body["errors"][0]["type"] == "chain_too_long"
        assert "Verifying the range" in reply.body["detail"]
        assert refused("audit_verifications_refused_total", "too_long") == too_long + 2
        await lock.until_waiting(0)
    reply = await promptly(api.call("GET", "/audit/verify", AUDITOR))  # its turn was given back
    assert reply.status == 200, reply.text
    assert reply.body["ok"] is True


async def test_a_checkpoint_page_is_bounded_like_a_listing(
    trail: Trail, serve: Callable[..., Awaitable[SignedApi]]
) -> None:
    """A page of checkpoints runs under the listings' time limit (a page is at most 100 rows by key:
    one that still takes that long means the database is in trouble, so 503 with Retry-After rather
    than 'narrow it'), counted in audit_listings_refused_total like the listing's."""
    api = await serve(audit_read_timeout_seconds=0.3)
    too_long = refused("audit_listings_refused_total", "too_long")
    async with CheckpointsLocked(trail.dsn) as lock:
        reply = await promptly(api.call("GET", "/audit/checkpoints", AUDITOR))
        assert_busy(reply)
        assert "0.3 s" in reply.body["detail"]
        assert refused("audit_listings_refused_total", "too_long") == too_long + 1
        assert await lock.waiting() == 0
    reply = await promptly(api.call("GET", "/audit/checkpoints", AUDITOR))
    assert reply.status == 200, reply.text


async def test_a_verifications_limit_counts_its_wait_for_a_listing_turn(
    trail: Trail, serve: Callable[..., Awaitable[SignedApi]]
) -> None:
    """A verification that first waits for a listing turn (up to AUDIT_READ_TIMEOUT_SECONDS) gets the
    rest of its AUDIT_VERIFY_TIMEOUT_SECONDS to walk, not all of it again: wait and walk together
    stayed under the limit the gateway's upstream timeout is set above, else the caller met the
    gateway's 504 instead of the 422. (A bound on the answer's time, with a margin of 1 s.)"""
    api = await serve(
        audit_read_concurrency=1, audit_read_timeout_seconds=2.0, audit_verify_timeout_seconds=2.0
    )
    async with CheckpointsLocked(trail.dsn) as lock:
        page = asyncio.ensure_future(api.call("GET", "/audit/checkpoints", AUDITOR))  # the one turn
        await lock.until_waiting(1)
        # both wait 2 s (the page for its lock, the verification for the page's turn): started only a
        # moment apart, a loaded machine could let the verification's wait end first (a 503 "every
        # listing turn is taken" in a CI run). Half a second apart, the page's turn comes back first.
        await asyncio.sleep(0.5)
        started = asyncio.get_running_loop().time()
        reply = await promptly(api.call("GET", "/audit/verify", AUDITOR))
        elapsed = asyncio.get_running_loop().time() - started
        assert_busy(await promptly(page))  # the page ran into the read timeout and gave its turn back
    assert reply.status == 422, reply.text
    assert reply.body["errors"][0]["type"] == "chain_too_long"
    assert elapsed < 2.0 + 1.0, elapsed  # not 1.5 s of waiting and then 2 s of walking


#: records of a chain whose walk cannot end within :data:`SHORT` (hashing alone is ~10 µs a record)
LONG_CHAIN = 20_000
SHORT = 0.05


@pytest.fixture(scope="module")
async def long_trail(
    identity_keys: dict[str, str], service_env: dict[str, str]
) -> AsyncIterator[dict[str, str]]:
    name = f"tsp_test_bounds_long_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name, "audit", PACKAGE_DIR)
    try:
        yield {
            **service_env,
            "DATABASE_URL": runtime_url(dsn, "audit"),
            **identity_keys,
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
        }
    finally:
        await drop_database(name)


async def test_a_long_walk_of_quick_statements_is_stopped_as_a_whole(
    long_trail: dict[str, str], caller: Caller
) -> None:
    """The limit is the walk's, not only each statement's: a walk is a cursor fetched a thousand rows
    at a time, each statement quick, so a statement timeout alone would let it run for ever on a
    trail long enough. Deterministic in the direction that matters: a slower machine only makes the
    walk longer than :data:`SHORT`."""
    settings = load_settings(AuditSettings, env=long_trail, audit_verify_timeout_seconds=SHORT)
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        api = SignedApi(url, caller)
        try:
            for _ in range(LONG_CHAIN // 500):
                events = [make_event() for _ in range(500)]
                reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
                assert reply.status == 200, reply.text
            too_long = refused("audit_verifications_refused_total", "too_long")
            reply = await promptly(api.call("GET", "/audit/verify", AUDITOR))
            assert reply.status == 422, reply.text
            assert reply.body["errors"][0]["type"] == "chain_too_long"
            assert refused("audit_verifications_refused_total", "too_long") == too_long + 1
        finally:
            await api.close()
