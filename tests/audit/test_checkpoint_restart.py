"""The reported attack end to end, against real processes: two audit replicas sign checkpoints as the
trail grows; then the database owner changes a record, recomputes the chain and re-enables the
trigger; every replica is restarted (nothing of what they knew survives in memory). Verification —
through the service's API and with the offline command, which pins the public keys and reads
checkpoints retained outside the database — reports the break and its first bad position.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from svckit.identity import Identity

from testkit.auditevents import make_event
from testkit.client import SignedApi, ingest_counts
from testkit.clihost import CliHost, run_module
from testkit.fixtures import (
    Caller,
    IsolatedEnv,
    ServiceProcess,
    ServiceRedis,
    migrate_schema,
    runtime_url,
    user,
)
from testkit.tamper import rewrite_history

REPO = Path(__file__).resolve().parents[2]
AUDIT_PACKAGE = REPO / "services" / "audit" / "audit"
TIMESHEETS = Identity.service("timesheets")
AUDITOR = user("carol", "read:audit")


class Replicas:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[ServiceProcess] = []

    def start(self) -> None:
        self.processes = [ServiceProcess("audit", self.env, log_dir=self.logs) for _ in range(2)]
        for process in self.processes:
            process.start("/readyz")

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def text(self) -> str:
        return "".join(p.logs() for p in self.processes)


async def checkpoints(api: SignedApi) -> list[dict[str, Any]]:
    reply = await api.call("GET", "/audit/checkpoints?limit=100", AUDITOR)
    assert reply.status == 200, reply.text
    items: list[dict[str, Any]] = reply.body["items"]
    return items


async def signed_up_to(api: SignedApi, seq: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = await checkpoints(api)
        if items and items[0]["seq"] >= seq:
            return items
        assert time.monotonic() < deadline, f"no checkpoint reached seq {seq}: {items[:1]}"
        await asyncio.sleep(0.3)


@pytest.fixture
async def migrated(isolated_env: IsolatedEnv) -> dict[str, str]:
    """A database of the test's own with the audit schema (and its runtime role)."""
    env = isolated_env("checkpoints")
    await migrate_schema(env["DATABASE_URL"], "audit", AUDIT_PACKAGE)
    return env


@pytest.fixture
async def stack(
    migrated: dict[str, str], checkpoint_keys: str, service_redis: ServiceRedis, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, str], Replicas]]:
    env = migrated
    served = {
        **service_redis.runtime_env(env, "audit"),
        "AUDIT_CHECKPOINT_KEYS": checkpoint_keys,
        "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",
        "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
    }
    replicas = Replicas(served, tmp_path)
    replicas.start()
    try:
        yield env, replicas
    finally:
        replicas.stop()


def offline(env: dict[str, str], *args: str, host: CliHost | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m audit ARGS`` without the service's keys: a real process, or a run in the session's
    command host (:mod:`testkit.clihost`) for the cases besides the one real run of the verifier."""
    full = {
        **{
            k: v
            for k, v in os.environ.items()
            if k != "AUDIT_CHECKPOINT_KEYS" and not k.startswith("IDENTITY_KEYS")
        },
        **env,
    }
    return run_module("audit", full, *args, host=host)


async def test_a_rewritten_history_is_reported_after_every_replica_restarted(
    stack: tuple[dict[str, str], Replicas], caller: Caller, tmp_path: Path
) -> None:
    env, replicas = stack
    owner = env["DATABASE_URL"]
    api = SignedApi(replicas.processes[0].url, caller)
    try:
        for batch in range(3):  # three batches of 4, each signed before the next
            reply = await api.call(
                "POST",
                "/internal/events",
                TIMESHEETS,
                json={"events": [make_event(details={"n": batch * 4 + n}) for n in range(4)]},
            )
            assert ingest_counts(reply.body) == {"accepted": 4, "duplicates": 0}, reply.text
            signed = await signed_up_to(api, (batch + 1) * 4)
        assert signed[0]["seq"] == 12
        jwks = (await api.call("GET", "/audit/checkpoint-keys", AUDITOR)).body
        assert (await api.call("GET", "/audit/verify", AUDITOR)).body["ok"] is True
        # the auditor's copies, kept outside the database: the checkpoints as exported, the pinned keys
        exported = offline({"DATABASE_URL": runtime_url(owner, "audit")}, "export-checkpoints")
        assert exported.returncode == 0, exported.stderr
        (tmp_path / "retained.jsonl").write_text(exported.stdout)
        (tmp_path / "keys.json").write_text(json.dumps(jwks))
        last_good = next(c for c in signed if c["seq"] <= 5)  # the newest checkpoint before record 6
    finally:
        await api.close()

    # the attack: record 6 changed, 6..12 re-hashed, the trigger re-enabled — as the owner
    await rewrite_history(owner, 6, "actor_subject = 'mallory'")
    replicas.stop()
    replicas.start()  # every replica restarted: nothing survives in memory

    api = SignedApi(replicas.processes[1].url, caller)
    try:
        body = (await api.call("GET", "/audit/verify", AUDITOR)).body
        assert body["ok"] is False, body
        assert body["first_bad"] == last_good["seq"] + 1
        assert "differ from signed checkpoint" in body["reason"]
        assert body["checkpoints"]["signatures_valid"] is True
        assert body["checkpoints"]["chain_matches"] is False
        # the restarted signers try (interval 1 s) and refuse: each replica, seen in its log
        deadline = time.monotonic() + 15
        while not all("audit checkpoint refused" in p.logs() for p in replicas.processes):
            assert time.monotonic() < deadline, replicas.text()[-2000:]
            await asyncio.sleep(0.1)
        assert (await checkpoints(api))[0]["seq"] == 12  # nothing new was signed over the rewrite
    finally:
        await api.close()

    result = offline(
        {"DATABASE_URL": runtime_url(owner, "audit")},
        "verify",
        "--keys",
        str(tmp_path / "keys.json"),
        "--checkpoints",
        str(tmp_path / "retained.jsonl"),
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["first_bad"]) == (False, body["first_bad"])
    assert f"audit chain BROKEN at record {body['first_bad']}" in result.stderr


async def test_the_offline_command_needs_keys_and_says_what_is_wrong(
    migrated: dict[str, str], tmp_path: Path, cli_host: CliHost
) -> None:
    """Its usage errors and an unreachable database in the session's command host (the test above
    runs export-checkpoints and verify as real processes). The offline command needs the database
    only, not the service's replicas: none is started."""
    env = migrated
    url = runtime_url(env["DATABASE_URL"], "audit")
    missing = offline({"DATABASE_URL": url}, "verify", host=cli_host)
    assert missing.returncode == 2
    assert "give --keys FILE" in missing.stderr
    (tmp_path / "keys.json").write_text("{}")
    assert (
        offline(
            {"DATABASE_URL": url}, "verify", "--keys", str(tmp_path / "keys.json"), host=cli_host
        ).returncode
        == 2
    )
    unreachable = offline(
        {"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/x", "DB_CONNECT_TIMEOUT_SECONDS": "1"},
        "export-checkpoints",
        host=cli_host,
    )
    assert unreachable.returncode == 3, unreachable.stderr
