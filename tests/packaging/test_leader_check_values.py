"""``config.dbLeaderCheckSeconds`` renders ``DB_LEADER_CHECK_SECONDS`` into the four services with a
database (never the gateway): how often a pod asks which Postgres server ``DATABASE_URL`` leads to and
closes its pooled connections on another one (svckit.dbserver; a failover whose old primary stays up,
docs/runbook.md "Split brain"). The chart's default is the setting's, the schema holds the setting's
bounds (0, the check off, to 3600)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.packaging.support import MINIMAL, deep_merge
from tests.packaging.test_database_bounds_values import WITH_DATABASE, WITH_IDENTITY
from tests.packaging.test_ops_values import env_of, schema_refuses
from tests.packaging.test_service_settings import rendered_settings, settings_class

NAME = "DB_LEADER_CHECK_SECONDS"
TUNED = deep_merge(WITH_IDENTITY, {"config": {"dbLeaderCheckSeconds": 2.5}})


@pytest.mark.parametrize("component", WITH_DATABASE)
def test_the_chart_default_is_the_settings_default(component: str) -> None:
    env = env_of(WITH_IDENTITY, component)
    assert float(env[NAME]) == settings_class(component).model_fields["db_leader_check_seconds"].default


@pytest.mark.parametrize("component", WITH_DATABASE)
def test_the_service_reads_the_rendered_value(component: str) -> None:
    settings: Any = rendered_settings(TUNED, component)
    assert settings.db_leader_check_seconds == 2.5


def test_the_gateway_has_no_database_and_gets_none() -> None:
    assert NAME not in env_of(WITH_IDENTITY, "gateway")


@pytest.mark.parametrize("good", [0, 0.5, 3600])
def test_the_schema_takes_what_the_setting_takes(good: object) -> None:
    assert schema_refuses(deep_merge(MINIMAL, {"config": {"dbLeaderCheckSeconds": good}})) == ""


@pytest.mark.parametrize("bad", [-1, 3601, "5", None])
def test_the_schema_holds_the_settings_bounds(bad: object) -> None:
    refused = schema_refuses(deep_merge(MINIMAL, {"config": {"dbLeaderCheckSeconds": bad}}))
    assert "dbLeaderCheckSeconds" in refused, refused
