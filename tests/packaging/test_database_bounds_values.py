"""The database bounds are chart values: ``config.dbConnectTimeoutSeconds``,
``config.dbStatementTimeoutSeconds`` and the audit service's own ``audit.dbStatementTimeoutSeconds``.

``DB_CONNECT_TIMEOUT_SECONDS`` (5 s) and ``DB_STATEMENT_TIMEOUT_SECONDS`` (10 s; the audit service
30 s, its trail's reads run long statements) are how long a service waits on a Postgres that hangs
before it answers 503 (svckit.settings.DatabaseSettings, svckit.db). The chart could not set them: a
``<component>.env`` entry had to be repeated per service, and nothing held the settings' bounds at
render. They render into the four services with a database (never the gateway), the audit
service's statement bound from its own value so that raising the others' leaves its 30 s alone, and
the schema holds the settings' bounds (more than 0; at most 120 s and 600 s).
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.packaging.support import MINIMAL, deep_merge, render
from tests.packaging.test_ops_values import container_env, env_of, schema_refuses
from tests.packaging.test_service_settings import rendered_settings, settings_class

CONNECT = "DB_CONNECT_TIMEOUT_SECONDS"
STATEMENT = "DB_STATEMENT_TIMEOUT_SECONDS"
SHARED = ("identity", "timesheets", "approvals")  # the statement bound of config.dbStatementTimeoutSeconds
WITH_DATABASE = (*SHARED, "audit")
WITH_IDENTITY = deep_merge(MINIMAL, {"identity": {"enabled": True}})


TUNED = deep_merge(
    WITH_IDENTITY,
    {
        "config": {"dbConnectTimeoutSeconds": 2.5, "dbStatementTimeoutSeconds": 20},
        "audit": {"dbStatementTimeoutSeconds": 45},
    },
)


@pytest.mark.parametrize("component", WITH_DATABASE)
def test_the_chart_defaults_are_the_settings_defaults(component: str) -> None:
    env = env_of(WITH_IDENTITY, component)
    fields = settings_class(component).model_fields
    assert float(env[CONNECT]) == fields["db_connect_timeout_seconds"].default
    assert float(env[STATEMENT]) == fields["db_statement_timeout_seconds"].default  # audit: 30


def test_tuned_values_reach_every_deployment() -> None:
    objects = render(TUNED)
    for component in WITH_DATABASE:
        env = {e["name"]: str(e["value"]) for e in container_env(objects, component) if "value" in e}
        assert env.get(CONNECT) == "2.5", component
        assert env.get(STATEMENT) == ("45" if component == "audit" else "20"), component


def test_raising_the_shared_bound_leaves_the_audit_services_own() -> None:
    tuned = deep_merge(WITH_IDENTITY, {"config": {"dbStatementTimeoutSeconds": 20}})
    assert env_of(tuned, "audit").get(STATEMENT) == "30"


def test_the_gateway_has_no_database_and_gets_neither() -> None:
    env = env_of(WITH_IDENTITY, "gateway")
    assert CONNECT not in env
    assert STATEMENT not in env


@pytest.mark.parametrize("component", WITH_DATABASE)
def test_the_service_reads_the_rendered_bounds(component: str) -> None:
    settings: Any = rendered_settings(TUNED, component)
    assert settings.db_connect_timeout_seconds == 2.5
    assert settings.db_statement_timeout_seconds == (45 if component == "audit" else 20)


@pytest.mark.parametrize("name", [CONNECT, STATEMENT])
def test_a_component_env_entry_of_the_same_name_is_refused(name: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(deep_merge(MINIMAL, {"timesheets": {"env": {name: "7"}}}))
    assert f"the chart sets {name} for this container" in str(refused.value)


def with_value(path: tuple[str, str], value: object) -> dict[str, Any]:
    return deep_merge(MINIMAL, {path[0]: {path[1]: value}})


BOUNDS = [
    (("config", "dbConnectTimeoutSeconds"), 120),
    (("config", "dbStatementTimeoutSeconds"), 600),
    (("audit", "dbStatementTimeoutSeconds"), 600),
]


@pytest.mark.parametrize(("path", "most"), BOUNDS)
@pytest.mark.parametrize("good", [0.5, 1, "most"])
def test_the_schema_takes_what_the_setting_takes(path: tuple[str, str], most: int, good: object) -> None:
    assert schema_refuses(with_value(path, most if good == "most" else good)) == ""


@pytest.mark.parametrize(("path", "most"), BOUNDS)
@pytest.mark.parametrize("bad", [0, -1, "10", None, "over"])
def test_the_schema_holds_the_settings_bounds(path: tuple[str, str], most: int, bad: object) -> None:
    refused = schema_refuses(with_value(path, most + 1 if bad == "over" else bad))
    # the value refused (null: Helm drops the key, and the schema requires it), not an unknown key
    assert path[1] in refused, refused
    assert "additional properties" not in refused, refused
