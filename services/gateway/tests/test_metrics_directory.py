"""The gateway's multiprocess metrics directory over a container's life: restarts and worker deaths.

``python -m gateway`` with several workers shares Prometheus samples through files in
``PROMETHEUS_MULTIPROC_DIR`` — in the chart, a memory-backed emptyDir of 64 Mi that survives container
restarts and counts against the pod's memory. Every process writes its own files, named after its
pid; nothing removed them: a restarted gateway summed the previous run's files into its own (counters
that did not start over, the previous workers' idle upstream connections), and every worker that died
left its counters and histograms for good, about 75 KiB a worker, until the pod was replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from testkit.fixtures import ServiceProcess
from testkit.workers import process_tree

from .conftest import Echo, Provider, process_env
from .test_spa_and_process import idle_upstream, metric, scraped, workers_of

ROUTE = {"route": "/api/timesheets", "method": "GET", "status": "200"}


def answered(text: str) -> float:
    return metric(text, "gateway_requests_total", **ROUTE)


def timed(text: str) -> float:
    """The requests the duration histogram counted: written just after the counter at each flush."""
    return metric(text, "gateway_request_duration_seconds_count", route="/api/timesheets")


async def call(process: ServiceProcess, token: str, times: int) -> None:
    for _ in range(times):
        async with (
            aiohttp.ClientSession() as session,  # a new connection each time: every worker serves
            session.get(process.url + "/api/timesheets", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            assert r.status == 200, await r.text()


def file_pids(directory: Path) -> set[str]:
    """What names the processes of the directory's metrics files: a pid, or ``archive``."""
    return {re.sub(r"^.*_", "", path.stem) for path in directory.glob("*.db")}


def live_pids(process: ServiceProcess) -> set[str]:
    assert process.process is not None
    return {str(process.process.pid), *(str(pid) for pid in workers_of(process))}


def killed_as_a_container(process: ServiceProcess) -> None:
    """Every process of the gateway (its workers, their fork server) SIGKILLed at once, as a
    container's are, and gone."""
    assert process.process is not None
    pids = process_tree(process.process.pid)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    process.process.wait()
    for pid in pids[1:]:
        for _ in range(200):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"worker {pid} still runs")


