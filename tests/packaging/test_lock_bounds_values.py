"""The lock bounds are chart values: ``config.dbLockTimeoutSeconds``,
``config.dbIdleInTransactionTimeoutSeconds``, ``migrations.lockTimeoutSeconds`` and
``migrations.lockAttempts``.

They render into every container of the four services with a database, the migration containers
included (which load the service's settings: a migration bound the services' pods did not get would
leave a pod's settings checking the default against a tuned request bound). The settings refuse a
request bound at or above the statement bound, and a migration bound at or above the request bound
(svckit.settings); the chart refuses the same pairs at render, naming both values, instead of pods
that crash-loop.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.packaging.support import MINIMAL, deep_merge, render
from tests.packaging.test_audit_read_timeout_values import audit_migration_envs
from tests.packaging.test_database_bounds_values import WITH_DATABASE, WITH_IDENTITY
from tests.packaging.test_ops_values import env_of, schema_refuses
from tests.packaging.test_service_settings import rendered_settings, settings_class

NAMES = {
    "DB_LOCK_TIMEOUT_SECONDS": "db_lock_timeout_seconds",
    "DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "db_idle_in_transaction_timeout_seconds",
    "DB_MIGRATION_LOCK_TIMEOUT_SECONDS": "db_migration_lock_timeout_seconds",
    "DB_MIGRATION_LOCK_ATTEMPTS": "db_migration_lock_attempts",
}
TUNED = deep_merge(
    WITH_IDENTITY,
    {
        "config": {"dbLockTimeoutSeconds": 4, "dbIdleInTransactionTimeoutSeconds": 120},
        "migrations": {"lockTimeoutSeconds": 3, "lockAttempts": 7},
    },
)


@pytest.mark.parametrize("component", WITH_DATABASE)
def test_the_chart_defaults_are_the_settings_defaults(component: str) -> None:
    env = env_of(WITH_IDENTITY, component)
    fields = settings_class(component).model_fields
    for variable, field in NAMES.items():
        assert float(env[variable]) == fields[field].default, variable


@pytest.mark.parametrize("component", WITH_DATABASE)
def test_the_service_reads_the_rendered_bounds(component: str) -> None:
    settings: Any = rendered_settings(TUNED, component)
    assert settings.db_lock_timeout_seconds == 4
    assert settings.db_idle_in_transaction_timeout_seconds == 120
    assert settings.db_migration_lock_timeout_seconds == 3
    assert settings.db_migration_lock_attempts == 7


def test_the_migration_containers_get_them() -> None:
    envs = audit_migration_envs(render(TUNED))
    assert envs
    for env in envs:
        assert env["DB_MIGRATION_LOCK_TIMEOUT_SECONDS"] == "3"
        assert env["DB_MIGRATION_LOCK_ATTEMPTS"] == "7"
        assert env["DB_LOCK_TIMEOUT_SECONDS"] == "4"


def test_the_gateway_has_no_database_and_gets_none() -> None:
    env = env_of(WITH_IDENTITY, "gateway")
    assert not set(NAMES) & set(env)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"config": {"dbLockTimeoutSeconds": 10}}, ["config.dbLockTimeoutSeconds (10)", "(10)"]),
        (
            {
                "config": {"dbStatementTimeoutSeconds": 1, "dbLockTimeoutSeconds": 1},
                "migrations": {"lockTimeoutSeconds": 0.5},
            },
            ["config.dbLockTimeoutSeconds (1)", "of identity (1)"],
        ),
        (
            {"config": {"dbLockTimeoutSeconds": 3}, "audit": {"dbStatementTimeoutSeconds": 3}},
            ["config.dbLockTimeoutSeconds (3)", "of audit (3)"],
        ),
        ({"migrations": {"lockTimeoutSeconds": 2}}, ["migrations.lockTimeoutSeconds (2)", "(2)"]),
    ],
)
def test_the_chart_refuses_the_pairs_the_services_refuse(values: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(deep_merge(WITH_IDENTITY, values))
    message = str(refused.value)
    for part in named:
        assert part in message, message


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("config", "dbLockTimeoutSeconds"), 0),
        (("config", "dbIdleInTransactionTimeoutSeconds"), 10),
        (("migrations", "lockTimeoutSeconds"), 0),
        (("migrations", "lockAttempts"), 0),
        (("migrations", "lockAttempts"), 1.5),
    ],
)
def test_the_schema_holds_the_settings_bounds(path: tuple[str, str], bad: object) -> None:
    assert schema_refuses(deep_merge(MINIMAL, {path[0]: {path[1]: bad}})) != ""
