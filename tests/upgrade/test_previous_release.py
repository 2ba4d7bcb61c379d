"""Rollback safety: the PREVIOUS release's code runs against the schema the CURRENT code migrated.

Migrations only ever move forward (docs/upgrades.md: expand/contract). `helm upgrade` migrates
before the new pods start, and `helm rollback` does not un-migrate: the old pods come back against
the new schema — and during a rolling upgrade old and new pods serve side by side. So the previous
release must keep working on the current schema. This test takes the previous release's services
from git (``git archive``), migrates a fresh database with the current code (``python -m <svc>
migrate``, as the migration Job does), starts the previous timesheets, approvals and audit services
on it as processes, and drives them as their gateway would: create, list, approve, refuse to delete
an approved entry, delete a submitted one, and see every change reach the audit trail through the
previous code's outbox relay, with the chain verifying.

The previous release is what a ``helm rollback`` of this one goes back to: ``$PREVIOUS_RELEASE`` if set
(several, separated by spaces or commas, are each run: the tests are parametrized by release), else the
newest ``v*`` tag before this commit, else :data:`BASELINE`, the newest landed release — bump it to the
release's commit when a release lands (docs/upgrades.md, "Cutting a release"). The previous release's
services are driven by ``previous_client.py`` with that release's own kit, which signs the identity
headers in whichever contract that release speaks (detected in its kit: one shared key or pairwise
keys, the body bound or not), so an old release (:data:`FIRST_RELEASE`) runs as well as a recent one.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.fixtures import IsolatedEnv, ServiceProcess, ServiceRedis, migrate_role_env, new_identity_keys

REPO = Path(__file__).resolve().parents[2]
#: The newest landed release (main at ``be49c31``, chart 0.15.0): the one a ``helm rollback`` of the
#: next release goes back to. Bump it to the release's commit when a release lands (docs/upgrades.md),
#: or tag releases ``v*``: the newest such tag before this commit takes precedence.
BASELINE = "be49c312d5bd45b82544d457b4110f538119ff33"
#: The commit this release line started from: before timesheets' day cap (0005-0007), audit's later
#: migrations, runtime database roles and the identity contract's pairwise keys and body binding. Not
#: run by default: no rollback goes that far back, and with it beside BASELINE the two modules took
#: 127-153 s instead of 74-81 s (a loaded 2-core host). ``PREVIOUS_RELEASE="be49c31 c79eb8f"`` runs both.
FIRST_RELEASE = "c79eb8ff0a5c6bc7309e27a06f9e828a02282bd8"
SERVICES = ("timesheets", "approvals", "audit")
_databases = itertools.count()  # isolated databases' labels, one per previous release and module

#: What ``previous_client.py`` sees when the previous release works: its statuses, and that the entries
#: were listed, queued and audited with the chain verifying.
EVERYTHING_WORKED: dict[str, Any] = {
    "create": 201,
    "list": 200,
    "listed": True,
    "queue": 200,
    "queued": True,
    "approve": 200,
    "delete_approved": 409,
    "delete_submitted": 204,
    "audit": 200,
    "audited": True,
    "verify": 200,
    "chain_ok": True,
    "create_decomposed": 201,
}

pytestmark = pytest.mark.e2e


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False, timeout=60)


def previous_releases() -> list[str]:
    """``$PREVIOUS_RELEASE`` (one or more commits or tags, separated by spaces or commas: each is run
    in turn), else the newest ``v*`` tag before this commit (a tagged release checked out finds the
    one before it), else :data:`BASELINE`."""
    named = os.environ.get("PREVIOUS_RELEASE", "").replace(",", " ").split()
    if named:
        return named
    tag = git("describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD^")
    return [tag.stdout.decode().strip()] if tag.returncode == 0 else [BASELINE]


@pytest.fixture(scope="module", params=previous_releases(), ids=lambda rev: f"previous={rev[:12]}")
def previous_release(request: pytest.FixtureRequest) -> str:
    """The previous release being checked (a commit or a tag)."""
    rev: str = request.param
    return rev


@pytest.fixture(scope="module")
def previous_tree(previous_release: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's services/ (kit and packages), as that commit had them.

    A clone without the commit: skipped if the clone is shallow (the history was cut off; CI clones
    the whole history, so there it runs), a failure otherwise (a name that does not exist)."""
    archive = git("archive", "--format=tar", previous_release, "services")
    if archive.returncode != 0:
        if git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
            pytest.skip(f"shallow clone: the previous release {previous_release} is not in the history")
        pytest.fail(f"git archive {previous_release}: {archive.stderr.decode()}")
    root = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def migrated(previous_tree: Path, isolated_env: IsolatedEnv) -> dict[str, str]:
    """A fresh database migrated by the CURRENT code, as the pre-upgrade migration Job does — one per
    previous release (the guard below leaves it broken)."""
    env = {**isolated_env(f"upgrade{next(_databases)}"), "IDENTITY_KEYS": new_identity_keys("k1")}
    for service in SERVICES:
        result = subprocess.run(
            [sys.executable, "-m", service, "migrate"],
            env={**os.environ, **env, **migrate_role_env(service)},  # and prepares its runtime role
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    return env


@pytest.fixture(scope="module")
def previous_services(
    previous_tree: Path, migrated: dict[str, str], service_redis: ServiceRedis
) -> Iterator[dict[str, ServiceProcess]]:
    """The previous release's services, started on the current schema (nothing migrates them back).

    As the chart runs them: each as its own database role and its own Redis user (``REDIS_URL``, as
    the current suites run the services: testkit's ``ServiceRedis``). The release this line started
    from (:data:`FIRST_RELEASE`, c79eb8f) reads no ``REDIS_URL``: its services' settings are database
    settings only and its kit has no Redis client (no shared replay memory yet), so for it the Redis
    user is given and never used — nothing in it can be run under the ACL. A later release (such as
    :data:`BASELINE`) keeps its replay memory in Redis and runs under its own user, and a key or
    command the current ACL (svckit.redisacl, which the upgraded Redis applies) denies it fails here
    (a write refused with 503, or ``NOPERM`` in its log), as it would in the cluster during a rolling
    upgrade or after a rollback."""
    # its own role and Redis user, not the owner
    with running(migrated, service_redis, previous_tree) as processes:
        yield processes


def test_the_services_run_the_previous_releases_code(
    previous_tree: Path, previous_services: dict[str, ServiceProcess]
) -> None:
    """Guard: what runs is the archived code, not the working tree's."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import svckit, timesheets; print(svckit.__file__); print(timesheets.__file__)",
        ],
        env={**os.environ, **previous_services["timesheets"].env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert all(line.startswith(str(previous_tree)) for line in probe.stdout.split())


def drive(previous_tree: Path, services: dict[str, ServiceProcess], env: dict[str, str]) -> dict[str, Any]:
    """Run ``previous_client.py`` with the previous release's kit against its services: what it saw
    (``seen``) and the identity contract it detected in that kit (``contract``)."""
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("previous_client.py")),
            *(services[name].url for name in SERVICES),
        ],
        env={
            **os.environ,
            # the shared key of the oldest contract and every pair's keys: the client takes what the
            # previous kit reads, as the previous services do from the same environment
            **{name: value for name, value in env.items() if name.startswith("IDENTITY_KEYS")},
            "PYTHONPATH": str(previous_tree / "services" / "kit"),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    logs = {name: p.logs()[-2000:] for name, p in services.items()}
    assert result.returncode == 0, result.stderr + json.dumps(logs)
    driven: dict[str, Any] = json.loads(result.stdout)
    driven["logs"] = logs
    return driven


@pytest.fixture(scope="module")
def driven(
    previous_tree: Path, previous_services: dict[str, ServiceProcess], migrated: dict[str, str]
) -> dict[str, Any]:
    """What the previous release's services did on the current schema (``previous_client.py``)."""
    return drive(previous_tree, previous_services, migrated)


def test_the_previous_release_works_on_the_current_schema(
    driven: dict[str, Any], previous_services: dict[str, ServiceProcess]
) -> None:
    assert driven["seen"] == EVERYTHING_WORKED, json.dumps(driven)
    logs = "".join(process.logs(tail=None) for process in previous_services.values())
    assert "NOPERM" not in logs  # its Redis users have the current ACL


def test_a_project_name_the_previous_release_sends_decomposed_is_stored_in_nfc(
    driven: dict[str, Any], migrated: dict[str, str]
) -> None:
    """During a rollout (and after a rollback) an older release writes on this schema, and releases
    before 47837cf store a project name as sent: timesheets' 0008 trigger stores it in NFC, as the
    current release does, so the current release's project filter (NFC) finds it. The previous
    release's own write is checked, and, since from 47837cf on a release composes names itself, a
    write as sent by an older one (the statement it ran) too."""
    import asyncio

    import asyncpg

    async def stored() -> tuple[str, str]:
        conn = await asyncpg.connect(migrated["DATABASE_URL"])
        try:
            entry = driven["ids"]["decomposed"]
            project: str = await conn.fetchval(
                "SELECT project FROM timesheets.entries WHERE id = $1::uuid", entry
            )
            rewritten: str = await conn.fetchval(
                "UPDATE timesheets.entries SET project = $2 WHERE id = $1::uuid RETURNING project",
                entry,
                "Cafe\u0301",
            )
            return project, rewritten
        finally:
            await conn.close()

    assert driven["seen"]["create_decomposed"] == 201, json.dumps(driven)
    assert asyncio.run(stored()) == ("Caf\u00e9", "Caf\u00e9")


def test_a_contract_step_shipped_too_early_is_caught(
    previous_tree: Path, previous_services: dict[str, ServiceProcess], migrated: dict[str, str]
) -> None:
    """Guard: had the current release renamed a column the previous code still uses (a contract
    step in the same release as its expand step), the previous release would break — and this test
    would say so. The request must get past the identity check (a signature the previous release
    refuses would make any schema look broken: a 401 is no evidence) and fail in the database.
    Runs last: it leaves the schema broken for the previous code."""
    import asyncio

    import asyncpg

    async def rename() -> None:
        conn = await asyncpg.connect(migrated["DATABASE_URL"])
        try:
            await conn.execute("ALTER TABLE timesheets.entries RENAME COLUMN notes TO note")
        finally:
            await conn.close()

    asyncio.run(rename())
    driven = drive(previous_tree, previous_services, migrated)
    assert driven["seen"]["create"] == 500, json.dumps(driven)  # the previous code cannot create an entry
    assert "UndefinedColumnError" in previous_services["timesheets"].logs(tail=None), json.dumps(driven)


@contextlib.contextmanager
def running(
    env: dict[str, str], service_redis: ServiceRedis, code: Path | None = None, *, roles: bool = True
) -> Iterator[dict[str, ServiceProcess]]:
    """The three services on ``env``'s database, each as its own database role and Redis user (as the
    chart runs them), wired to each other; ``code``: a release's tree to run instead of this one;
    ``roles=False``: as the owner, for a release whose ``migrate`` prepares no runtime role
    (:func:`has_runtime_roles`), which ran so."""
    processes = {name: ServiceProcess(name, {}) for name in SERVICES}
    urls = {name: p.url for name, p in processes.items()}
    for name, process in processes.items():
        process.env.update(
            {
                **(
                    service_redis.runtime_env(env, name)
                    if roles
                    else {**env, "REDIS_URL": service_redis.url(name)}
                ),
                "TIMESHEETS_URL": urls["timesheets"],
                "AUDIT_URL": urls["audit"],
                "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
            }
        )
        if code is not None:
            paths = [str(code / "services" / "kit"), str(code / "services" / name)]
            process.env["PYTHONPATH"] = os.pathsep.join(paths)
    try:
        for name in ("audit", "timesheets", "approvals"):
            processes[name].start(wait_path="/readyz", timeout=60)
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def has_runtime_roles(tree: Path) -> bool:
    """Whether a release's ``migrate`` prepares the runtime role (its kit has ``svckit.roles``, which
    reads ``DB_RUNTIME_ROLE``); before that its services ran as the owner."""
    return (tree / "services" / "kit" / "svckit" / "roles.py").is_file()
