"""Upgrading FROM the previous release: `helm upgrade` runs the current migrations (the pre-upgrade
Job) on a database the previous release migrated and used, and then the previous pods and the new ones
serve side by side on it (docs/upgrades.md).

``test_previous_release.py`` migrates a *fresh* database with the current code and runs the previous
services on it: that is a rollback after a fresh install. This module starts where a real deployment
is: the database as the previous release's own ``migrate`` left it — and then the new pods start on
it, each as its own database role and Redis user.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.client import SignedApi
from testkit.fixtures import (
    Caller,
    IsolatedEnv,
    ServiceProcess,
    ServiceRedis,
    migrate_role_env,
    new_identity_keys,
    user,
)

from .test_previous_release import REPO, SERVICES, previous_release, previous_tree, running

__all__ = ["previous_tree"]  # the fixture, shared with test_previous_release

pytestmark = pytest.mark.e2e

ALICE = user("alice", "read:timesheets", "create:timesheets", "delete:timesheets", name="Alice")
BOB = user("bob", "read:timesheets", "approve:timesheets", name="Bob")
CAROL = user("carol", "read:audit", name="Carol")


def run_migrate(
    service: str, env: dict[str, str], pythonpath: str | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"PYTHONPATH": pythonpath} if pythonpath is not None else {}
    return subprocess.run(
        [sys.executable, "-m", service, "migrate"],
        env={**os.environ, **env, **extra},
        cwd=REPO if pythonpath is None else "/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def upgraded(previous_tree: Path, isolated_env: IsolatedEnv) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A database the previous release's ``migrate`` built, then the current ``migrate`` run on it:
    its environment, and the current migrations that failed (by service: the last line of stderr)."""
    env = {**isolated_env("upfromprev"), "IDENTITY_KEYS": new_identity_keys("k1")}
    for service in SERVICES:
        old = os.pathsep.join(
            [str(previous_tree / "services" / "kit"), str(previous_tree / "services" / service)]
        )
        result = run_migrate(service, env, old)
        assert result.returncode == 0, f"previous release {previous_release()}: {result.stderr}"
    failures = {}
    for service in SERVICES:
        result = run_migrate(service, {**env, **migrate_role_env(service)})
        if result.returncode != 0:
            failures[service] = result.stderr.strip().splitlines()[-1:]
    return env, failures


def test_the_current_migrations_run_on_a_database_the_previous_release_migrated(
    upgraded: tuple[dict[str, str], dict[str, list[str]]],
) -> None:
    """The pre-upgrade migration Job of `helm upgrade` from the previous release: the previous code's
    `migrate` built the schemas (as its own Job did at install), the current code's `migrate` must take
    them forward. A failing Job aborts the upgrade: no new release can be installed over the old one."""
    _, failures = upgraded
    assert failures == {}


@pytest.fixture(scope="module")
def current_services(
    upgraded: tuple[dict[str, str], dict[str, list[str]]], service_redis: ServiceRedis
) -> Iterator[dict[str, ServiceProcess]]:
    """The current release's services — the new pods — on the upgraded database, each as its own
    runtime role and its own Redis user, as the chart runs them."""
    env, failures = upgraded
    if failures:
        pytest.fail(f"the current migrations failed: {failures}")
    with running(env, service_redis) as processes:
        yield processes


async def test_the_current_release_serves_on_the_upgraded_database(
    current_services: dict[str, ServiceProcess], caller: Caller
) -> None:
    """After the upgrade: create, approve (approvals → timesheets, a signed call whose replay memory is
    in Redis), refuse to delete what is approved, and see both on the audit trail (the outbox relay,
    timesheets → audit) — every signed request checked against Redis under the receiver's own user."""
    timesheets, approvals, audit = (SignedApi(current_services[name].url, caller) for name in SERVICES)
    try:
        created = await timesheets.call(
            "POST", "/timesheets", ALICE, json={"date": "2026-12-02", "project": "upgrade", "hours": 3}
        )
        assert created.status == 201, created.text
        entry = created.body["id"]
        decided = await approvals.call("PUT", f"/approvals/{entry}", BOB, json={"decision": "approved"})
        assert decided.status == 200, decided.text
        refused = await timesheets.call("DELETE", f"/timesheets/{entry}", ALICE)
        assert refused.status == 409, refused.text
        deadline = time.monotonic() + 30
        while True:  # the outbox relays deliver in the background
            trail = await audit.call("GET", "/audit/events", CAROL, params={"resource_id": entry})
            assert trail.status == 200, trail.text
            actions = sorted(item["action"] for item in trail.body["items"])
            if len(actions) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert "timesheet.created" in actions, actions
        assert any(action.endswith("decided") for action in actions), actions
        verified = await audit.call("GET", "/audit/verify", CAROL)
        assert verified.status == 200, verified.text
        assert verified.body["ok"], verified.text
    finally:
        for client in (timesheets, approvals, audit):
            await client.close()
    logs = "".join(process.logs() for process in current_services.values())
    assert "NOPERM" not in logs
    assert "Traceback" not in logs
