"""The heaviest single requests an operator or auditor can make, against the chart's memory limits.

``test_pods_under_limits`` drives each pod to its worst case of ordinary traffic. This module takes the
requests whose cost could grow with the data instead: the audit service verifying a long trail
(``GET /audit/verify``, whole and ranged; the background verifier's full walk; the checkpoint signer's
first walk), its largest listing page, and the offline commands (``python -m audit verify`` /
``export-checkpoints``, which an operator may run inside the audit pod, under its limit).

A trail of :data:`RECORDS` records, chained and checkpointed, is written once per module by SQL
(:mod:`testkit.bigtrail`); its newest :data:`FAT` records carry the largest details an event may have,
so a page of the listing and the walk's batches are at their heaviest there. The audit service runs
as a real process (``python -m audit``); each case reads its peak resident set (``VmHWM``, reset before
the request through ``/proc/<pid>/clear_refs``) and holds it to :data:`SHARE` of the rendered chart's
``audit.resources.limits.memory`` (the rest is the margin ``test_pods_under_limits`` keeps for what
this machine does not show). docs/runbook.md, "Resource limits: where the figures come from", lists the
figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from audit.checkpoints import CheckpointKeys
from svckit.identity import Identity

from testkit import bigtrail
from testkit.cgroups import memory_bytes
from testkit.client import SignedApi
from testkit.fixtures import (
    REPO_ROOT,
    Caller,
    ServiceProcess,
    ServiceRedis,
    create_migrated_database,
    drop_database,
    migrate_schema,
    runtime_url,
    user,
)
from tests.packaging.pods import wait_for
from tests.packaging.support import RELEASE, Obj, pod_spec, rendered_scenario

pytestmark = pytest.mark.e2e

MiB = 1 << 20
#: the share of the memory limit a worst case may reach (as test_pods_under_limits' MARGIN)
SHARE = 0.85
#: the trail: records, the newest of them with the largest details, a checkpoint every CHECKPOINT
RECORDS = 200_000
FAT = 5_000
CHECKPOINT = 10_000
AUDITOR = user("carol", "read:audit", name="Carol")
SERVICES = REPO_ROOT / "services"
AUDIT_PACKAGE = SERVICES / "audit" / "audit"


def rendered_container(component: str) -> Obj:
    """The component's container as the chart renders it by default (the ``minimal`` scenario: its
    defaults, and only what has none)."""
    for obj in rendered_scenario("minimal"):
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == f"{RELEASE}-timesheets-{component}":
            spec = pod_spec(obj)
            assert spec is not None
            (container,) = [c for c in spec["containers"] if c["name"] == component]
            found: Obj = container
            return found
    raise AssertionError(f"no Deployment of {component}")


def rendered_limit(component: str) -> int:
    """``resources.limits.memory`` of the component's container, in bytes."""
    return memory_bytes(rendered_container(component)["resources"]["limits"]["memory"])


def rendered_env(component: str) -> dict[str, str]:
    """The component's container env (the literal values; those from Secrets left out)."""
    return {e["name"]: e["value"] for e in rendered_container(component).get("env", []) if "value" in e}


