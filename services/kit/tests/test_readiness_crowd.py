"""Many readiness probes at once on a busy pool whose statements go unanswered for a while (slower
than the answer window): ``/readyz`` is open to anyone who reaches the pod, and a connection of the
probe's own for each of them would add backends to a server already busy. They share one."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from svckit.health import run_checks

from .test_readiness_busy import ANSWER_S, load, rig, saturated

pytestmark = pytest.mark.timeout(60)

CROWD = 20


async def test_a_crowd_of_probes_on_a_busy_pool_opens_one_connection_per_answer_window(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(database_url) as (_, database, _table):
        opened = []
        connect = database.connect

        async def counted(application_name: str | None = None) -> asyncpg.Connection:
            opened.append(application_name)
            return await connect(application_name)

        monkeypatch.setattr(database, "connect", counted)
        async with load(database, "SELECT pg_sleep(15)"):
            await asyncio.sleep(ANSWER_S + 0.3)  # past the answer window of the pool's last answers
            assert saturated(database)
            started = time.monotonic()
            crowd = await asyncio.gather(*(run_checks({"postgres": database.check}) for _ in range(CROWD)))
            again = await asyncio.gather(*(run_checks({"postgres": database.check}) for _ in range(CROWD)))
            took = time.monotonic() - started
    assert all(result == {"postgres": "ok"} for result in crowd + again), (crowd, again)
    own = [name for name in opened if name is not None and name.endswith("readiness")]
    assert len(own) == 1, (own, took)  # each probe its own, before: 20 (one per probe of a crowd)
