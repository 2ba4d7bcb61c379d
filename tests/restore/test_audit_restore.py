"""The audit schema restored to an earlier point than the producers: what the backup lacks is lost.

The producers delete an outbox row once the audit service stored it, so records stored after the
backup exist nowhere else after the restore, and the restored trail is consistent with itself: the
chain verifies, the checkpoints in the database verify, the service's own verification and signer see
nothing wrong. Only the checkpoints retained outside the database (docs/runbook.md, "Audit checkpoint
keys") know the trail was longer. docs/runbook.md ("Backup and restore") therefore has the operator
verify the restored trail against the retained copies *before* the service starts again: the report
names the newest checkpoint the database lacks, i.e. how many records (and up to which signed head)
were lost — the finding to record in the incident, since no command can bring them back.

Real processes: the audit service (signing checkpoints every second), ``pg_dump`` / ``pg_restore`` of
its schema, the offline ``python -m audit verify`` with the retained checkpoints and pinned keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from svckit.identity import Identity

from testkit.backup import dump_schema, restore_schema, service_command
from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    IsolatedEnv,
    ServiceProcess,
    ServiceRedis,
    migrate_schema,
    runtime_url,
    user,
)

REPO = Path(__file__).resolve().parents[2]
TIMESHEETS = Identity.service("timesheets")
AUDITOR = user("carol", "read:audit")


def event(n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "timesheets",
        "actor": {"issuer": "http://localhost:9000/", "subject": "alice", "kind": "user", "client_id": "spa"},
        "action": "timesheet.created",
        "resource": {"type": "timesheet", "id": str(uuid.uuid4())},
        "outcome": "success",
        "details": {"n": n},
    }


async def append(api: SignedApi, first: int, count: int) -> None:
    reply = await api.call(
        "POST", "/internal/events", TIMESHEETS, json={"events": [event(first + n) for n in range(count)]}
    )
    assert reply.body == {"accepted": count, "duplicates": 0}, reply.text


async def signed_up_to(api: SignedApi, seq: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = await api.call("GET", "/audit/checkpoints?limit=1", AUDITOR)
        items = reply.body["items"]
        if items and items[0]["seq"] >= seq:
            newest: dict[str, Any] = items[0]
            return newest
        assert time.monotonic() < deadline, f"no checkpoint reached seq {seq}"
        await asyncio.sleep(0.3)


def export_checkpoints(owner: str) -> subprocess.CompletedProcess[str]:
    """The runbook's ``python -m audit export-checkpoints`` (the CronJob that retains copies)."""
    return service_command("audit", {"DATABASE_URL": runtime_url(owner, "audit")}, "export-checkpoints")


def verify_offline(owner: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    """The runbook's ``python -m audit verify --keys … --checkpoints …``, without the service's keys."""
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_CHECKPOINT_KEYS"}
    env["DATABASE_URL"] = runtime_url(owner, "audit")
    keys, retained = str(tmp_path / "keys.json"), str(tmp_path / "retained.jsonl")
    result = service_command("audit", env, "verify", "--keys", keys, "--checkpoints", retained)
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


async def test_an_audit_restore_is_found_by_the_retained_checkpoints_before_the_service_starts(
    isolated_env: IsolatedEnv,
    checkpoint_keys: str,
    service_redis: ServiceRedis,
    caller: Caller,
    tmp_path: Path,
) -> None:
    env = isolated_env("restore_audit")
    owner = env["DATABASE_URL"]
    await migrate_schema(owner, "audit", REPO / "services" / "audit" / "audit")
    served = {
        **service_redis.runtime_env(env, "audit"),
        "AUDIT_CHECKPOINT_KEYS": checkpoint_keys,
        "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",
    }
    audit = ServiceProcess("audit", served, log_dir=tmp_path).start("/readyz")
    api = SignedApi(audit.url, caller)
    try:
        await append(api, 0, 4)
        at_backup = await signed_up_to(api, 4)
        backup = dump_schema(owner, "audit", tmp_path / "audit.dump")
        await append(api, 4, 4)  # stored after the backup; the producers' outbox rows are deleted
        newest = await signed_up_to(api, 8)
        # the auditor's copies outside the database, as the runbook's CronJob keeps them
        exported = service_command(
            "audit", {"DATABASE_URL": runtime_url(owner, "audit")}, "export-checkpoints"
        )
        assert exported.returncode == 0, exported.stderr
        (tmp_path / "retained.jsonl").write_text(exported.stdout)
        jwks = (await api.call("GET", "/audit/checkpoint-keys", AUDITOR)).body
        (tmp_path / "keys.json").write_text(json.dumps(jwks))
    finally:
        await api.close()
        audit.stop()

    restore_schema(owner, backup)
    # the runbook's step before starting the service again: the restored trail against the copies
    status, report, stderr = verify_offline(owner, tmp_path)
    assert status == 1, (report, stderr)
    assert report["ok"] is False
    assert report["first_bad"] == at_backup["seq"] + 1, report  # the first record lost
    assert f"checkpoint {newest['number']} is missing from the database" in json.dumps(report), report

    # the service itself sees a consistent trail and goes on from the backup's head: no alert
    audit = ServiceProcess("audit", served, log_dir=tmp_path).start("/readyz")
    api = SignedApi(audit.url, caller)
    try:
        body = (await api.call("GET", "/audit/verify", AUDITOR)).body
        assert body["ok"] is True, body
        head = (await api.call("GET", "/audit/checkpoints?limit=1", AUDITOR)).body["items"][0]
        assert head["seq"] == at_backup["seq"]
        await append(api, 8, 4)  # the producers go on; the trail forks from the retained copies
        await signed_up_to(api, 8)
        assert verify_offline(owner, tmp_path)[0] == 1, "the old copies keep reporting the fork"
        # the runbook: the copies of before the restore are archived with the incident, and the
        # retained copies start again from the restored trail's checkpoints
        (tmp_path / "retained.jsonl").rename(tmp_path / "retained-before-restore.jsonl")
        exported = service_command(
            "audit", {"DATABASE_URL": runtime_url(owner, "audit")}, "export-checkpoints"
        )
        (tmp_path / "retained.jsonl").write_text(exported.stdout)
        status, report, stderr = verify_offline(owner, tmp_path)
        assert status == 0, (report, stderr)
    finally:
        await api.close()
        audit.stop()
