"""The audit schema restored to an earlier point than the producers: what the backup lacks is lost.

The producers delete an outbox row once the audit service stored it, so records stored after the
backup exist nowhere else after the restore, and the restored trail is consistent with itself: the
chain verifies, the checkpoints in the database verify. Two things outside the database know the
trail was longer: the checkpoints retained outside it (docs/runbook.md, "Audit checkpoint keys"),
which ``python -m audit verify --checkpoints`` holds the restored trail to (the report names the
first record lost and the newest checkpoint the database lacks — the finding to record in the
incident, since no command can bring them back); and the running service's watermark in Redis
(:mod:`audit.watermark`), the newest checkpoint signed, kept across the restore. The service started
on the restored trail reports the rollback (``audit_trail_rolled_back`` 1: the critical alert
TimesheetsAuditTrailRolledBack) while it keeps serving, and its signer refuses to sign the numbers
already signed for the lost heads; ``python -m audit accept-restore`` records the operator's
acceptance on the trail, the signal clears and checkpoints go on under the next unused number.

Real processes: the audit service (signing checkpoints every second) with its own Redis user,
``pg_dump`` / ``pg_restore`` of its schema, the offline ``python -m audit verify`` with the retained
checkpoints and pinned keys, ``python -m audit accept-restore`` with the service's environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from svckit.identity import Identity

from testkit.backup import dump_schema, restore_schema, service_command
from testkit.client import SignedApi, ingest_counts
from testkit.clihost import CliHost
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
    assert ingest_counts(reply.body) == {"accepted": count, "duplicates": 0}, reply.text


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


def verify_offline(owner: str, tmp_path: Path, host: CliHost) -> tuple[int, dict[str, Any], str]:
    """The runbook's ``python -m audit verify --keys … --checkpoints …``, without the service's keys,
    in the session's command host (test_checkpoint_restart runs the verifier as a real process)."""
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_CHECKPOINT_KEYS"}
    env["DATABASE_URL"] = runtime_url(owner, "audit")
    keys, retained = str(tmp_path / "keys.json"), str(tmp_path / "retained.jsonl")
    result = service_command("audit", env, "verify", "--keys", keys, "--checkpoints", retained, host=host)
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


