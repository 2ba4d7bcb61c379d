"""The benchmarks' ``reference_identity`` case measures what it says: the reference app honouring the
identity contract refuses an unsigned request, a signature by another key and a signed request sent
twice, and answers signed ones, its approvals routes calling its internal timesheets routes signed as
``service:approvals`` (a decision goes through all three gates); the plain reference answers without
any of that. The benchmark's own check before its load (:func:`bench.api.refuses_unsigned`) tells the
two apart."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from svckit.migrations import migrate

from bench._backing import fresh_database
from bench.api import refuses_unsigned, start_reference, start_reference_audited
from bench.approvals import DECISION, ROOT, entry_uuid, manager, seed
from testkit.fixtures import ServiceProcess, new_pair_keys, pair_signer

LIST = "/timesheets?limit=20"


def call(url: str, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
    request = urllib.request.Request(url + target, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database(f"tsp_test_reference_identity_{uuid.uuid4().hex[:8]}") as url:
        asyncio.run(seed(url, 64))
        yield url


def test_the_gated_reference_checks_the_identity_contract(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    keys = new_pair_keys("t")
    gated_env = {
        **keys,
        "REFERENCE_IDENTITY": "1",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"tsp-test:{uuid.uuid4().hex}:",
    }
    gated = start_reference(database, tmp_path, gated_env, "reference_identity")
    plain = start_reference(database, tmp_path)
    try:
        gated_url: str = gated.reference_url  # type: ignore[attr-defined]
        plain_url: str = plain.reference_url  # type: ignore[attr-defined]
        assert refuses_unsigned(gated_url)
        assert not refuses_unsigned(plain_url)

        # a timesheets route: the gateway → timesheets key
        to_timesheets = pair_signer(keys, "gateway", "timesheets")
        reader = manager(1)
        headers = to_timesheets.headers(reader, method="GET", target=LIST)
        assert call(gated_url, "GET", LIST, headers)[0] == 200
        assert call(gated_url, "GET", LIST, headers)[0] == 401  # the same nonce again: a replay
        stranger = pair_signer(new_pair_keys("x"), "gateway", "timesheets")
        assert call(gated_url, "GET", LIST, stranger.headers(reader, method="GET", target=LIST))[0] == 401

        # an approvals route: the gateway → approvals key; its hops signed approvals → timesheets
        to_approvals = pair_signer(keys, "gateway", "approvals")
        target = f"/approvals/{entry_uuid(3)}"
        signed = to_approvals.headers(manager(0), method="PUT", target=target, body=DECISION)
        json_headers = {**signed, "Content-Type": "application/json"}
        status, decided = call(gated_url, "PUT", target, json_headers, DECISION)
        assert status == 200, status
        assert decided["state"] == "applied"
        assert decided["entry"]["status"] == "approved"
        # the gateway → timesheets key does not open an approvals route
        wrong = to_timesheets.headers(
            manager(0), method="PUT", target=f"/approvals/{entry_uuid(4)}", body=DECISION
        )
        assert call(gated_url, "PUT", f"/approvals/{entry_uuid(4)}", wrong, DECISION)[0] == 401
    finally:
        for process in (gated, plain):
            process.terminate()
            process.wait(10)


@pytest.fixture
def audited_database() -> Iterator[str]:
    """A database of its own: the other test's decision leaves stub rows (the plain reference's) in
    the timesheets outbox, which no audit service would take."""
    with fresh_database(f"tsp_test_reference_audited_{uuid.uuid4().hex[:8]}") as url:
        asyncio.run(seed(url, 8))
        yield url


def test_the_audited_reference_relays_whole_events_into_an_audit_trail(
    audited_database: str, redis_url: str, tmp_path: Path
) -> None:
    """``reference_audited`` does the consistency rule's work the plain reference skips: a create's and
    a decision's outbox rows are whole audit events, relayed by the kit's relays (both outboxes) to an
    audit service of its own and chained there (the plain reference's rows stay unread)."""
    asyncio.run(migrate(audited_database, "audit", ROOT / "services" / "audit" / "audit" / "migrations"))
    keys = new_pair_keys("a")
    started: list[ServiceProcess] = []
    audit, audited = start_reference_audited(
        audited_database, tmp_path, {**keys, "REDIS_URL": redis_url}, f"tsp-test:{uuid.uuid4().hex}:", started
    )
    try:
        url: str = audited.reference_url  # type: ignore[attr-defined]
        assert refuses_unsigned(url)
        signer = pair_signer(keys, "gateway", "timesheets")
        body = b'{"date":"2026-11-30","project":"Relayed","hours":1.5,"notes":"bench"}'
        headers = signer.headers(manager(2), method="POST", target="/timesheets", body=body)
        status, created = call(
            url, "POST", "/timesheets", {**headers, "Content-Type": "application/json"}, body
        )
        assert status == 201, status

        # a decision: its two events, the entry's (timesheets outbox) and the decision's (approvals')
        to_approvals = pair_signer(keys, "gateway", "approvals")
        target = f"/approvals/{entry_uuid(1)}"
        signed = to_approvals.headers(manager(0), method="PUT", target=target, body=DECISION)
        status, decided = call(url, "PUT", target, {**signed, "Content-Type": "application/json"}, DECISION)
        assert status == 200, status
        assert decided["entry"]["status"] == "approved"

        async def recorded() -> list[Any]:
            conn = await asyncpg.connect(audited_database)
            try:
                for _ in range(100):
                    rows = await conn.fetch(
                        "SELECT r.source, r.action, r.resource_id, r.details,"
                        " (SELECT count(*) FROM timesheets.outbox) + (SELECT count(*) FROM approvals.outbox)"
                        " AS waiting FROM audit.records r ORDER BY r.seq"
                    )
                    if len(rows) >= 3 and rows[0]["waiting"] == 0:
                        return list(rows)
                    await asyncio.sleep(0.1)
                return []
            finally:
                await conn.close()

        rows = asyncio.run(recorded())
        assert rows, "the events never reached the audit trail (or stayed in an outbox)"
        found = {(row["source"], row["action"], row["resource_id"]) for row in rows}
        assert found == {
            ("timesheets", "timesheet.created", str(created["id"])),
            ("timesheets", "timesheet.decided", str(entry_uuid(1))),
            ("approvals", "approval.decided", str(entry_uuid(1))),
        }, found
        assert json.loads(rows[0]["details"])["project"] == "Relayed"
    finally:
        audited.terminate()
        audited.wait(10)
        audit.stop()
