"""Upgrading FROM the previous release: `helm upgrade` runs the current migrations (the pre-upgrade
Job) on a database the previous release migrated and used, and then the previous pods and the new ones
serve side by side on it (docs/upgrades.md).

``test_previous_release.py`` migrates a *fresh* database with the current code and runs the previous
services on it: that is a rollback after a fresh install. This module starts where a real deployment
is: the database as the previous release's own ``migrate`` left it and its services wrote to it (as
that release ran them: its own kit signing in its own identity contract, its runtime roles if it had
them) — an approved entry, a deleted one, their audit records. Then the current ``migrate`` runs on it,
and the new pods start, each as its own database role and Redis user, read what the previous release
wrote (its audit records in the same hash chain as theirs) and write beside it. The previous release
is chosen as in ``test_previous_release.py`` (``$PREVIOUS_RELEASE``, a ``v*`` tag, ``BASELINE``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

from .test_previous_release import (
    EVERYTHING_WORKED,
    REPO,
    SERVICES,
    drive,
    has_runtime_roles,
    previous_release,
    previous_tree,
    running,
)

__all__ = ["previous_release", "previous_tree"]  # the fixtures, shared with test_previous_release

pytestmark = pytest.mark.e2e
_databases = itertools.count()  # isolated databases' labels, one per previous release

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
def upgraded(
    previous_release: str, previous_tree: Path, isolated_env: IsolatedEnv, service_redis: ServiceRedis
) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any]]:
    """A database the previous release's ``migrate`` built and its services wrote to, then the current
    ``migrate`` run on it: its environment, the current migrations that failed (by service: the last
    line of stderr), and what the previous release wrote (``previous_client.py``'s report, its ids)."""
    env = {**isolated_env(f"upfromprev{next(_databases)}"), "IDENTITY_KEYS": new_identity_keys("k1")}
    for service in SERVICES:
        old = os.pathsep.join(
            [str(previous_tree / "services" / "kit"), str(previous_tree / "services" / service)]
        )
        result = run_migrate(service, {**env, **migrate_role_env(service)}, old)
        assert result.returncode == 0, f"previous release {previous_release}: {result.stderr}"
    # as the previous release ran: its services, its roles (or the owner), its gateway's signatures
    with running(env, service_redis, previous_tree, roles=has_runtime_roles(previous_tree)) as processes:
        written = drive(previous_tree, processes, env)
    # the decomposed name as releases before 47837cf stored it (from 47837cf on, a release stores new
    # names in NFC itself): what 0008's backfill must rewrite. A previous release that already has
    # 0008 stores every write in NFC through its trigger (checked: the same statement comes back NFC),
    # and the backfill has nothing left to do after the upgrade.
    decomposed = written["ids"]["decomposed"]
    has_nfc_trigger = (
        previous_tree / "services/timesheets/timesheets/migrations/0008_project_nfc.sql"
    ).exists()
    spelled = subprocess.run(
        [
            "psql",
            env["DATABASE_URL"],
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            "UPDATE timesheets.entries SET project = 'Cafe' || U&'\\0301' "
            f"WHERE id = '{decomposed}' RETURNING project IS NFC NORMALIZED",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert spelled.stdout.split() == ["t" if has_nfc_trigger else "f", "UPDATE", "1"], spelled.stderr
    failures = {}
    for service in SERVICES:
        result = run_migrate(service, {**env, **migrate_role_env(service)})
        if result.returncode != 0:
            failures[service] = result.stderr.strip().splitlines()[-1:]
    return env, failures, written


def test_the_previous_release_wrote_before_the_upgrade(
    upgraded: tuple[dict[str, str], dict[str, list[str]], dict[str, Any]],
) -> None:
    """Guard: the data the upgrade is checked against is there — the previous release, on its own
    schema, created, approved and deleted entries and audited them (else the checks after the upgrade
    would pass on an empty database)."""
    _, _, written = upgraded
    assert written["seen"] == EVERYTHING_WORKED, json.dumps(written)


def test_the_current_migrations_run_on_a_database_the_previous_release_migrated(
    upgraded: tuple[dict[str, str], dict[str, list[str]], dict[str, Any]],
) -> None:
    """The pre-upgrade migration Job of `helm upgrade` from the previous release: the previous code's
    `migrate` built the schemas (as its own Job did at install), the current code's `migrate` must take
    them forward — with the previous release's rows in them. A failing Job aborts the upgrade: no new
    release can be installed over the old one."""
    _, failures, _ = upgraded
    assert failures == {}


@pytest.fixture(scope="module")
def current_services(
    upgraded: tuple[dict[str, str], dict[str, list[str]], dict[str, Any]], service_redis: ServiceRedis
) -> Iterator[dict[str, ServiceProcess]]:
    """The current release's services — the new pods — on the upgraded database, each as its own
    runtime role and its own Redis user, as the chart runs them."""
    env, failures, _ = upgraded
    if failures:
        pytest.fail(f"the current migrations failed: {failures}")
    with running(env, service_redis) as processes:
        yield processes


async def test_the_current_release_serves_on_the_upgraded_database(
    current_services: dict[str, ServiceProcess],
    upgraded: tuple[dict[str, str], dict[str, list[str]], dict[str, Any]],
    caller: Caller,
) -> None:
    """After the upgrade: what the previous release wrote reads the same (its approved entry, still
    refused deletion; its deleted one, gone; their audit events); create, approve (approvals →
    timesheets, a signed call whose replay memory is in Redis), refuse to delete what is approved, and
    see both on the audit trail (the outbox relay, timesheets → audit), with the hash chain verifying
    across the previous release's records and the current one's — every signed request checked
    against Redis under the receiver's own user."""
    previous = upgraded[2]["ids"]
    assert previous, "the previous release wrote nothing (test_the_previous_release_wrote_before_the_upgrade)"
    timesheets, approvals, audit = (SignedApi(current_services[name].url, caller) for name in SERVICES)
    try:
        old = await timesheets.call("GET", f"/timesheets/{previous['approved']}", ALICE)
        assert old.status == 200, old.text
        assert (old.body["status"], old.body["hours"], old.body["notes"]) == (
            "approved",
            2.5,
            "written by the previous release",
        ), old.text
        refused = await timesheets.call("DELETE", f"/timesheets/{previous['approved']}", ALICE)
        assert refused.status == 409, refused.text
        gone = await timesheets.call("GET", f"/timesheets/{previous['deleted']}", ALICE)
        assert gone.status == 404, gone.text
        trail = await audit.call("GET", "/audit/events", CAROL, params={"resource_id": previous["approved"]})
        assert trail.status == 200, trail.text
        old_actions = sorted(item["action"] for item in trail.body["items"])
        assert "timesheet.created" in old_actions, old_actions
        assert any(action.endswith("decided") for action in old_actions), old_actions

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
    logs = "".join(process.logs(tail=None) for process in current_services.values())
    assert "NOPERM" not in logs
    assert "Traceback" not in logs


async def test_a_project_name_the_previous_release_stored_decomposed_is_found_by_the_filter(
    current_services: dict[str, ServiceProcess],
    upgraded: tuple[dict[str, str], dict[str, list[str]], dict[str, Any]],
    caller: Caller,
) -> None:
    """The previous release stored "Cafe" + U+0301 as sent; the current release reads its project
    filter in NFC ("Caf\u00e9"). Timesheets' 0008 rewrote the row to NFC: the filter finds it, and
    the entry reads as one project with the ones written since."""
    decomposed = upgraded[2]["ids"]["decomposed"]
    timesheets = SignedApi(current_services["timesheets"].url, caller)
    try:
        found = await timesheets.call("GET", "/timesheets", ALICE, params={"project": "Caf\u00e9"})
        assert found.status == 200, found.text
        assert [item["id"] for item in found.body["items"]] == [decomposed], found.text
        assert found.body["items"][0]["project"] == "Caf\u00e9"
    finally:
        await timesheets.close()