def metric(process: ServiceProcess, name: str, **labels: str) -> float | None:
    """The value of one series of the process's ``/metrics`` (None when it is not exported)."""
    with urllib.request.urlopen(process.metrics_url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def rolled_back(process: ServiceProcess, timeout: float = 15.0) -> float | None:
    """``audit_trail_rolled_back`` once the service has checked (NaN before its first check)."""
    return await wait_for(lambda: metric(process, "audit_trail_rolled_back"), 0.0, timeout=timeout)


async def wait_for(
    read: Callable[[], Any], at_least: float, *, exact: bool = False, timeout: float = 15.0
) -> float | None:
    """Poll ``read`` (a value or an awaitable of one) until it is a number ≥ ``at_least`` (or equal
    to it, ``exact``); the last value read when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if inspect.isawaitable(value):
            value = await value
        if (
            value is not None
            and not math.isnan(value)
            and (value == at_least if exact else value >= at_least)
        ):
            return float(value)
        if time.monotonic() > deadline:
            return None if value is None else float(value)
        await asyncio.sleep(0.2)


async def test_an_audit_restore_is_found_by_the_retained_checkpoints_and_by_the_running_service(
    isolated_env: IsolatedEnv,
    checkpoint_keys: str,
    service_redis: ServiceRedis,
    caller: Caller,
    tmp_path: Path,
    cli_host: CliHost,
) -> None:
    """The runbook's commands as they run in it; the first ``accept-restore`` is a real
    ``python -m audit`` process, the others run in the session's command host."""
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
            "audit", {"DATABASE_URL": runtime_url(owner, "audit")}, "export-checkpoints", host=cli_host
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
    status, report, stderr = verify_offline(owner, tmp_path, cli_host)
    assert status == 1, (report, stderr)
    assert report["ok"] is False
    assert report["first_bad"] == at_backup["seq"] + 1, report  # the first record lost
    assert f"checkpoint {newest['number']} is missing from the database" in json.dumps(report), report

    # the service starts again on the restored trail: consistent with itself, so it still serves and
    # verifies — but its watermark in Redis (kept across the restore, as the runbook says) names a
    # newer checkpoint than the database holds: the running platform reports the rollback
    audit = ServiceProcess("audit", served, log_dir=tmp_path).start("/readyz")
    api = SignedApi(audit.url, caller)
    try:
        assert await rolled_back(audit) == 1.0
        with urllib.request.urlopen(audit.url + "/readyz", timeout=5) as ready:
            assert ready.status == 200  # the service stays ready: reads and ingestion keep working
        body = (await api.call("GET", "/audit/verify", AUDITOR)).body
        assert body["ok"] is True, body
        head = (await api.call("GET", "/audit/checkpoints?limit=1", AUDITOR)).body["items"][0]
        assert head["seq"] == at_backup["seq"]
        await append(api, 8, 4)  # the producers go on (ingestion is not stopped)
        refusals = await wait_for(lambda: metric(audit, "audit_checkpoints_total", outcome="rolled_back"), 2)
        assert refusals is not None
        assert refusals >= 2, refusals
        # the signer refuses: checkpoint numbers up to the watermark's were signed for other heads
        newest_now = (await api.call("GET", "/audit/checkpoints?limit=1", AUDITOR)).body["items"][0]
        assert newest_now["number"] == at_backup["number"], newest_now
        assert "audit trail rolled back" in audit.logs()
        assert verify_offline(owner, tmp_path, cli_host)[0] == 1, "the old copies keep reporting the loss"

        # the runbook: the operator records the loss in the incident and accepts the restored trail
        accepted = service_command("audit", served, "accept-restore", "--reason", "INC-7: audit restore")
        assert accepted.returncode == 0, accepted.stderr
        report = json.loads(accepted.stdout)
        assert report["restored"]["number"] == at_backup["number"], report
        assert report["watermark"]["number"] == newest["number"], report
        assert report["next_number"] == newest["number"] + 1, report
        assert await wait_for(lambda: rolled_back(audit), 0.0, exact=True) == 0.0
        assert "audit trail rollback cleared" in audit.logs()
        # checkpoints go on under the next number never signed, chained to the restored newest
        signed = await signed_up_to(api, at_backup["seq"] + 5)  # 4 records and the acceptance
        assert signed["number"] == newest["number"] + 1, signed
        assert signed["prev"] == hashlib.sha256(at_backup["jws"].encode()).hexdigest()
        events = (await api.call("GET", "/audit/events?action=audit.restore_accepted", AUDITOR)).body
        (record,) = events["items"]
        assert record["details"]["reason"] == "INC-7: audit restore"
        assert record["details"]["lost"]["checkpoints"] == [at_backup["number"] + 1, newest["number"]]
        assert (await api.call("GET", "/audit/verify", AUDITOR)).body["ok"] is True
        # a second run finds nothing to accept
        again = service_command(
            "audit", served, "accept-restore", "--reason", "INC-7: audit restore", host=cli_host
        )
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["state"] == "consistent"
        # the runbook: the copies of before the restore are archived with the incident, and the
        # retained copies start again from the restored trail's checkpoints
        (tmp_path / "retained.jsonl").rename(tmp_path / "retained-before-restore.jsonl")
        exported = service_command(
            "audit", {"DATABASE_URL": runtime_url(owner, "audit")}, "export-checkpoints", host=cli_host
        )
        (tmp_path / "retained.jsonl").write_text(exported.stdout)
        status, report, stderr = verify_offline(owner, tmp_path, cli_host)
        assert status == 0, (report, stderr)
    finally:
        await api.close()
        audit.stop()