def peak_bytes(pid: int) -> int:
    """The process's peak resident set since it started or since :func:`reset_peak`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Trail:
    owner: str  # the owner's URL
    env: dict[str, str]
    keys: str
    head: str
    limit: int


@pytest.fixture(scope="module")
def trail(identity_keys: dict[str, str], service_env: dict[str, str]) -> Iterator[Trail]:
    name = f"tsp_test_memory_{secrets.token_hex(4)}"
    keys = CheckpointKeys.generate("mem-1")

    async def build() -> tuple[str, str]:
        owner = await create_migrated_database(name, "audit", AUDIT_PACKAGE)
        head = await bigtrail.write(owner, RECORDS, fat=FAT, keys=keys, checkpoint_every=CHECKPOINT)
        return owner, head

    owner, head = asyncio.run(build())
    try:
        env = {
            **service_env,
            "DATABASE_URL": runtime_url(owner, "audit"),
            "AUDIT_CHECKPOINT_KEYS": keys,
            "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0",
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
            # the walk's memory is measured, not its time: a walk on request runs to its end here
            "AUDIT_VERIFY_TIMEOUT_SECONDS": "600",
            "DB_STATEMENT_TIMEOUT_SECONDS": "600",
            "LOG_LEVEL": "WARNING",
        }
        yield Trail(owner, env, keys, head, rendered_limit("audit"))
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture
def audit(trail: Trail) -> Iterator[ServiceProcess]:
    process = ServiceProcess("audit", trail.env).start("/readyz", timeout=60)
    try:
        yield process
    finally:
        process.stop()


def pid_of(process: ServiceProcess) -> int:
    assert process.process is not None
    return process.process.pid


async def get(process: ServiceProcess, caller: Caller, path: str, **params: str) -> tuple[int, int, Any]:
    """``GET path`` as the auditor: its status, the peak resident set while it was served, the body."""
    pid = pid_of(process)
    api = SignedApi(process.url, caller, timeout=600)
    try:
        reset_peak(pid)
        reply = await api.call("GET", path, AUDITOR, params=params or None)
        return reply.status, peak_bytes(pid), reply.body
    finally:
        await api.close()


def within(trail: Trail, what: str, peak: int, idle: int) -> None:
    line = (
        f"{what}: peak {peak / MiB:.0f} MiB (idle {idle / MiB:.0f} MiB) of {trail.limit / MiB:.0f} MiB "
        f"({peak / trail.limit:.0%})"
    )
    print(line)
    assert peak <= trail.limit * SHARE, line


def test_whole_chain_verified_on_request(trail: Trail, audit: ServiceProcess, caller: Caller) -> None:
    idle = resident_bytes(pid_of(audit))
    status, peak, body = asyncio.run(get(audit, caller, "/audit/verify"))
    assert status == 200, body
    assert (body["ok"], body["checked"]) == (True, RECORDS), body
    within(trail, "GET /audit/verify (whole chain)", peak, idle)


def test_ranged_verification_on_request(trail: Trail, audit: ServiceProcess, caller: Caller) -> None:
    idle = resident_bytes(pid_of(audit))
    status, peak, body = asyncio.run(get(audit, caller, "/audit/verify", from_checkpoint="1"))
    assert status == 200, body
    assert body["ok"], body
    within(trail, "GET /audit/verify?from_checkpoint=1", peak, idle)


def test_largest_listing_page(trail: Trail, audit: ServiceProcess, caller: Caller) -> None:
    idle = resident_bytes(pid_of(audit))
    status, peak, body = asyncio.run(get(audit, caller, "/audit/events", limit="100"))
    assert status == 200, body
    assert len(body["items"]) == 100
    size = len(json.dumps(body, ensure_ascii=False).encode())
    within(trail, f"GET /audit/events?limit=100 (largest details, {size / MiB:.1f} MiB answered)", peak, idle)


def test_background_verifiers_full_walk(trail: Trail) -> None:
    """The background verifier's first run is a full walk (unbounded in time: it is one per replica)."""
    env = {**trail.env, "AUDIT_VERIFY_INTERVAL_SECONDS": "1", "LOG_LEVEL": "INFO"}
    process = ServiceProcess("audit", env).start("/readyz", timeout=60)
    try:
        pid = pid_of(process)
        idle = resident_bytes(pid)
        reset_peak(pid)

        def walked() -> bool:
            assert process.process is not None
            assert process.process.poll() is None, process.logs()
            return "audit chain verified" in process.logs(None)

        wait_for(walked, 120, "the background verifier's first walk")
        peak = peak_bytes(pid)
    finally:
        process.stop()
    assert f'"checked": {RECORDS}' in process.logs(None) or f'"checked":{RECORDS}' in process.logs(None), (
        process.logs()
    )
    within(trail, "background verifier, full walk", peak, idle)


#: runs ``python -m audit`` and writes its peak resident set (VmHWM: this process's, since its exec; the
#: rusage of a child would count the pages it shared with this test's process before the exec) to $1
OFFLINE = """
import runpy, sys
report, sys.argv = sys.argv[1], ["audit", *sys.argv[2:]]
try:
    runpy.run_module("audit", run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(report, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
"""


