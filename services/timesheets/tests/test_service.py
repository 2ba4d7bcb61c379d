"""Service-level contracts: every route documented in /openapi.json, domain metrics exported."""

from __future__ import annotations

import aiohttp
import pytest
from openapi_spec_validator import validate
from svckit.identity import Identity
from svckit.openapi import app_operations, documented_operations
from svckit.settings import load_settings
from timesheets.app import create_app
from timesheets.settings import TimesheetsSettings

from testkit.client import SignedApi
from testkit.fixtures import (
    assert_migrate_command_repeatable,
    new_pair_keys,
    user,
    wait_for_metrics,
)


@pytest.mark.unit
def test_every_route_is_documented() -> None:
    app = create_app(load_settings(TimesheetsSettings, env=new_pair_keys()))
    from timesheets.openapi import document

    doc = document()
    assert app_operations(app) == documented_operations(doc)
    assert doc["openapi"].startswith("3.1")
    validate(doc)


async def test_openapi_is_served(timesheets_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{timesheets_url}/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    assert "/timesheets/{id}" in doc["paths"]


async def test_domain_metrics(api: SignedApi, timesheets_url: str) -> None:
    who: Identity = user("metrics-user", "create:timesheets", "delete:timesheets")
    made = await api.call("POST", "/timesheets", who, json={"date": "2026-01-01", "project": "M", "hours": 1})
    assert (await api.call("DELETE", f"/timesheets/{made.body['id']}", who)).status == 204
    names = (
        'timesheets_entries_created_total{source="api"}',
        'timesheets_entries_created_total{source="upload"}',
        "timesheets_entries_deleted_total",
        'outbox_pending_events{service="timesheets"}',
        'outbox_oldest_event_age_seconds{service="timesheets"}',
    )
    # The relay refreshes its backlog gauges on its own schedule (every few seconds).
    await wait_for_metrics(timesheets_url, names)


async def test_migrate_command_is_repeatable(test_run_id: str, service_env: dict[str, str]) -> None:
    """``python -m timesheets migrate`` (the Helm hook Job) on a fresh database, then again."""
    await assert_migrate_command_repeatable("timesheets", f"tsp_test_{test_run_id}_ts_migrate", service_env)