async def test_a_restarted_gateway_starts_from_a_clean_directory(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    """A container restart: the gateway started again on the directory the previous run filled (the
    emptyDir outlives the container). The previous run's files are removed before any process of the
    new run writes one, so its counters start over — a counter reset, as when the process restarts —
    and its workers' live gauges (idle upstream connections) are gone; any other file stays."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "notes.txt").write_text("not prometheus'")
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        GATEWAY_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    token = provider.token()
    first = ServiceProcess("gateway", env)
    await asyncio.to_thread(first.start)
    try:
        await call(first, token, 5)
        text = await scraped(
            first, lambda text: min(answered(text), timed(text)) >= 5 and idle_upstream(text) >= 1
        )
        assert (answered(text), timed(text)) == (5, 5)
        assert idle_upstream(text) >= 1
        previous = live_pids(first)
    finally:
        await asyncio.to_thread(killed_as_a_container, first)  # its files stay
    assert file_pids(directory) & previous  # what the next run finds

    second = ServiceProcess("gateway", env)
    await asyncio.to_thread(second.start)
    try:
        text = await scraped(second, lambda text: True)
        assert answered(text) == 0, "the previous run's counters were summed in"
        assert timed(text) == 0
        assert idle_upstream(text) == 0, "the previous run's idle connections were counted"
        assert not file_pids(directory) & (previous - live_pids(second))
        assert (directory / "notes.txt").read_text() == "not prometheus'"
        await call(second, token, 2)
        text = await scraped(second, lambda text: min(answered(text), timed(text)) >= 2)
        assert (answered(text), timed(text)) == (2, 2)
    finally:
        await asyncio.to_thread(second.stop)


async def replaced(process: ServiceProcess, killed: set[int]) -> set[int]:
    """The workers once the supervisor has replaced the ``killed`` ones."""
    for _ in range(300):
        current = workers_of(process)
        if len(current) == 2 and not current & killed:
            return current
        await asyncio.sleep(0.05)
    pytest.fail(f"the killed workers were not replaced:\n{process.logs()}")


async def test_dead_workers_files_stay_bounded_and_their_counts_stay(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    """Workers killed and replaced, again and again: a dead worker's counters and histograms must
    keep counting (a counter that went down is a reset to Prometheus: ``rate()`` would jump), but not
    as files of their own — they are merged into one archive per type when the supervisor replaces the
    worker, so the directory holds the live processes' files and the archives, however many died.
    Every scrape meanwhile sees each count once: never the archive and the merged files together.
    Two rounds: the first creates the archives (without merging, its files alone would pass the bound
    below), the second merges dead workers into archives that exist; a third repeats the second."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        GATEWAY_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    process = ServiceProcess("gateway", env)
    await asyncio.to_thread(process.start)
    seen: list[float] = []
    scraping = True

    async def scrape_all_along() -> None:
        while scraping:
            async with aiohttp.ClientSession() as session, session.get(process.metrics_url) as r:
                assert r.status == 200, await r.text()
                seen.append(answered(await r.text()))

    scraper = asyncio.create_task(scrape_all_along())
    try:
        token = provider.token()
        expected = 0
        files: list[int] = []
        for _ in range(2):
            await call(process, token, 4)
            expected += 4
            text = await scraped(process, lambda text: min(answered(text), timed(text)) >= expected)  # noqa: B023
            assert (answered(text), timed(text)) == (expected, expected)
            killed = workers_of(process)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            await replaced(process, killed)
            await asyncio.to_thread(process.start)  # the new workers serve
            text = await scraped(process, lambda text: min(answered(text), timed(text)) >= expected)  # noqa: B023
            assert (answered(text), timed(text)) == (expected, expected), "a dead worker's counts were lost"
            assert file_pids(directory) <= live_pids(process) | {"archive"}, sorted(directory.iterdir())
            files.append(len(list(directory.glob("*.db"))))
        # three processes of five files each at most, and the archives of counters and histograms
        assert max(files) <= 3 * 5 + 2, files
        scraping = False
        await scraper
        assert seen == sorted(seen), "a scrape saw a count go down"
        assert max(seen) <= expected, "a scrape counted a dead worker's requests twice"
    finally:
        scraping = False
        scraper.cancel()
        await asyncio.to_thread(process.stop)


async def test_a_stuck_worker_is_replaced_and_its_counts_stay(
    provider: Provider, echo: Echo, identity_keys: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    """A worker of three whose event loop stops (SIGSTOP: a blocked loop seen from outside) was never
    replaced — the others answered every fresh connection, the probes included. With a short
    WORKER_STUCK_SECONDS the supervisor kills it and starts another, counts it in
    ``worker_stuck_kills_total``, and merges its files as a dead worker's: what it had answered stays
    counted, once; requests on fresh connections were answered all along."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = process_env(
        provider,
        echo,
        identity_keys,
        redis_prefix,
        GATEWAY_WORKERS="3",
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        WORKER_STUCK_SECONDS="2",
    )
    process = ServiceProcess("gateway", env)
    await asyncio.to_thread(process.start)
    try:
        token = provider.token()
        await call(process, token, 9)
        text = await scraped(process, lambda text: min(answered(text), timed(text)) >= 9)
        assert (answered(text), timed(text)) == (9, 9)
        assert metric(text, "worker_stuck_kills_total") == 0
        for _ in range(600):  # every worker serving (and so beating): one still starting is not judged
            if process.logs().count("Application startup complete.") >= 3:
                break
            await asyncio.sleep(0.05)
        workers = workers_of(process)
        assert len(workers) == 3
        stuck = min(workers)
        os.kill(stuck, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await call(process, token, 6)  # fresh connections: the other workers answer
        for _ in range(200):
            current = workers_of(process)
            if len(current) == 3 and stuck not in current:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the stuck worker was not replaced:\n{process.logs()}")
        assert time.monotonic() - stopped_at < 2 + 3
        assert workers - {stuck} <= current, "a beating worker was killed"
        await call(process, token, 5)
        text = await scraped(process, lambda text: min(answered(text), timed(text)) >= 20)
        assert (answered(text), timed(text)) == (20, 20), "the stuck worker's counts were lost or doubled"
        assert metric(text, "worker_stuck_kills_total") == 1
        assert file_pids(directory) <= live_pids(process) | {"archive"}, sorted(directory.iterdir())
        records = [json.loads(line) for line in process.logs().splitlines() if "worker stuck" in line]
        assert [record["pid"] for record in records] == [stuck], process.logs()
        # a stopped process cannot dump its stacks: the supervisor waited a bounded moment, then killed
        assert records[0]["stack"] is None, records
        assert "did not run" in records[0]["stack_missing"], records
    finally:
        await asyncio.to_thread(process.stop)
