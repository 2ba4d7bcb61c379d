"""The chart runs every service as its own database role (databaseRoles), prepared by the migration Job.

What a pod can reach is what its environment names: the owner's URL and the roles' passwords must
reach the migration containers only, each service its own role's URL only, and generated passwords
must survive upgrades (tests/packaging/test_secret_persistence.py renders against a live Secret).
"""

from __future__ import annotations

import base64
from typing import Any

import helm_python as helm
import pytest

from tests.packaging.support import CHART, MINIMAL, SCENARIOS, Obj, deep_merge, render, rendered_scenario
from tests.packaging.test_policies import by_kind, containers, env_of, workloads

DB_SERVICES = ("identity", "timesheets", "approvals", "audit")


def db_containers(objects: list[Obj]) -> list[tuple[str, str, dict[str, Obj]]]:
    """(service, command, env) of every container that runs ``python -m <service> [command]``
    for a service with a schema."""
    found = []
    for _obj, spec in workloads(objects):
        for c in containers(spec):
            command = c.get("command", [])
            if command[:2] == ["python", "-m"] and command[2] in DB_SERVICES:
                found.append((command[2], command[3] if len(command) > 3 else "serve", env_of(c)))
    return found


def ref(entry: Obj) -> tuple[str, str]:
    key_ref = entry["valueFrom"]["secretKeyRef"]
    return key_ref["name"], key_ref["key"]


@pytest.mark.parametrize("name", ["values-dev.yaml", "values-prod.yaml", "dev+everything", "minimal"])
def test_services_connect_as_their_role_and_only_migrations_hold_the_owner(name: str) -> None:
    objects = rendered_scenario(name)
    roles_secret = "timesheets-database-roles" if name == "values-prod.yaml" else "ts-timesheets-generated"
    served = set()
    for service, command, env in db_containers(objects):
        where = f"{name}: {service} {command}"
        if command == "serve":
            served.add(service)
            assert ref(env["DATABASE_URL"]) == (roles_secret, f"database-url-{service}"), where
            assert not {"DB_RUNTIME_ROLE", "DB_RUNTIME_PASSWORD", "DB_MANAGE_ROLES"} & set(env), where
            continue
        assert ref(env["DATABASE_URL"])[1] == "database-url", where  # the owner's (migrate, seed)
        if command == "migrate":
            prefix = "timesheets_" if name == "values-prod.yaml" else "ts_"
            assert env["DB_RUNTIME_ROLE"]["value"] == prefix + service, where
            assert env["DB_MANAGE_ROLES"]["value"] == "true", where
            assert ref(env["DB_RUNTIME_PASSWORD"]) == (roles_secret, f"database-password-{service}"), where
        else:
            assert "DB_RUNTIME_PASSWORD" not in env, where
    assert served == {s for s in DB_SERVICES if s != "identity" or name != "values-prod.yaml"}


def test_generated_role_urls_use_the_generated_passwords_and_the_demo_server() -> None:
    (secret,) = by_kind(rendered_scenario("values-dev.yaml"), "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for service in DB_SERVICES:
        password = data[f"database-password-{service}"]
        assert len(password) == 32
        assert data[f"database-url-{service}"] == (
            f"postgresql://ts_{service}:{password}@ts-timesheets-postgresql:5432/timesheets"
        )
    assert len({data[f"database-password-{s}"] for s in DB_SERVICES}) == len(DB_SERVICES)


def test_an_external_server_is_named_by_host_port_and_database() -> None:
    values = deep_merge(
        MINIMAL, {"externalDatabase": {"port": 6432}, "databaseRoles": {"prefix": "payroll_ts_"}}
    )
    (secret,) = by_kind(render(values), "Secret")
    url = base64.b64decode(secret["data"]["database-url-audit"]).decode()
    assert url.startswith("postgresql://payroll_ts_audit:")
    assert url.endswith("@db.internal:6432/timesheets")


def test_the_default_prefix_is_the_release_name() -> None:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(MINIMAL, name="team-a.ts", namespace="x", is_install=True)
    assert '"team_a_ts_audit"' in rendered["timesheets/templates/migrations-job.yaml"]
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match="prefix"):
        chart.render(MINIMAL, name="9lives", namespace="x", is_install=True)


def test_roles_created_by_the_platform_team_need_no_password_in_the_chart() -> None:
    values = deep_merge(SCENARIOS["values-prod.yaml"], {"databaseRoles": {"manage": False}})
    for service, command, env in db_containers(render(values)):
        assert "DB_RUNTIME_PASSWORD" not in env, (service, command)
        if command == "migrate":
            assert env["DB_MANAGE_ROLES"]["value"] == "false"
            assert env["DB_RUNTIME_ROLE"]["value"] == f"timesheets_{service}"


def test_without_roles_every_service_uses_the_owners_url() -> None:
    values: dict[str, Any] = deep_merge(MINIMAL, {"databaseRoles": {"enabled": False}})
    objects = render(values)
    assert not by_kind(objects, "Secret") or all(
        not k.startswith("database-") for s in by_kind(objects, "Secret") for k in s["data"]
    )
    for _service, _command, env in db_containers(objects):
        assert ref(env["DATABASE_URL"]) == ("db", "database-url")
        assert "DB_RUNTIME_ROLE" not in env
