"""Service-level contracts of approvals: OpenAPI coverage, metrics, settings, the reconciler's lease."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from approvals import events, store
from approvals.app import create_app
from approvals.openapi import document
from approvals.settings import ApprovalsSettings
from approvals.store import DecisionRow
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


@pytest.mark.parametrize(
    "settled", ["state = 'applied', applied_at = now()", "state = 'void', void_reason = 'entry_gone'"]
)
async def test_settled_decisions_are_final(db: asyncpg.Connection, settled: str) -> None:
    """The database itself refuses to change or delete a settled decision: any column, to any value
    (its own included), settled again or otherwise, with what was decided kept or not."""
    decision_id = (await pending_decision(db)).id
    await db.execute(f"UPDATE approvals.decisions SET {settled} WHERE id = $1", decision_id)
    for statement in (
        "UPDATE approvals.decisions SET decision = 'rejected' WHERE id = $1",
        "UPDATE approvals.decisions SET state = 'void', void_reason = 'x', applied_at = NULL WHERE id = $1",
        "UPDATE approvals.decisions SET state = 'pending', void_reason = NULL, applied_at = NULL "
        "WHERE id = $1",
        "UPDATE approvals.decisions SET attempts = attempts + 1, last_error = 'x' WHERE id = $1",
        "UPDATE approvals.decisions SET updated_at = clock_timestamp() WHERE id = $1",
        "UPDATE approvals.decisions SET state = state WHERE id = $1",
        "DELETE FROM approvals.decisions WHERE id = $1",
    ):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match=r"never deleted|cannot change"):
            await db.execute(statement, decision_id)


#: the columns that say what was decided: a pending decision may change its state, attempts, errors
#: and times, never these (each with a value different from :func:`pending_decision`'s)
DECIDED = {
    "id": "gen_random_uuid()",
    "entry_id": "gen_random_uuid()",
    "decision": "'rejected'",
    "comment": "'changed'",
    "approver_issuer": "'other-issuer'",
    "approver_subject": "'other-subject'",
    "approver_kind": "'client'",
    "decided_at": "decided_at - interval '1 hour'",
}


async def pending_decision(db: asyncpg.Connection) -> DecisionRow:
    """A decision recorded as the service records it: pending."""
    record = await db.fetchrow(
        f"""INSERT INTO approvals.decisions (id, entry_id, decision, approver_issuer, approver_subject,
                                             request_id)
            VALUES ($1, $2, 'approved', 'i', 's', 'r')
            RETURNING {store.COLUMNS}""",
        uuid.uuid4(),
        uuid.uuid4(),
    )
    assert record is not None
    return DecisionRow.of(record)


@pytest.mark.parametrize("column", sorted(DECIDED))
async def test_what_was_decided_never_changes_while_pending(db: asyncpg.Connection, column: str) -> None:
    """A pending decision may be settled or counted, but what was decided and by whom stays."""
    row = await pending_decision(db)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="what was decided"):
        await db.execute(f"UPDATE approvals.decisions SET {column} = {DECIDED[column]} WHERE id = $1", row.id)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="what was decided"):
        # also together with settling it, as the settling statements would
        await db.execute(
            f"""UPDATE approvals.decisions SET {column} = {DECIDED[column]}, state = 'applied',
                                               applied_at = now() WHERE id = $1""",
            row.id,
        )
    assert await db.fetchval("SELECT state FROM approvals.decisions WHERE id = $1", row.id) == "pending"
    # set to what it is, it has not changed: allowed, as it always was
    await db.execute(
        f"UPDATE approvals.decisions SET {column} = {column}, attempts = 1 WHERE id = $1", row.id
    )


async def test_a_pending_decision_is_never_deleted_either(db: asyncpg.Connection) -> None:
    row = await pending_decision(db)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="never deleted"):
        await db.execute("DELETE FROM approvals.decisions WHERE id = $1", row.id)


async def test_settling_a_pending_decision_does_not_call_the_guard(db: asyncpg.Connection) -> None:
    """The guard of settled decisions runs only for the changes it refuses (its triggers' ``WHEN``
    and column list say which, approvals migration 0005): settling a pending decision, counting an
    attempt at it, leave its plpgsql function uncalled (a call per decision of Postgres's time for a
    check that passes). Counted by the server in this transaction
    (``pg_stat_xact_user_functions``, with ``track_functions = 'pl'``), a function of the test's
    own called once as the control that counting is on."""
    guard = "approvals.decisions_settled_are_final"
    rows = [await pending_decision(db) for _ in range(3)]

    async def calls() -> int:
        value = await db.fetchval(
            "SELECT calls FROM pg_stat_xact_user_functions WHERE funcid = $1::regproc", guard
        )
        return int(value or 0)

    transaction = db.transaction()  # rolled back: the settlements' events stay out of the outbox
    await transaction.start()
    try:
        await db.execute("SET LOCAL track_functions = 'pl'")
        await db.execute("SET LOCAL search_path = approvals")
        applied = await db.fetchrow(store.MARK_APPLIED, rows[0].id, *events.decided(rows[0], "request"))
        voided = await db.fetchrow(
            store.MARK_VOID, rows[1].id, "entry_gone", *events.voided(rows[1], "entry_gone", "request")
        )
        await db.execute(store.RECORD_ATTEMPT, rows[2].id, "timeout")
        assert applied is not None
        assert applied["state"] == "applied"
        assert voided is not None
        assert voided["state"] == "void"
        assert await calls() == 0
        # the control: a plpgsql function called here is counted (a call that raises is not, so the
        # guard's own refusals cannot serve)
        await db.execute(
            "CREATE FUNCTION pg_temp.probe() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$"
        )
        await db.execute("SELECT pg_temp.probe()")
        probed = await db.fetchval("SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = 'probe'")
        assert probed == 1
    finally:
        await transaction.rollback()


async def test_migrate_command_is_repeatable(test_run_id: str, service_env: dict[str, str]) -> None:
    """``python -m approvals migrate`` (the Helm hook Job) on a fresh database, then again."""
    await assert_migrate_command_repeatable("approvals", f"tsp_test_{test_run_id}_ap_migrate", service_env)
