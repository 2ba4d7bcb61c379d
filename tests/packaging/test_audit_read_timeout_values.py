"""The audit service's read timeout is a chart value, ``audit.readTimeoutSeconds``, held against
``audit.dbStatementTimeoutSeconds`` at render.

``AUDIT_READ_TIMEOUT_SECONDS`` (5 s) bounds one statement of the trail's listings and verifications,
and the service refuses to start when it exceeds its ``DB_STATEMENT_TIMEOUT_SECONDS`` (the driver
would cut such a statement, 503, before the database's own limit, 422: audit/settings.py). The chart
rendered the statement bound from a value of its own but the read timeout only from ``audit.env``,
so a pair the service refuses rendered without complaint and the audit pod's migration container
(it loads the service's settings too) crash-looped with one line naming both. Now the value renders
into the service's and its migration containers' env, the schema holds the setting's bounds, an
``audit.env`` entry of that name is refused like any variable the chart sets, and the chart refuses
the pair the service would refuse, naming both values.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from pydantic import ValidationError

from tests.packaging.support import MINIMAL, Obj, deep_merge, pod_spec, render
from tests.packaging.test_ops_values import container_env, env_of, schema_refuses
from tests.packaging.test_service_settings import SECRET_SHAPES, rendered_settings, settings_class

READ = "AUDIT_READ_TIMEOUT_SECONDS"
STATEMENT = "DB_STATEMENT_TIMEOUT_SECONDS"
DEMO_DATABASE = deep_merge(MINIMAL, {"postgresql": {"enabled": True}})  # the pods migrate in init containers


def lock_bounds(statement: object) -> tuple[float, float]:
    """Lock bounds that fit under a statement bound (``DB_LOCK_TIMEOUT_SECONDS`` must be below it,
    ``DB_MIGRATION_LOCK_TIMEOUT_SECONDS`` below that): the defaults, or halves for a small bound."""
    lock = 2.0 if not isinstance(statement, (int, float)) or statement > 2 else statement / 2
    return lock, lock / 2


def audit_values(
    read: object = None, statement: object = None, base: dict[str, Any] = MINIMAL
) -> dict[str, Any]:
    audit: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if read is not None:
        audit["readTimeoutSeconds"] = read
    if statement is not None:
        audit["dbStatementTimeoutSeconds"] = statement
        lock, migration = lock_bounds(statement)
        extra = {"config": {"dbLockTimeoutSeconds": lock}, "migrations": {"lockTimeoutSeconds": migration}}
    return deep_merge(base, {"audit": audit, **extra})


def audit_migration_envs(objects: list[Obj]) -> list[dict[str, str]]:
    """The plain env of every container running ``python -m audit migrate`` (the Job's, a pod's init)."""
    envs = []
    for obj in objects:
        spec = pod_spec(obj)
        for container in [*(spec or {}).get("initContainers", []), *(spec or {}).get("containers", [])]:
            if container.get("command") == ["python", "-m", "audit", "migrate"]:
                envs.append({e["name"]: str(e["value"]) for e in container["env"] if "value" in e})
    return envs


def test_the_chart_default_is_the_settings_default() -> None:
    default = settings_class("audit").model_fields["audit_read_timeout_seconds"].default
    assert float(env_of(MINIMAL, "audit")[READ]) == default == 5


def test_the_value_renders_into_the_audit_service_alone() -> None:
    objects = render(audit_values(read=12.5))
    assert {e["name"]: e.get("value") for e in container_env(objects, "audit")}[READ] == "12.5"
    for component in ("gateway", "timesheets", "approvals"):
        assert READ not in {e["name"] for e in container_env(objects, component)}, component


@pytest.mark.parametrize("base", [MINIMAL, DEMO_DATABASE], ids=["migrations-job", "init-container"])
def test_the_migration_containers_get_it_too(base: dict[str, Any]) -> None:
    """``python -m audit migrate`` loads the service's settings, the pair's check included."""
    envs = audit_migration_envs(render(audit_values(read=7, statement=9, base=base)))
    assert envs
    for env in envs:
        assert (env.get(READ), env.get(STATEMENT)) == ("7", "9")


def test_the_service_reads_the_rendered_value() -> None:
    settings: Any = rendered_settings(audit_values(read=20, statement=20), "audit")
    assert settings.audit_read_timeout_seconds == 20
    assert settings.db_statement_timeout_seconds == 20


@pytest.mark.parametrize(
    "entry",
    [{"env": {READ: "7"}}, {"extraEnv": [{"name": READ, "value": "7"}]}],
    ids=["env", "extraEnv"],
)
def test_an_audit_env_entry_of_the_same_name_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(deep_merge(MINIMAL, {"audit": entry}))
    assert f"the chart sets {READ} for this container" in str(refused.value)


def service_refusal(read: float, statement: float) -> str:
    """What the audit service's settings say of the pair ("": they take it)."""
    lock, migration = lock_bounds(statement)
    env = {
        READ: str(read),
        STATEMENT: str(statement),
        "DB_LOCK_TIMEOUT_SECONDS": str(lock),
        "DB_MIGRATION_LOCK_TIMEOUT_SECONDS": str(migration),
        "DATABASE_URL": SECRET_SHAPES["DATABASE_URL"],
    }
    try:
        settings_class("audit").model_validate({k.lower(): v for k, v in env.items()})
    except ValidationError as refused:
        return str(refused)
    return ""


