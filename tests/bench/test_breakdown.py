"""The breakdown of a profile by kind of work (bench/_breakdown.py): each stack in the category of its
innermost frame that has one, and the samples at a wait leaf counted apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._breakdown import OTHER, breakdown, category_of, main

ROOT = "Runner.run (asyncio/runners.py:118);LeanCycle.run_asgi (svckit/cycle.py:204)"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("stack", "category"),
    [
        # the innermost frame with a category wins: uuid5 under settlement_id is the audit event's
        (
            f"{ROOT};settlement_id (approvals/events.py:30);uuid5 (uuid.py:725)",
            "audit: events (outbox values, ids)",
        ),
        # an asyncio timeout is its caller's: the peer call's, or asyncpg's release
        (
            f"{ROOT};PeerHttp.request (approvals/peerhttp.py:203);timeout (asyncio/timeouts.py:145)",
            "peer HTTP client (pool, timeouts, parsing)",
        ),
        (
            f"{ROOT};PoolConnectionHolder.release (asyncpg/pool.py:270);"
            "Timeout.reschedule (asyncio/timeouts.py:71)",
            "connection pool (asyncpg's, svckit.db's uses)",
        ),
        (
            f"{ROOT};IdentityGate.admit (svckit/identity.py:599);"
            "IdentityVerifier.verify (svckit/identity.py:509)",
            "identity: check (verify, digest, headers)",
        ),
        (
            f"{ROOT};IdentityGate.admit (svckit/identity.py:620);"
            "ReplayMemory.first_use (svckit/replay.py:364)",
            "identity: replay memory (Redis)",
        ),
        (
            f"{ROOT};entry_from (approvals/peer.py:85);BaseModel.model_validate_json (pydantic/main.py:847)",
            "contract: read, validate, write",
        ),
        ("Runner.run (asyncio/runners.py:118)", "event loop (native: sockets, timers, callbacks)"),
        ("<module> (x.py:1);helper (os.py:3)", OTHER),
    ],
)
def test_category_of_the_innermost_frame_that_has_one(stack: str, category: str) -> None:
    assert category_of(stack.split(";")) == category


@pytest.mark.unit
def test_samples_at_a_wait_leaf_count_in_all_but_not_in_work() -> None:
    found = breakdown(
        [
            f"{ROOT};Workflow.decide (approvals/workflow.py:120);"
            "Connection._do_execute (asyncpg/connection.py:1800) 30\n",
            f"{ROOT};Connection.fetchrow (asyncpg/connection.py:775);Record.values (asyncpg/x.py:1) 10\n",
            "Runner.run (asyncio/runners.py:118) 50\n",
            f"{ROOT};LeanCycle._frame (svckit/cycle.py:334) 10\n",
            "a line without a count\n",
            "\n",
        ]
    )
    assert found.total == 100
    assert found.work_total == 20  # neither _do_execute's write nor the loop's native code
    assert found.samples["SQL statements (asyncpg)"] == 40
    assert found.work["SQL statements (asyncpg)"] == 10
    assert found.work["event loop (native: sockets, timers, callbacks)"] == 0
    assert found.work["serving: protocol, cycle, front, routing"] == 10
    first, *rows = found.lines()
    assert "100 samples, 20 not at a wait leaf" in first
    assert rows[0].split() == [
        "50.0%",
        "0.0%",
        "event",
        "loop",
        "(native:",
        "sockets,",
        "timers,",
        "callbacks)",
    ]


@pytest.mark.unit
def test_main_prints_each_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "run.decide.0.approvals"
    profile.write_text(f"{ROOT};decided (approvals/events.py:44) 4\n")
    assert main([str(profile)]) == 0
    printed = capsys.readouterr().out
    assert "== run.decide.0.approvals" in printed
    assert "100.0% 100.0%  audit: events (outbox values, ids)" in printed


def test_a_page_its_rows_and_its_cursor_are_the_contracts_writing() -> None:
    for leaf in (
        "page_json (timesheets/representation.py:130)",
        "rows_of (timesheets/store.py:97)",
        "encode (timesheets/cursor.py:33)",
    ):
        assert category_of(["ListEntries.__call__ (timesheets/api.py:180)", leaf]).startswith("contract")
    assert category_of(["encode (json/encoder.py:200)"]) == OTHER