def offline(trail: Trail, tmp_path: Path, *args: str) -> tuple[int, int, bytes]:
    """``python -m audit <args>`` as an operator runs it: exit code, peak resident set, output."""
    env = {
        **os.environ,
        "DATABASE_URL": runtime_url(trail.owner, "audit"),
        "AUDIT_CHECKPOINT_KEYS": trail.keys,
    }
    report = tmp_path / "peak"
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE, str(report), *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return done.returncode, int(report.read_text()) * 1024, done.stdout + done.stderr


def test_offline_verification(trail: Trail, tmp_path: Path) -> None:
    code, peak, out = offline(trail, tmp_path, "verify")
    assert code == 0, out[-2000:]
    within(trail, "python -m audit verify (whole chain)", peak, 0)


def test_offline_export(trail: Trail, tmp_path: Path) -> None:
    code, peak, out = offline(trail, tmp_path, "export-checkpoints")
    assert code == 0, out[-2000:]
    assert out.count(b'"jws"') == RECORDS // CHECKPOINT, out[-2000:]
    within(trail, "python -m audit export-checkpoints", peak, 0)


#: reads ``$1`` as ``--checkpoints`` does; writes the peak resident set before and after to ``$2``
READ_RETAINED = """
import sys
from pathlib import Path
from audit.offline import read_retained

def peak():
    with open("/proc/self/status") as status:
        return next(line for line in status if line.startswith("VmHWM:")).split()[1]

before = peak()
retained = read_retained(Path(sys.argv[1]))
assert len(retained) == int(sys.argv[3]), len(retained)
Path(sys.argv[2]).write_text(before + " " + peak())
"""
#: checkpoints in the sample file (its cost per checkpoint is extrapolated to a year's)
SAMPLE = 20_000


