"""Service-level contracts of approvals: OpenAPI coverage, metrics, settings, the reconciler's lease."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from approvals.app import create_app
from approvals.openapi import document
from approvals.settings import ApprovalsSettings
from openapi_spec_validator import validate
from svckit.openapi import app_operations, documented_operations
from svckit.settings import SettingsError, load_settings

from testkit.client import SignedApi
from testkit.fixtures import (
    assert_migrate_command_repeatable,
    new_pair_keys,
    user,
    wait_for_metrics,
)


@pytest.mark.unit
def test_every_route_is_documented() -> None:
    app = create_app(load_settings(ApprovalsSettings, env=new_pair_keys()))
    assert app_operations(app) == documented_operations(document())
    validate(document())


def test_bad_settings_stop_the_process() -> None:
    with pytest.raises(SettingsError):
        load_settings(ApprovalsSettings, env={**new_pair_keys(), "APPLY_ATTEMPTS": "0"})


async def test_metrics_after_a_decision(
    approvals: SignedApi, timesheets: SignedApi, approvals_url: str
) -> None:
    alice = user(f"alice-{uuid.uuid4().hex[:6]}", "create:timesheets")
    made = await timesheets.call(
        "POST", "/timesheets", alice, json={"date": "2026-01-05", "project": "M", "hours": 2}
    )
    boss = user(f"boss-{uuid.uuid4().hex[:6]}", "approve:timesheets")
    assert (
        await approvals.call("PUT", f"/approvals/{made.body['id']}", boss, json={"decision": "rejected"})
    ).status == 200
    names = (
        'approvals_decisions_total{decision="approved"}',
        "approvals_decisions_pending",
        "approvals_oldest_pending_decision_age_seconds",
        'approvals_reconciliations_total{outcome="applied"}',
        'outbox_pending_events{service="approvals"}',
    )
    # The relay's and the reconciler's gauges are refreshed on their own schedules.
    text = await wait_for_metrics(approvals_url, names)
    rejected = next(
        line
        for line in text.splitlines()
        if line.startswith('approvals_decisions_total{decision="rejected"}')
    )
    assert float(rejected.split()[-1]) >= 1


async def test_settled_decisions_are_final(db: asyncpg.Connection) -> None:
    """The database itself refuses to change or delete a settled decision."""
    decision_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO approvals.decisions (id, entry_id, decision, approver_issuer, approver_subject,
                                            state, applied_at)
           VALUES ($1, $2, 'approved', 'i', 's', 'applied', now())""",
        decision_id,
        uuid.uuid4(),
    )
    for statement in (
        "UPDATE approvals.decisions SET decision = 'rejected' WHERE id = $1",
        "UPDATE approvals.decisions SET state = 'void', void_reason = 'x', applied_at = NULL WHERE id = $1",
        "DELETE FROM approvals.decisions WHERE id = $1",
    ):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError):
            await db.execute(statement, decision_id)


async def test_migrate_command_is_repeatable(test_run_id: str, service_env: dict[str, str]) -> None:
    """``python -m approvals migrate`` (the Helm hook Job) on a fresh database, then again."""
    await assert_migrate_command_repeatable("approvals", f"tsp_test_{test_run_id}_ap_migrate", service_env)
