"""``/readyz`` while every pooled connection is busy: an overload must not become an outage.

``python -m timesheets`` with a pool of :data:`POOL` connections and the default lock bound
(``DB_LOCK_TIMEOUT_SECONDS``, 2 s); an operator's session holds ``LOCK TABLE timesheets.entries IN
ACCESS EXCLUSIVE MODE`` while more clients than the pool has connections list entries: each list
holds a pooled connection up to the lock bound, and the others queue for one. The readiness probe is
polled as the chart's kubelet does (``probes.readiness.timeoutSeconds``: 3 s). Before, the probe
queued behind the requests for a pooled connection and timed out (``/readyz`` 503 "postgres: timed
out" after 2.5 s, every probe): two failures in a row and Kubernetes takes the pod out of the
Service, its traffic moves to the other replicas, which saturate the same way — no ready endpoint
left over a held lock. A busy pool with a server that answers is ready; the server going away still
makes the pod unready (``services/kit/tests/test_readiness_busy.py`` has the kit-level cases).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from testkit.client import SignedApi
from testkit.fixtures import Caller, IsolatedEnv, ServiceProcess, migrate_schema, runtime_url, user

pytestmark = pytest.mark.timeout(90)

PACKAGE = Path(__file__).resolve().parents[1] / "timesheets"
#: the service's pool (DB_POOL_MAX): small, so a few clients take every connection
POOL = 2
#: clients listing entries at once: several waiting for each pooled connection
CLIENTS = 10
#: the chart's readiness probe (charts/timesheets/values.yaml, probes.readiness.timeoutSeconds)
PROBE_TIMEOUT_S = 3.0
#: how long the operator's session holds the table
HELD_S = 7.0
#: what a probe of a ready pod may take on a loaded test machine (well inside the kubelet's bound)
PROBE_FAST_S = 1.0


@pytest.fixture
def busy_timesheets(isolated_env: IsolatedEnv, tmp_path: Path) -> Iterator[tuple[ServiceProcess, str]]:
    env = isolated_env("readyz_busy")
    owner_url = env["DATABASE_URL"]
    asyncio.run(migrate_schema(owner_url, "timesheets", PACKAGE))
    service_env = {
        **env,
        "DATABASE_URL": runtime_url(owner_url, "timesheets"),
        "REDIS_URL": env["REDIS_URL"],
        "AUDIT_URL": "http://127.0.0.1:9",
        "DB_POOL_MIN": str(POOL),
        "DB_POOL_MAX": str(POOL),
    }
    with ServiceProcess("timesheets", service_env, log_dir=tmp_path).start("/readyz") as process:
        yield process, owner_url


async def probe(http: aiohttp.ClientSession, url: str) -> tuple[float, int, str]:
    """One kubelet probe: the status, or 0 when no answer came within the probe's timeout."""
    start = time.monotonic()
    try:
        async with http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as reply:
            return time.monotonic() - start, reply.status, (await reply.text())[:300]
    except (TimeoutError, aiohttp.ClientError) as exc:
        return time.monotonic() - start, 0, type(exc).__name__


def test_a_saturated_pool_behind_a_held_lock_stays_ready(
    busy_timesheets: tuple[ServiceProcess, str], caller: Caller
) -> None:
    process, owner_url = busy_timesheets
    asyncio.run(_saturate_and_probe(process, owner_url, caller))


async def _saturate_and_probe(process: ServiceProcess, owner_url: str, caller: Caller) -> None:
    alice = user("alice-readyz", "read:timesheets")
    api = SignedApi(process.url, caller)
    stop = asyncio.Event()
    listed: list[int] = []

    async def client() -> None:
        while not stop.is_set():
            listed.append((await api.call("GET", "/timesheets", alice)).status)

    operator = await asyncpg.connect(owner_url, server_settings={"application_name": "operator psql"})
    probes: list[tuple[float, int, str]] = []
    try:
        async with aiohttp.ClientSession() as http:
            assert (await probe(http, process.url))[1] == 200
            transaction = operator.transaction()
            await transaction.start()
            await operator.execute("LOCK TABLE timesheets.entries IN ACCESS EXCLUSIVE MODE")
            clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
            await asyncio.sleep(0.5)  # every pooled connection waits on the lock, more requests queue
            until = time.monotonic() + HELD_S
            while time.monotonic() < until:
                probes.append(await probe(http, process.url))
                await asyncio.sleep(0.3)
            await transaction.rollback()
            stop.set()
            await asyncio.gather(*clients)
            after = await api.call("GET", "/timesheets", alice)
    finally:
        await operator.close()
        await api.close()
    busy = {status for status in listed if status != 200}
    assert busy == {503}, (busy, process.logs())  # the lists were held up, answered database_busy
    failed = [p for p in probes if p[1] != 200 or p[0] > PROBE_FAST_S]
    assert failed == [], (f"{len(failed)} of {len(probes)} probes failed or were slow", failed[:5])
    assert after.status == 200