@pytest.mark.parametrize(
    ("read", "statement"),
    [(5, 30), (8, 8), (0.5, 0.5), (30, 600), (8.5, 8), (30, 29.5), (6, 5), (1, 0.9)],
)
def test_the_chart_refuses_the_pair_the_service_refuses(read: float, statement: float) -> None:
    values = audit_values(read=read, statement=statement)
    refusal = service_refusal(read, statement)
    if not refusal:
        render(values)  # equal is fine: the read timeout is at most the statement bound
        return
    assert f"{READ} must be at most {STATEMENT}" in refusal, refusal  # that check, no other
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    message = str(refused.value)
    assert f"audit.readTimeoutSeconds ({read:g})" in message, message
    assert f"audit.dbStatementTimeoutSeconds ({statement:g})" in message, message


def test_lowering_the_statement_bound_below_the_default_read_timeout_is_refused() -> None:
    """The case the pods crash-looped on: only the statement bound tuned, the read timeout left at 5."""
    with pytest.raises(helm.HelmError) as refused:
        render(audit_values(statement=3))
    assert "audit.readTimeoutSeconds (5)" in str(refused.value)
    assert "audit.dbStatementTimeoutSeconds (3)" in str(refused.value)


MOST = 30  # audit_read_timeout_seconds: le=30


@pytest.mark.parametrize("good", [0.5, 1, MOST])
def test_the_schema_takes_what_the_setting_takes(good: float) -> None:
    assert schema_refuses(audit_values(read=good)) == ""


@pytest.mark.parametrize("bad", [0, -1, "10", MOST + 0.5])
def test_the_schema_holds_the_settings_bounds(bad: object) -> None:
    refused = schema_refuses(audit_values(read=bad))
    assert "readTimeoutSeconds" in refused, refused
    assert "additional properties" not in refused, refused


def test_the_schema_requires_the_value() -> None:
    """null: Helm drops the key, and the schema requires it (not a template reading nothing)."""
    refused = schema_refuses(deep_merge(MINIMAL, {"audit": {"readTimeoutSeconds": None}}))
    assert "missing property 'readTimeoutSeconds'" in refused, refused


def test_the_schema_bound_is_the_settings_bound() -> None:
    import json

    from tests.packaging.support import CHART

    schema = json.loads((CHART / "values.schema.json").read_text())
    value = schema["properties"]["audit"]["properties"]["readTimeoutSeconds"]
    field = settings_class("audit").model_fields["audit_read_timeout_seconds"]
    bounds = {type(m).__name__: m for m in field.metadata}
    assert value["type"] == "number"
    assert value["exclusiveMinimum"] == bounds["Gt"].gt == 0
    assert value["maximum"] == bounds["Le"].le == MOST
