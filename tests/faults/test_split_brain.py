"""A failover whose old primary stays up and writable (not fenced): split brain, for real.

A private primary with a streaming hot standby; every service reaches Postgres through a TCP proxy
that plays the Service/DNS name. Under write load the standby is promoted while the old primary keeps
running and taking writes (an operator promoting by hand, a network partition that a failover
manager took for the primary's death), and the name moves to the new primary *without* cutting the
open connections (a Service moves; TCP connections stay with the backend they reached).

Before the kit checked where the name leads (``DB_LEADER_CHECK_SECONDS``, :mod:`svckit.dbserver`), the
pools kept their connections on the old primary for as long as it stayed up: acknowledged writes went
on being stored on a server nobody reads any more (lost when it is rebuilt as a standby), while the
connections a pool opened after the move wrote to the new one, so reads contradicted each other.

Now every service notices within its check interval: after ``BOUND`` seconds from the move no
acknowledged write is stored only on the old primary, no session of a service (pool or outbox
LISTEN) is left there, and every read through the API sees what the new primary holds. The writes
acknowledged inside the window are on the old primary only: what fencing, not the services, must
prevent (docs/runbook.md, "Split brain")."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from testkit.pgproc import PrivatePostgres
from testkit.redisproc import PrivateRedis

from .conftest import Figures, Stack
from .failover import DB_SERVICES, failover_stack
from .load import PROJECT, WriteLoad, wait_for_outboxes

pytestmark = pytest.mark.timeout(150)

#: the services' DB_LEADER_CHECK_SECONDS here
CHECK_S = 1.0
#: from the move on, how long a service may still write to the old primary: a check interval, the
#: check's own connection and query, and the statements already running on the old connections
BOUND = CHECK_S + 2.0
#: how long the load runs after the move
AFTER_MOVE_S = BOUND + 4.0


async def entries_on(server: PrivatePostgres, tags: list[str]) -> dict[str, tuple[str, dt.datetime]]:
    """The load's entries stored on ``server``: tag → (id, created_at)."""
    conn = await asyncpg.connect(server.dsn)
    try:
        rows = await conn.fetch(
            "SELECT notes, id::text, created_at FROM timesheets.entries"
            " WHERE project = $1 AND notes = ANY($2::text[])",
            PROJECT,
            tags,
        )
    finally:
        await conn.close()
    return {row["notes"]: (row["id"], row["created_at"]) for row in rows}


async def service_sessions_on(server: PrivatePostgres) -> dict[str, int]:
    """Client sessions of the services (pools, LISTEN connections) open on ``server``."""
    conn = await asyncpg.connect(server.dsn)
    try:
        rows = await conn.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND split_part(application_name, '-', 1) = ANY($1::text[]) GROUP BY 1",
            list(DB_SERVICES),
        )
    finally:
        await conn.close()
    return {row["application_name"]: int(row["n"]) for row in rows}


async def drained_and_audited(server: PrivatePostgres, since: dt.datetime) -> tuple[float, int]:
    """On ``server``: the seconds until its outboxes are empty (every event delivered: the relays and
    their LISTEN connections moved), and how many of the load's entries created there after ``since``
    lack their one audit record (the audit service moved too)."""
    conn = await asyncpg.connect(server.dsn)
    try:
        drained = await wait_for_outboxes(conn)
        missing = await conn.fetchval(
            """SELECT count(*) FROM timesheets.entries e WHERE e.project = $1 AND e.created_at > $2
               AND 1 <> (SELECT count(*) FROM audit.records r
                         WHERE r.action = 'timesheet.created' AND r.resource_id = e.id::text)""",
            PROJECT,
            since,
        )
    finally:
        await conn.close()
    return drained, int(missing)


async def server_now(server: PrivatePostgres) -> dt.datetime:
    conn = await asyncpg.connect(server.dsn)
    try:
        now: dt.datetime = await conn.fetchval("SELECT clock_timestamp()")
        return now
    finally:
        await conn.close()


