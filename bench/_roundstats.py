"""What else moved during one round of a benchmark: to tell a slow round of the host's from one of
the services' own (``bench._pgdecide``, ``PGDECIDE_ROUNDSTATS=1``).

Per round, one line each of:

* ``host``: the machine's busy cores (``/proc/stat``, steal included, wrk's core among them), the
  measured processes' cores, and the busiest three other processes (by CPU over the round: the
  host's other load, e.g. another checkout's tests);
* ``backlog``: each schema's ``outbox`` rows, at the start, largest sampled (every 0.5 s) and at the
  end, and the audit records appended per second;
* ``tables``: per table touched, ``n_dead_tup`` at the end and, over the round, autovacuums,
  autoanalyzes and sequential scans (``pg_stat_user_tables``);
* ``peers``: the distinct TCP connections each measured process held to each peer port (sampled
  every 0.2 s: a connection re-opened per request shows as thousands), and the autovacuum workers
  seen active;
* ``gc``: each service's garbage collections per generation over the round
  (``python_gc_collections_total`` on its metrics port, prometheus-client's default collector).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import urllib.request
from collections import Counter, defaultdict

import asyncpg
import psutil

TICK = os.sysconf("SC_CLK_TCK")

TABLES = """SELECT schemaname || '.' || relname AS t, n_dead_tup, n_live_tup, autovacuum_count,
       autoanalyze_count, seq_scan FROM pg_stat_user_tables"""


def host_busy() -> float:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def switches(pids: list[int]) -> tuple[int, int]:
    """Voluntary and involuntary context switches of the processes and their live children."""
    voluntary = involuntary = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:
            try:
                counts = process.num_ctx_switches()
            except psutil.Error:
                continue
            voluntary += counts.voluntary
            involuntary += counts.involuntary
    return voluntary, involuntary


def all_cpu() -> dict[int, tuple[str, float]]:
    seen: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter(["name", "cpu_times", "cmdline"]):
        times = process.info["cpu_times"]
        if times is None:
            continue
        cmd = " ".join((process.info["cmdline"] or [])[:3])[:50] or process.info["name"]
        seen[process.pid] = (cmd, times.user + times.system)
    return seen


def gc_counts(metrics_url: str) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    except OSError:
        return {"missing": 1.0}
    found = {
        match[1]: float(match[2])
        for match in re.finditer(r'^python_gc_collections_total\{generation="(\d)"\} ([\d.e+]+)$', text, re.M)
    }
    return found or {"missing": 1.0}


class RoundWatch:
    """Start before a round's load, stop after it; :meth:`report` prints the lines above."""

    def __init__(self, url: str, pids: dict[str, int | None], metrics: dict[str, str]):
        self.url = url
        self.pids = {who: pid for who, pid in pids.items() if pid is not None}
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backlog_max: Counter[str] = Counter()
        self.peers: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self.autovacuum_seen = 0

    async def _db(self) -> tuple[dict[str, int], int, dict[str, asyncpg.Record]]:
        conn = await asyncpg.connect(self.url)
        try:
            schemas = [
                r[0] for r in await conn.fetch("SELECT schemaname FROM pg_tables WHERE tablename='outbox'")
            ]
            backlog = {s: await conn.fetchval(f'SELECT count(*) FROM "{s}".outbox') for s in schemas}
            records = 0
            if await conn.fetchval("SELECT to_regclass('audit.records') IS NOT NULL"):
                records = await conn.fetchval("SELECT count(*) FROM audit.records")
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            tables = {r["t"]: r for r in await conn.fetch(TABLES)}
            return backlog, records, tables
        finally:
            await conn.close()

    def _sample(self) -> None:
        async def loop() -> None:
            conn = await asyncpg.connect(self.url)
            schemas = [
                r[0] for r in await conn.fetch("SELECT schemaname FROM pg_tables WHERE tablename='outbox'")
            ]
            last = 0.0
            try:
                while not self._stop.is_set():
                    for who, pid in self.pids.items():
                        if who == "postgres":
                            continue
                        try:
                            conns = psutil.Process(pid).net_connections("tcp")
                            listening = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
                            for c in conns:
                                if c.raddr and c.status == psutil.CONN_ESTABLISHED:
                                    # in (wrk's, a peer's) or out, by the peer's port
                                    key = (
                                        f"{who}<-in"
                                        if c.laddr.port in listening
                                        else f"{who}->:{c.raddr.port}"
                                    )
                                    self.peers[key].add((c.laddr.port, c.raddr.port))
                        except psutil.Error:
                            pass
                    if time.monotonic() - last >= 0.5:
                        last = time.monotonic()
                        for s in schemas:
                            n = await conn.fetchval(f'SELECT count(*) FROM "{s}".outbox')
                            self.backlog_max[s] = max(self.backlog_max[s], n)
                        self.autovacuum_seen += await conn.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                        )
                    await asyncio.sleep(0.2)
            finally:
                await conn.close()

        asyncio.run(loop())

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = host_busy()
        self.procs0 = all_cpu()
        self.switches0 = switches(list(self.pids.values()))
        self.self0 = psutil.Process().cpu_times()
        self.backlog0, self.records0, self.tables0 = asyncio.run(self._db())
        self.gc0 = {who: gc_counts(url) for who, url in self.metrics.items()}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.elapsed = time.monotonic() - self.t0
        self.busy1 = host_busy()
        self.procs1 = all_cpu()
        self.switches1 = switches(list(self.pids.values()))
        self.self1 = psutil.Process().cpu_times()
        self.gc1 = {who: gc_counts(url) for who, url in self.metrics.items()}
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.backlog1, self.records1, self.tables1 = asyncio.run(self._db())

    def report(self, label: str, ours_seconds: float, decisions: int) -> None:
        t = self.elapsed
        n = max(1, decisions)
        ours = set(self.pids.values())
        for pid in list(ours):
            with contextlib.suppress(psutil.Error):
                ours.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        others: defaultdict[str, float] = defaultdict(float)
        for pid, (cmd, after) in self.procs1.items():
            if pid in ours or pid == os.getpid():
                continue
            before = self.procs0.get(pid, (cmd, 0.0))[1]
            others[cmd] += after - before
        top = ", ".join(
            f"{cmd} {sec / t:.2f}" for cmd, sec in sorted(others.items(), key=lambda kv: -kv[1])[:3]
        )
        # this process and the children it waited for meanwhile (wrk)
        bench = (sum(self.self1[:4]) - sum(self.self0[:4])) / t
        busy = (self.busy1 - self.busy0) / t
        voluntary, involuntary = (a - b for a, b in zip(self.switches1, self.switches0, strict=True))
        print(
            f"  {label} host: busy {busy:.2f} cores, measured {ours_seconds / t:.2f}, this bench + wrk"
            f" {bench:.2f}, the rest {busy - ours_seconds / t - bench:.2f} (seen: {top});"
            " measured's context switches a decision:"
            f" voluntary {voluntary / n:.1f}, involuntary {involuntary / n:.2f}"
        )
        backlog = ", ".join(
            f"{s} {self.backlog0.get(s, 0)}/{self.backlog_max[s]}/{self.backlog1.get(s, 0)}"
            for s in self.backlog1
        )
        print(
            f"  {label} backlog start/max/end: {backlog};"
            f" audit records {(self.records1 - self.records0) / t:.0f}/s"
        )
        rows = []
        for name, row in sorted(self.tables1.items()):
            was = self.tables0.get(name)
            if was is None:
                continue
            d = {k: row[k] - was[k] for k in ("autovacuum_count", "autoanalyze_count", "seq_scan")}
            if any(d.values()) or row["n_dead_tup"] > 1000:
                rows.append(
                    f"{name} dead {row['n_dead_tup']} live {row['n_live_tup']} av {d['autovacuum_count']}"
                    f" aa {d['autoanalyze_count']} seq {d['seq_scan']}"
                )
        print(f"  {label} tables: " + "; ".join(rows))
        peers = ", ".join(f"{k} {len(v)}" for k, v in sorted(self.peers.items()))
        print(f"  {label} peers (distinct conns): {peers}; autovacuum workers seen {self.autovacuum_seen}")
        gc = (
            "(no python_gc_collections_total)"
            if any("missing" in g for g in self.gc1.values())
            else ", ".join(
                f"{who} "
                + "/".join(f"{self.gc1[who].get(g, 0) - self.gc0[who].get(g, 0):.0f}" for g in "012")
                for who in self.metrics
            )
        )
        print(f"  {label} gc gen0/1/2: {gc}", flush=True)