def test_a_years_retained_checkpoints_are_read_within_the_audit_pods_limit(tmp_path: Path) -> None:
    """``python -m audit verify --checkpoints FILE``: the copies an auditor retained outside the
    database (the export CronJob's lines, runbook "Audit checkpoint keys") grow by one a checkpoint
    interval. An operator runs the command in the audit pod or a Job like it: a year's copies must be
    read within the pod's limit. Measured on a sample file, per checkpoint, and extrapolated."""
    interval = float(rendered_env("audit").get("AUDIT_CHECKPOINT_INTERVAL_SECONDS", "60"))
    per_year = int(365 * 24 * 3600 / interval)
    keys = CheckpointKeys.parse(CheckpointKeys.generate("mem-1"))
    path = tmp_path / "retained.jsonl"
    prev = "0" * 64
    with path.open("w") as out:
        for number in range(1, SAMPLE + 1):
            checkpoint = keys.sign(number, number * 100, "a" * 64, bigtrail.START, prev)
            prev = checkpoint.digest
            out.write(json.dumps({**checkpoint.log_fields(), "jws": checkpoint.jws}, sort_keys=True) + "\n")
    report = tmp_path / "peak"
    done = subprocess.run(
        [sys.executable, "-c", READ_RETAINED, str(path), str(report), str(SAMPLE)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = (int(kib) * 1024 for kib in report.read_text().split())
    each = (after - before) / SAMPLE
    year = before + each * per_year
    limit = rendered_limit("audit")
    line = (
        f"--checkpoints: {each:.0f} bytes a checkpoint ({SAMPLE} read: peak {after / MiB:.0f} MiB from "
        f"{before / MiB:.0f}); a year at one per {interval:g} s ({per_year}): {year / MiB:.0f} MiB of "
        f"{limit / MiB:.0f} MiB ({year / limit:.0%})"
    )
    print(line)
    assert year <= limit * SHARE, line


# --- the largest pages of the timesheets listing and the approvals queue ------------------------------

#: entries of one owner, all submitted, every note at its longest (2,000 characters, 3 bytes each)
ENTRIES = 50_000
SEED_ENTRIES = """
INSERT INTO timesheets.entries (id, owner_issuer, owner_subject, owner_name, date, project, hours, notes,
                                source)
SELECT gen_random_uuid(), 'http://localhost:9000/', 'alice', 'Alice', DATE '2020-01-01' + (g % 3650),
       'Project ' || (g % 100), 0.25, repeat(U&'\\20AC', 2000), 'api'
FROM generate_series(1, $1::int) AS g
"""
APPROVER = user("bob", "approve:timesheets", name="Bob")
OWNER = user("alice", "read:timesheets", name="Alice")
DOMAIN = ("timesheets", "approvals")


@dataclass
class Domain:
    timesheets: ServiceProcess
    approvals: ServiceProcess


@pytest.fixture(scope="module")
def domain(service_env: dict[str, str], service_redis: ServiceRedis) -> Iterator[Domain]:
    name = f"tsp_test_memory_domain_{secrets.token_hex(4)}"

    async def build() -> str:
        owner = await create_migrated_database(name, "timesheets", SERVICES / "timesheets" / "timesheets")
        await migrate_schema(owner, "approvals", SERVICES / "approvals" / "approvals")
        conn = await asyncpg.connect(owner)
        try:
            await conn.execute(SEED_ENTRIES, ENTRIES)
            await conn.execute("ANALYZE timesheets.entries")
        finally:
            await conn.close()
        return owner

    owner = asyncio.run(build())
    common = {**service_env, "AUDIT_URL": "http://127.0.0.1:9", "LOG_LEVEL": "WARNING"}
    timesheets = ServiceProcess(
        "timesheets",
        {
            **common,
            "DATABASE_URL": runtime_url(owner, "timesheets"),
            "REDIS_URL": service_redis.url("timesheets"),
        },
    )
    approvals = ServiceProcess(
        "approvals",
        {
            **common,
            "DATABASE_URL": runtime_url(owner, "approvals"),
            "REDIS_URL": service_redis.url("approvals"),
            "TIMESHEETS_URL": timesheets.url,
        },
    )
    try:
        timesheets.start("/readyz", timeout=60)
        approvals.start("/readyz", timeout=60)
        yield Domain(timesheets, approvals)
    finally:
        approvals.stop()
        timesheets.stop()
        asyncio.run(drop_database(name))


def largest_page(process: ServiceProcess, caller: Caller, path: str, who: Identity) -> tuple[int, Any]:
    async def call() -> tuple[int, Any]:
        api = SignedApi(process.url, caller, timeout=60)
        try:
            reply = await api.call("GET", path, who, params={"limit": "100"})
            return reply.status, reply.body
        finally:
            await api.close()

    return asyncio.run(call())


def page_within(component: str, what: str, peak: int, idle: int, size: int) -> None:
    limit = rendered_limit(component)
    line = (
        f"{what} ({size / MiB:.1f} MiB answered): {component} peak {peak / MiB:.0f} MiB "
        f"(idle {idle / MiB:.0f} MiB) of {limit / MiB:.0f} MiB ({peak / limit:.0%})"
    )
    print(line)
    assert peak <= limit * SHARE, line


def test_largest_timesheets_listing_page(domain: Domain, caller: Caller) -> None:
    pid = pid_of(domain.timesheets)
    idle = resident_bytes(pid)
    reset_peak(pid)
    status, body = largest_page(domain.timesheets, caller, "/timesheets", OWNER)
    assert status == 200, body
    assert len(body["items"]) == 100
    size = len(json.dumps(body, ensure_ascii=False).encode())
    page_within("timesheets", "GET /timesheets?limit=100", peak_bytes(pid), idle, size)


def test_largest_approvals_queue_page(domain: Domain, caller: Caller) -> None:
    pids = {"approvals": pid_of(domain.approvals), "timesheets": pid_of(domain.timesheets)}
    idle = {component: resident_bytes(pid) for component, pid in pids.items()}
    for pid in pids.values():
        reset_peak(pid)
    status, body = largest_page(domain.approvals, caller, "/approvals", APPROVER)
    assert status == 200, body
    assert len(body["items"]) == 100
    size = len(json.dumps(body, ensure_ascii=False).encode())
    for component, pid in pids.items():
        page_within(component, "GET /approvals?limit=100", peak_bytes(pid), idle[component], size)