async def read_back(http: aiohttp.ClientSession, stack: Stack, entry_id: str) -> Any:
    async with http.get(f"{stack.api}/timesheets/{entry_id}", headers=stack.headers("alice")) as response:
        return response.status


async def test_a_failover_whose_old_primary_stays_writable(
    private_redis: PrivateRedis, tmp_path: Path, figures: Figures
) -> None:
    async with (
        failover_stack(private_redis, tmp_path, {"DB_LEADER_CHECK_SECONDS": str(CHECK_S)}) as (
            stack,
            proxy,
            primary,
            standby,
        ),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
    ):
        async with WriteLoad(stack.api, stack.headers("alice"), stack.headers("bob"), writers=3) as load:
            while len(load.report.acked) < 10:
                await asyncio.sleep(0.05)
            # the old primary is not fenced: it keeps running and taking writes
            await asyncio.to_thread(standby.promote)
            moved_at = await server_now(standby)
            proxy.retarget(standby.port)  # the Service moves; open connections stay where they are
            await asyncio.sleep(AFTER_MOVE_S)
            report = await load.stop()
        sessions_left = await service_sessions_on(primary)
        tags = list(report.acked)
        on_old = await entries_on(primary, tags)
        on_new = await entries_on(standby, tags)
        # acknowledged writes stored on the old primary only: nobody reads them any more
        lost = {tag: created for tag, (_, created) in on_old.items() if tag not in on_new}
        lost_late = {tag: at for tag, at in lost.items() if at > moved_at + dt.timedelta(seconds=BOUND)}
        last_lost_s = max(((at - moved_at).total_seconds() for at in lost.values()), default=0.0)
        # what the API answers for the writes the new primary holds, after the bound
        late_on_new = [
            entry_id for _, (entry_id, at) in on_new.items() if at > moved_at + dt.timedelta(seconds=1)
        ][-16:]
        answers = await asyncio.gather(*(read_back(http, stack, entry_id) for entry_id in late_on_new))
        drained, unaudited = await drained_and_audited(standby, moved_at + dt.timedelta(seconds=BOUND))
        figures.record(
            "split brain (old primary unfenced)",
            check_interval_s=CHECK_S,
            acknowledged=len(tags),
            acknowledged_after_move=sum(1 for _, at in [*on_old.values(), *on_new.values()] if at > moved_at),
            stored_on_new_primary=len(on_new),
            stored_only_on_old_primary=len(lost),
            stored_only_on_old_primary_after_bound=len(lost_late),
            last_write_to_old_primary_s_after_move=round(last_lost_s, 2),
            service_sessions_left_on_old_primary=sessions_left,
            read_backs=answers.count(200),
            read_backs_not_found=answers.count(404),
            events_drained_on_new_primary_s=round(drained, 2),
            entries_after_bound_without_audit_record=unaudited,
            decisions_refused=len([line for line in report.unexpected if line.startswith("decision")]),
            server_errors=report.server_errors,
        )
        assert lost_late == {}, (
            f"{len(lost_late)} acknowledged writes stored only on the old primary more than {BOUND} s "
            f"after the move (the last {last_lost_s:.1f} s after it)"
        )
        assert sessions_left == {}, sessions_left
        assert late_on_new, "no write reached the new primary after the move"
        assert answers == [200] * len(answers), answers
        assert unaudited == 0
        # an approval of an entry acknowledged by the old primary only finds no entry (404), or finds
        # it decided on the other server (409): the lost writes' consequences, nothing else
        creates_unexpected = [line for line in report.unexpected if not line.startswith("decision")]
        assert creates_unexpected == [], creates_unexpected
        decisions_unexpected = [line for line in report.unexpected if line.startswith("decision")]
        assert all(line.startswith(("decision 404", "decision 409")) for line in decisions_unexpected)
        assert len(decisions_unexpected) <= len(lost), decisions_unexpected
        assert report.server_errors == 0, report.attempts
        assert not [tag for tag in tags if tag not in on_old and tag not in on_new]  # each stored somewhere
