"""Rotating a service's generated database password with the chart, one step per upgrade
(databaseRoles.rotation.<service>; docs/database-roles.md, "Rotating a runtime password").

Each step is rendered as ``helm upgrade`` against a Kubernetes API server whose live Secret holds what
the step before left (tests/packaging/fakeapi.py). After each step the migration Job's environment,
resolved against that Secret, is what ``migrate`` reads (svckit.roles.RuntimeRole): the login the
service's URL names with that URL's password, and the other login's password while both must work;
the service's pods roll exactly when the login in use changes. What ``migrate`` then does in Postgres
is tested in services/kit/tests/test_role_rotation.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import helm_python as helm
import pytest
from svckit.migrations import migrate
from svckit.roles import RuntimeRole, role_url
from svckit.settings import DatabaseSettings

from testkit.pgproc import PrivatePostgres, postgres_bin
from tests.packaging.fakeapi import FakeApiServer, fake_api
from tests.packaging.support import (
    GENERATED_SECRET,
    REPO,
    SCENARIOS,
    deep_merge,
    parse_manifests,
    pod_annotations,
    render,
    secret_data,
    set_live_secret,
    upgrade_over,
)
from tests.packaging.test_policies import containers, env_of, workloads

BASE = SCENARIOS["values-dev.yaml"]
AUDIT_MIGRATIONS = REPO / "services" / "audit" / "audit" / "migrations"
ROLE = "ts_audit"
SECOND = "ts_audit_b"
BEFORE = {
    "database-password-audit": "P" * 32,
    "database-url-audit": f"postgresql://{ROLE}:{'P' * 32}@ts-timesheets-postgresql:5432/timesheets",
}


def upgrade(api: FakeApiServer, live: dict[str, str], rotation: dict[str, str]) -> list[dict[str, Any]]:
    return upgrade_over(api, live, deep_merge(BASE, {"databaseRoles": {"rotation": rotation}}))


def migrate_env(objects: list[dict[str, Any]], service: str, data: dict[str, str]) -> dict[str, str]:
    """The environment of ``python -m <service> migrate``, its Secret references resolved against
    ``data`` as the kubelet does (an optional key that is absent: no variable)."""
    for _obj, spec in workloads(objects):
        for container in containers(spec):
            if container.get("command") == ["python", "-m", service, "migrate"]:
                env: dict[str, str] = {}
                for name, entry in env_of(container).items():
                    if "value" in entry:
                        env[name] = str(entry["value"])
                        continue
                    ref = entry["valueFrom"]["secretKeyRef"]
                    if ref["name"] != GENERATED_SECRET or ref["key"] not in data:
                        assert ref.get("optional") or ref["name"] != GENERATED_SECRET, (name, ref)
                        continue
                    env[name] = data[ref["key"]]
                return env
    raise AssertionError(f"no migrate container for {service}")


def runtime_role(owner: str, env: dict[str, str]) -> RuntimeRole | None:
    """What ``migrate`` makes of the Job's environment ``env`` (the service's settings)."""
    return DatabaseSettings(
        database_url=owner,
        db_runtime_role=env["DB_RUNTIME_ROLE"],
        db_runtime_password=env["DB_RUNTIME_PASSWORD"],
        db_runtime_login=env.get("DB_RUNTIME_LOGIN", ""),
        db_runtime_other_password=env.get("DB_RUNTIME_OTHER_PASSWORD", ""),
    ).runtime_role


def url_login(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return unquote(parts.username or ""), unquote(parts.password or "")


@pytest.fixture
def api() -> Any:
    with fake_api() as server:
        yield server


def test_add_promote_drop_switches_the_login_one_upgrade_at_a_time(api: FakeApiServer) -> None:
    live = dict(BEFORE)
    steps = ["", "add", "add", "promote", "promote", "drop", "drop", "", "add", "promote", "drop"]
    seen = []
    for step in steps:
        objects = upgrade(api, live, {"audit": step})
        live = secret_data(objects)
        env = migrate_env(objects, "audit", live)
        role = runtime_role("postgresql://owner@db/timesheets", env)
        assert role is not None
        # the service's URL names the login migrate prepares, with the password migrate sets on it
        assert url_login(live["database-url-audit"]) == (role.in_use, role.password)
        seen.append(
            (
                step,
                role.in_use,
                role.password,
                role.other_password,
                pod_annotations(objects, "audit").get("timesheets/database-login"),
            )
        )
    p1 = "P" * 32
    p2 = seen[1][3]
    p3 = seen[8][3]
    assert p2 is not None
    assert p3 is not None
    assert len({p1, p2, p3}) == 3
    assert seen == [
        ("", ROLE, p1, None, None),  # before: one login, as ever
        ("add", ROLE, p1, p2, None),  # the second login gets a password; no pod rolls
        ("add", ROLE, p1, p2, None),  # the same step again changes nothing
        ("promote", SECOND, p2, p1, SECOND),  # the pods switch and roll; the old login keeps P1
        ("promote", SECOND, p2, p1, SECOND),
        ("drop", SECOND, p2, None, SECOND),  # migrate disables the old login; nothing rolls
        ("drop", SECOND, p2, None, SECOND),
        ("", SECOND, p2, None, SECOND),  # no step: kept
        ("add", SECOND, p2, p3, SECOND),  # the next rotation: back to the role itself
        ("promote", ROLE, p3, p2, None),  # the annotation goes: the pods roll again
        ("drop", ROLE, p3, None, None),
    ]


def test_a_step_out_of_order_is_refused_not_ignored(api: FakeApiServer) -> None:
    """``promote`` before ``add`` and ``add`` before the last rotation's ``drop`` changed nothing and
    said nothing: an operator rotating after a leak took the rotation for done while the leaked
    password kept working (found by a review). The render fails, naming the step to run first."""
    with pytest.raises(helm.HelmError, match=r"rotation\.audit=promote: no second password was added"):
        upgrade(api, dict(BEFORE), {"audit": "promote"})
    live = secret_data(upgrade(api, dict(BEFORE), {"audit": "add"}))
    live = secret_data(upgrade(api, live, {"audit": "promote"}))
    with pytest.raises(helm.HelmError, match=r"rotation\.audit=add: the last rotation's old login"):
        upgrade(api, live, {"audit": "add"})
    live = secret_data(upgrade(api, live, {"audit": "drop"}))
    assert secret_data(upgrade(api, live, {"audit": "add"}))  # in order again: accepted


def test_only_the_rotated_service_changes(api: FakeApiServer) -> None:
    live = {
        **BEFORE,
        "database-password-timesheets": "T" * 32,
        "database-url-timesheets": (
            f"postgresql://ts_timesheets:{'T' * 32}@ts-timesheets-postgresql:5432/timesheets"
        ),
    }
    live = secret_data(upgrade(api, live, {"audit": "add"}))
    objects = upgrade(api, live, {"audit": "promote"})
    data = secret_data(objects)
    assert url_login(data["database-url-audit"])[0] == SECOND
    assert data["database-url-timesheets"] == live["database-url-timesheets"]
    assert data["database-login-timesheets"] == "ts_timesheets"
    assert "database-other-password-timesheets" not in data
    assert "DB_RUNTIME_OTHER_PASSWORD" not in migrate_env(objects, "timesheets", data)
    for component in ("gateway", "identity", "timesheets", "approvals"):
        assert "timesheets/database-login" not in pod_annotations(objects, component)
    # the services read their URL from the Secret, never a password in the manifest
    for _obj, spec in workloads(objects):
        for container in containers(spec):
            for name, entry in env_of(container).items():
                if name in ("DATABASE_URL", "DB_RUNTIME_PASSWORD", "DB_RUNTIME_OTHER_PASSWORD"):
                    assert "secretKeyRef" in entry["valueFrom"], name


def test_a_release_of_before_renders_as_before(api: FakeApiServer) -> None:
    """No step: the Secret keeps the URL and password it holds, the Job gets no other password and
    no pod template changes (no annotation)."""
    objects = upgrade(api, dict(BEFORE), {})
    data = secret_data(objects)
    assert data["database-url-audit"] == BEFORE["database-url-audit"]
    assert data["database-password-audit"] == BEFORE["database-password-audit"]
    assert data["database-login-audit"] == ROLE
    env = migrate_env(objects, "audit", data)
    assert env["DB_RUNTIME_LOGIN"] == ROLE
    assert "DB_RUNTIME_OTHER_PASSWORD" not in env
    assert "timesheets/database-login" not in pod_annotations(objects, "audit")


def test_with_roles_the_platform_team_creates_the_job_gets_the_login_and_no_password(
    api: FakeApiServer,
) -> None:
    """databaseRoles.manage=false: the chart still keeps the two passwords in its Secret (the
    platform team sets them on the logins: docs/database-roles.md), and the Job checks the login in use."""
    values = deep_merge(BASE, {"databaseRoles": {"manage": False, "rotation": {"audit": "add"}}})
    objects = upgrade_over(api, BEFORE, values)
    data = secret_data(objects)
    assert data["database-other-password-audit"]
    env = migrate_env(objects, "audit", data)
    assert env["DB_MANAGE_ROLES"] == "false"
    assert env["DB_RUNTIME_LOGIN"] == ROLE
    assert not {"DB_RUNTIME_PASSWORD", "DB_RUNTIME_OTHER_PASSWORD"} & set(env)


def test_a_rotation_step_with_passwords_given_by_reference_is_refused() -> None:
    values = deep_merge(SCENARIOS["values-prod.yaml"], {"databaseRoles": {"rotation": {"audit": "add"}}})
    with pytest.raises(helm.HelmError, match="database-login-audit"):
        render(values)


def test_a_rotation_step_without_runtime_roles_is_refused() -> None:
    values = deep_merge(BASE, {"databaseRoles": {"enabled": False, "rotation": {"audit": "add"}}})
    with pytest.raises(helm.HelmError, match="no runtime password"):
        render(values)


def test_an_unknown_step_is_refused_by_the_schema() -> None:
    values = deep_merge(BASE, {"databaseRoles": {"rotation": {"audit": "rotate"}}})
    with pytest.raises(helm.HelmError):
        render(values)


@pytest.mark.skipif(postgres_bin() is None, reason="needs the system's PostgreSQL binaries")
async def test_every_pod_connects_at_every_step_and_the_old_login_not_after_drop(api: FakeApiServer) -> None:
    """The chart's steps end to end: at each step the Job's environment (resolved from the rendered
    Secret) runs the real ``migrate`` on a server that checks passwords; then the URL of this step
    (the new pods) and the URL of the step before (the pods still rolling) both log in and may write
    their schema, until ``drop``, after which the URL of before ``promote`` is refused."""
    server = PrivatePostgres(passwords=True).start()
    try:
        owner = server.dsn
        live = dict(BEFORE)
        urls = []
        for step in ["", "add", "promote", "drop"]:
            objects = upgrade(api, live, {"audit": step})
            live = secret_data(objects)
            env = migrate_env(objects, "audit", live)
            await migrate(owner, "audit", AUDIT_MIGRATIONS, role=runtime_role(owner, env))
            login, password = url_login(live["database-url-audit"])
            urls.append(role_url(owner, login, password))
            for url in urls[-2:]:  # this step's pods, and the pods of the step before, still rolling
                conn = await asyncpg.connect(url)
                try:
                    assert await conn.fetchval("SELECT has_table_privilege('audit.records', 'INSERT')")
                    assert not await conn.fetchval("SELECT has_table_privilege('audit.records', 'DELETE')")
                finally:
                    await conn.close()
        assert [url_login(u)[0] for u in urls] == [ROLE, ROLE, SECOND, SECOND]
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(urls[1])  # the old login, P1: disabled by drop's Job
    finally:
        server.remove()


def test_the_notes_say_the_next_step(api: FakeApiServer) -> None:
    def notes(live: dict[str, str], step: str) -> tuple[str, dict[str, str]]:
        set_live_secret(api, live)
        values = deep_merge(BASE, {"databaseRoles": {"rotation": {"audit": step}}})
        rendered = api.render(values, upgrade=True)
        text = next(t for name, t in rendered.items() if name.endswith("NOTES.txt"))
        return text, secret_data(parse_manifests(rendered))

    text, live = notes(dict(BEFORE), "add")
    assert "--set databaseRoles.rotation.audit=promote" in text
    text, live = notes(live, "promote")
    assert f"its pods switch to {SECOND}; {ROLE} still logs in" in text
    assert "--set databaseRoles.rotation.audit=drop" in text
    text, live = notes(live, "drop")
    assert "databaseRoles.rotation" not in text
