"""Signed checkpoints on a real trail: the signer, the routes, and what verification finds after the
database owner rewrote history (records changed and re-hashed, triggers re-enabled).

Each test has a trail of its own (a database, the service as its runtime role, checkpoints signed by
a :class:`audit.checkpointer.Checkpointer` driven by a fake clock), and plays the attacker with the
owner's connection.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from audit.app import create_app
from audit.checkpointer import Checkpointer
from audit.checkpoints import CheckpointKeys, PublicKeys, parse
from audit.keygrace import UNKNOWN_KEY_GRACE_SECONDS
from audit.settings import AuditSettings
from audit.store import AuditStore
from audit.trail import CheckpointTrail
from audit.verifier import BackgroundVerifier
from prometheus_client import REGISTRY
from svckit.db import Database
from svckit.settings import load_settings

from testkit.client import SignedApi
from testkit.clock import FakeClock
from testkit.fixtures import (
    Caller,
    create_migrated_database,
    drop_database,
    runtime_url,
    serve_app,
)
from testkit.tamper import owner_sql, rewrite_history

from .conftest import AUDITOR, PACKAGE_DIR, TIMESHEETS, EventFactory, wait_ready


def refusals() -> float:
    return REGISTRY.get_sample_value("audit_checkpoints_total", {"outcome": "refused"}) or 0.0


@dataclass
class Ledger:
    api: SignedApi
    owner: str  # the owner's URL: the attacker
    store: AuditStore  # as the service's runtime role
    clock: FakeClock
    keys: CheckpointKeys
    new_event: EventFactory

    def signer(self, keys: CheckpointKeys | None = None) -> Checkpointer:
        return Checkpointer(self.store, keys or self.keys, interval=60, clock=self.clock)

    async def ingest(self, count: int) -> None:
        events = [self.new_event(details={"n": n}) for n in range(count)]
        reply = await self.api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
        assert reply.body["accepted"] == count, reply.text

    async def verify(self) -> dict[str, Any]:
        reply = await self.api.call("GET", "/audit/verify", AUDITOR)
        assert reply.status == 200, reply.text
        body: dict[str, Any] = reply.body
        return body

    async def checkpoints(self) -> list[dict[str, Any]]:
        reply = await self.api.call("GET", "/audit/checkpoints?limit=100", AUDITOR)
        assert reply.status == 200, reply.text
        items: list[dict[str, Any]] = reply.body["items"]
        return items


@pytest.fixture
async def ledger(
    caller: Caller, identity_keys: dict[str, str], new_event: EventFactory
) -> AsyncIterator[Ledger]:
    """A trail with two checkpoints: records 1-5 signed as checkpoint 1, records 6-8 as checkpoint 2."""
    name = f"tsp_test_ck_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name, "audit", PACKAGE_DIR)
    keys_text = CheckpointKeys.generate("ck-1")
    try:
        env = {
            "DATABASE_URL": runtime_url(dsn, "audit"),
            **identity_keys,
            "AUDIT_CHECKPOINT_KEYS": keys_text,
            "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0",  # the test signs, with its own clock
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
        }
        database = Database(runtime_url(dsn, "audit"), schema="audit", application_name="audit-signer")
        await database.wait_connected(10)
        async with serve_app(create_app(load_settings(AuditSettings, env=env))) as url:
            await wait_ready(url)
            api = SignedApi(url, caller)
            ledger = Ledger(
                api,
                dsn,
                AuditStore(database, "audit"),
                FakeClock(),
                CheckpointKeys.parse(keys_text),
                new_event,
            )
            signer = ledger.signer()
            try:
                await ledger.ingest(5)
                assert (await signer.run_once()) is not None
                ledger.clock.advance(61)
                await ledger.ingest(3)
                assert (await signer.run_once()) is not None
                yield ledger
            finally:
                await api.close()
                await database.close()
    finally:
        await drop_database(name)


async def test_the_signer_signs_a_grown_head_once_and_chains_the_checkpoints(ledger: Ledger) -> None:
    signer = ledger.signer()
    await ledger.ingest(2)
    ledger.clock.advance(10)
    assert await signer.run_once() is None  # the newest checkpoint is younger than interval / 2
    ledger.clock.advance(30)
    third = await signer.run_once()
    assert third is not None
    assert (third.number, third.seq, third.count) == (3, 10, 10)
    ledger.clock.advance(61)
    assert await signer.run_once() is None  # the head did not move: nothing to sign
    items = await ledger.checkpoints()
    assert [i["number"] for i in items] == [3, 2, 1]
    assert [i["seq"] for i in items] == [10, 8, 5]
    assert items[0]["prev"] == ledger.keys.verify(items[1]["jws"]).digest
    body = await ledger.verify()
    assert body["ok"] is True
    assert body["checkpoints"] == {
        "checked": 3,
        "verified": 3,
        "latest": {"number": 3, "seq": 10, "signed_at": items[0]["signed_at"], "key_id": "ck-1"},
        "signatures_valid": True,
        "chain_matches": True,
    }


async def test_checkpoints_page_newest_first_and_verify_with_the_published_keys(
    ledger: Ledger, conforms: Any
) -> None:
    first = await ledger.api.call("GET", "/audit/checkpoints?limit=1", AUDITOR)
    conforms("CheckpointsPage", first.body)
    assert [i["number"] for i in first.body["items"]] == [2]
    second = await ledger.api.call(
        "GET", f"/audit/checkpoints?limit=1&cursor={first.body['next_cursor']}", AUDITOR
    )
    assert [i["number"] for i in second.body["items"]] == [1]
    assert second.body["next_cursor"] is None
    keys = await ledger.api.call("GET", "/audit/checkpoint-keys", AUDITOR)
    conforms("CheckpointKeySet", keys.body)
    published = PublicKeys.from_jwks(keys.body)
    for item in first.body["items"] + second.body["items"]:
        checkpoint = published.verify(item["jws"])
        assert (checkpoint.number, checkpoint.seq, checkpoint.head) == (
            item["number"],
            item["seq"],
            item["head"],
        )
    assert "d" not in keys.body["keys"][0]  # never a private part
    bad = await ledger.api.call("GET", "/audit/checkpoints?cursor=czE", AUDITOR)  # an events cursor
    assert bad.status == 422


async def test_a_history_rewritten_and_rechained_by_the_owner_fails_verification(ledger: Ledger) -> None:
    """The reported attack: record 7 changed, 7 and 8 re-hashed, the trigger enabled again. The chain
    alone verifies; held to checkpoint 2 (signed at record 8) it does not."""
    await rewrite_history(ledger.owner, 7, "actor_subject = 'mallory'")
    chain_alone = await ledger.store.verify()
    assert chain_alone.ok  # the attack works against the hash chain by itself
    body = await ledger.verify()
    assert body["ok"] is False
    assert body["first_bad"] == 6  # the first record after checkpoint 1, the last that still matches
    assert body["reason"] == (
        "records 6 to 8 differ from signed checkpoint 2: the history was rewritten and the chain "
        "recomputed after it was signed"
    )
    assert body["checkpoints"]["chain_matches"] is False
    assert body["checkpoints"]["signatures_valid"] is True  # the checkpoints are fine; the records are not
    assert REGISTRY.get_sample_value("audit_chain_ok") == 0


async def test_a_rewrite_right_after_a_checkpoint_is_pinned_to_its_record(ledger: Ledger) -> None:
    await rewrite_history(ledger.owner, 6, "details = '{\"n\": 999}'")
    body = await ledger.verify()
    assert (body["ok"], body["first_bad"]) == (False, 6)


async def test_the_signer_refuses_to_extend_a_rewritten_history(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    await ledger.ingest(2)
    await rewrite_history(ledger.owner, 3, "outcome = 'failure'")  # before checkpoint 2's head... and after 1
    before = refusals()
    ledger.clock.advance(61)
    with caplog.at_level(logging.ERROR, logger="audit.checkpoints"):
        assert await ledger.signer().run_once() is None
    assert refusals() == before + 1
    assert "the chain does not extend the newest checkpoint" in caplog.text
    assert [i["number"] for i in await ledger.checkpoints()] == [2, 1]


async def test_records_removed_after_a_checkpoint_are_reported_missing(ledger: Ledger) -> None:
    await owner_sql(ledger.owner, "DELETE FROM audit.records WHERE seq >= 7")
    body = await ledger.verify()
    assert (body["ok"], body["first_bad"]) == (False, 7)
    assert body["reason"].startswith("record 7 is missing: signed checkpoint 2 covers the chain up to seq 8")


async def test_what_deleting_the_newest_checkpoints_as_well_hides_and_what_still_sees_it(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit, precisely: an owner who rewrites history after checkpoint 1 *and* deletes checkpoint
    2 leaves a database that is consistent with itself — what still sees it: a copy of checkpoint 2
    kept outside the database, and a signer that is still running (it signed checkpoint 2)."""
    kept = {item["number"]: item["jws"] for item in await ledger.checkpoints()}
    running = ledger.signer()
    running.last_signed = ledger.keys.verify(kept[2])  # as the process that signed it remembers
    await rewrite_history(ledger.owner, 7, "actor_subject = 'mallory'")
    await owner_sql(ledger.owner, "DELETE FROM audit.checkpoints WHERE number = 2")
    assert (await ledger.verify())["ok"] is True  # the database alone: nothing to see
    retained = await ledger.store.verify(trail=CheckpointTrail(ledger.keys, kept))
    assert not retained.ok
    assert retained.first_bad == 6
    assert retained.trail is not None
    assert "checkpoint 2 is missing from the database (a retained copy has it)" in retained.trail.problems
    ledger.clock.advance(61)
    with caplog.at_level(logging.ERROR, logger="audit.checkpoints"):
        assert await running.run_once() is None
    assert "checkpoint 2, signed by this process, is no longer in the database" in caplog.text
    # a freshly started signer knows nothing of checkpoint 2, and would sign the rewrite: the reason
    # to keep copies of the checkpoints (log lines, exports) where the database's owner cannot reach
    assert (await ledger.signer().run_once()) is not None


async def test_a_checkpoint_forged_into_the_database_is_refused(ledger: Ledger) -> None:
    mallory = CheckpointKeys.parse(CheckpointKeys.generate("ck-1"))  # a key of its own, the same kid
    newest = ledger.keys.verify((await ledger.checkpoints())[0]["jws"])
    forged = mallory.sign(number=3, seq=8, head=newest.head, signed_at=newest.signed_at, prev=newest.digest)
    await owner_sql(
        ledger.owner,
        f"INSERT INTO audit.checkpoints (number, seq, head, signed_at, key_id, jws) VALUES "
        f"(3, 8, '{forged.head}', now(), 'ck-1', '{forged.jws}')",
    )
    body = await ledger.verify()
    assert body["ok"] is False
    assert body["checkpoints"]["signatures_valid"] is False
    assert body["checkpoints"]["problem"] == "checkpoint 3: the signature does not verify"
    ledger.clock.advance(61)
    before = refusals()
    assert await ledger.signer().run_once() is None
    assert refusals() == before + 1


async def test_after_a_key_rotation_the_head_is_signed_again_and_the_old_key_can_go(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    rotated = CheckpointKeys.parse(f"{CheckpointKeys.generate('ck-2')},{ledger_private(ledger)}")
    with caplog.at_level(logging.INFO, logger="audit.checkpoints"):
        third = await ledger.signer(rotated).run_once()  # unchanged head, new signing key
    assert third is not None
    assert (third.number, third.seq, third.key_id) == (3, 8, "ck-2")
    only_new = PublicKeys({"ck-2": rotated.keys["ck-2"]})  # ck-1 retired entirely
    result = await ledger.store.verify(trail=CheckpointTrail(only_new))
    assert result.ok, result.reason
    assert result.trail is not None
    assert (result.trail.checked, result.trail.verified) == (3, 1)
    # the JSON log line is a full copy of the checkpoint
    (line,) = [r for r in caplog.records if r.getMessage() == "audit checkpoint signed"]
    assert line.checkpoint["number"] == 3  # type: ignore[attr-defined]


def ledger_private(ledger: Ledger) -> str:
    """The ledger's own key as configuration text (kid:seed)."""
    import base64

    from cryptography.hazmat.primitives import serialization

    seed = ledger.keys.private["ck-1"].private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return "ck-1:" + base64.urlsafe_b64encode(seed).rstrip(b"=").decode()


async def test_a_row_that_is_no_checkpoint_is_left_out_of_the_listing_and_reported(ledger: Ledger) -> None:
    await owner_sql(
        ledger.owner,
        "INSERT INTO audit.checkpoints (number, seq, head, signed_at, key_id, jws) VALUES "
        f"(3, 9, '{'a' * 64}', now(), 'ck-1', 'not.a.checkpoint')",
    )
    assert [i["number"] for i in await ledger.checkpoints()] == [2, 1]
    body = await ledger.verify()
    assert body["ok"] is False
    assert body["checkpoints"]["problem"].startswith("checkpoint 3 is not a valid checkpoint")


async def test_checkpoints_cannot_be_changed_by_the_runtime_role(ledger: Ledger) -> None:
    conn = await asyncpg.connect(runtime_url(ledger.owner, "audit"))
    try:
        for statement in (
            "UPDATE audit.checkpoints SET seq = 0",
            "DELETE FROM audit.checkpoints",
            "TRUNCATE audit.checkpoints",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()


def outcomes(name: str) -> float:
    return REGISTRY.get_sample_value("audit_checkpoints_total", {"outcome": name}) or 0.0


async def test_a_rolling_key_rotation_is_no_refusal_at_the_replica_that_does_not_know_the_new_key_yet(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The runbook's rotation rolls the audit Deployment (RollingUpdate, maxUnavailable 0): a new pod
    (``ck-2`` first) signs the head again under ``ck-2`` while an old pod (``ck-1`` only) still runs
    its signer every interval. The old pod is not looking at tampering — a replica newer than itself
    signed — and must not raise the critical, security-incident refusal; it stands aside until it is
    replaced (or refuses once that lasts longer than any rollout)."""
    old = ledger.signer()  # a replica of the previous configuration, running on
    rotated = CheckpointKeys.parse(f"{CheckpointKeys.generate('ck-2')},{ledger_private(ledger)}")
    new = ledger.signer(rotated)
    third = await new.run_once()
    assert third is not None
    assert third.key_id == "ck-2"
    await ledger.ingest(2)
    ledger.clock.advance(61)
    refused, aside = outcomes("refused"), outcomes("unknown_key")
    with caplog.at_level(logging.WARNING, logger="audit.checkpoints"):
        assert await old.run_once() is None
    assert outcomes("refused") == refused, [r.getMessage() for r in caplog.records]
    assert outcomes("unknown_key") == aside + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # the new replica goes on signing; the old one's stand-aside left nothing behind
    fourth = await new.run_once()
    assert fourth is not None
    assert (fourth.number, fourth.seq, fourth.key_id) == (4, 10, "ck-2")
    result = await ledger.store.verify(trail=CheckpointTrail(rotated), observe=False)
    assert result.ok, result.reason


async def test_a_checkpoint_key_no_replica_comes_to_know_is_refused_after_the_rollout_grace(
    ledger: Ledger,
) -> None:
    """Standing aside is bounded: a checkpoint signed by a key this replica still does not know long
    after it first saw it (a forged row with a made-up kid, or a replica left on an old Secret) is
    the refusal it always was."""
    stranger = CheckpointKeys.parse(CheckpointKeys.generate("ck-x"))
    await stranger_signs(ledger, stranger)
    signer = ledger.signer()
    refused = outcomes("refused")
    assert await signer.run_once() is None
    assert outcomes("refused") == refused
    ledger.clock.advance(UNKNOWN_KEY_GRACE_SECONDS + 1)
    assert await signer.run_once() is None
    assert outcomes("refused") == refused + 1


async def stranger_signs(ledger: Ledger, keys: CheckpointKeys) -> None:
    """The next checkpoint over the current head, signed by ``keys`` (which the ledger's signer lacks)."""
    store = ledger.store.checkpoints
    async with ledger.store.database.transaction() as conn:
        stored = await store.latest(conn)
        assert stored is not None
        last = parse(stored.jws)
        await store.insert(
            conn,
            keys.sign(
                number=last.number + 1,
                seq=last.seq,
                head=last.head,
                signed_at=datetime.now(UTC),
                prev=last.digest,
            ),
        )


async def test_the_runbook_rotation_leaves_every_replica_able_to_verify_what_the_others_sign(
    ledger: Ledger,
) -> None:
    """docs/runbook.md's rotation: the new key second (every pod verifies it), then first. While the
    second rollout runs, pods of both steps sign and verify side by side: nothing stands aside, nothing
    is refused, and the background verifier of either kind of pod finds the trail intact (the two may
    sign an unchanged head again under their own first key, in turn, until the rollout ends)."""
    new_key = CheckpointKeys.generate("ck-2")
    step_one = CheckpointKeys.parse(f"{ledger_private(ledger)},{new_key}")
    step_two = CheckpointKeys.parse(f"{new_key},{ledger_private(ledger)}")
    before = {name: outcomes(name) for name in ("refused", "unknown_key")}
    one, two = ledger.signer(step_one), ledger.signer(step_two)
    for _ in range(2):
        await ledger.ingest(1)
        ledger.clock.advance(61)
        assert await two.run_once() is not None
        await one.run_once()  # may sign the unchanged head once more under ck-1: it verifies too
    assert {name: outcomes(name) for name in before} == before
    for keys in (step_one, step_two):
        result = await ledger.store.verify(trail=CheckpointTrail(keys), observe=False)
        assert result.ok, result.reason


async def test_the_background_verifier_of_a_replica_not_given_the_new_key_waits_before_it_cries_broken(
    ledger: Ledger,
) -> None:
    """The old pod's background verifier during the same rollout: the newest checkpoints are signed by
    a key it was not given. The records still match every checkpoint it can verify, so it does not set
    ``audit_chain_ok`` to 0 (the critical TimesheetsAuditChainBroken) while a rollout may explain it;
    if the key stays unknown past the grace, it is a checkpoint nobody here can vouch for: broken."""
    rotated = CheckpointKeys.parse(f"{CheckpointKeys.generate('ck-2')},{ledger_private(ledger)}")
    assert await ledger.signer(rotated).run_once() is not None  # a new pod signs under ck-2
    old_keys = PublicKeys({"ck-1": ledger.keys.keys["ck-1"]})
    verifier = BackgroundVerifier(
        ledger.store, interval=60, full_interval=3600, keys=old_keys, clock=ledger.clock
    )
    first = await verifier.run_once()
    assert first.ok, first.reason
    assert REGISTRY.get_sample_value("audit_chain_ok") == 1
    await ledger.ingest(1)
    again = await verifier.run_once()  # incremental: the unknown checkpoint is looked at again
    assert again.ok, again.reason
    ledger.clock.advance(UNKNOWN_KEY_GRACE_SECONDS + 1)
    late = await verifier.run_once()
    assert not late.ok
    assert "does not know" in (late.reason or "")
    assert REGISTRY.get_sample_value("audit_chain_ok") == 0


async def test_a_new_made_up_key_id_now_and_then_does_not_start_the_grace_again(ledger: Ledger) -> None:
    """Whoever can write checkpoint rows cannot keep the signer standing aside by writing one with a
    fresh made-up key id before each grace ends: the grace runs from the first unknown key met."""
    signer = ledger.signer()
    await stranger_signs(ledger, CheckpointKeys.parse(CheckpointKeys.generate("ck-x")))
    refused = outcomes("refused")
    assert await signer.run_once() is None
    ledger.clock.advance(UNKNOWN_KEY_GRACE_SECONDS - 60)
    await stranger_signs(ledger, CheckpointKeys.parse(CheckpointKeys.generate("ck-y")))
    assert await signer.run_once() is None
    assert outcomes("refused") == refused
    ledger.clock.advance(120)
    assert await signer.run_once() is None
    assert outcomes("refused") == refused + 1


def grace_since(task: str) -> float | None:
    """``audit_checkpoint_unknown_key_since_timestamp_seconds{task}``: when this process first met a
    newest checkpoint signed by a key it was not given, still unresolved (0: none)."""
    name = "audit_checkpoint_unknown_key_since_timestamp_seconds"
    return REGISTRY.get_sample_value(name, {"task": task})


async def test_a_signer_standing_aside_says_since_when_so_that_a_half_done_rotation_is_seen(
    ledger: Ledger,
) -> None:
    """A replica left on the old AUDIT_CHECKPOINT_KEYS stands aside quietly for 15 minutes and then
    raises the critical refusal. Its first sighting, on the wall clock, is a gauge an alert can read
    long before that (TimesheetsAuditCheckpointKeyUnknown); it stays at the first sighting while the
    replica keeps standing aside, and goes back to 0 once the newest checkpoint's key is known here."""
    new_key = CheckpointKeys.generate("ck-2")
    old = ledger.signer()  # given ck-1 only
    assert await ledger.signer(CheckpointKeys.parse(f"{new_key},{ledger_private(ledger)}")).run_once()
    await ledger.ingest(1)
    ledger.clock.advance(61)
    met = ledger.clock.time()
    assert await old.run_once() is None  # stands aside
    assert grace_since("audit-checkpoint") == met
    ledger.clock.advance(300)
    assert await old.run_once() is None
    assert grace_since("audit-checkpoint") == met  # from the first sighting, not the latest
    # the rollout is undone: a replica signing with ck-1 (and verifying ck-2) signs the head again
    assert await ledger.signer(CheckpointKeys.parse(f"{ledger_private(ledger)},{new_key}")).run_once()
    await old.run_once()
    assert grace_since("audit-checkpoint") == 0


async def test_a_verifier_leaving_checkpoints_unchecked_says_since_when(ledger: Ledger) -> None:
    """The background verifier's grace (it leaves the newest checkpoints unchecked, then reports the
    chain broken) is on the same gauge, under its own task."""
    new_key = CheckpointKeys.generate("ck-2")
    assert await ledger.signer(CheckpointKeys.parse(f"{new_key},{ledger_private(ledger)}")).run_once()
    verifier = BackgroundVerifier(
        ledger.store,
        interval=60,
        full_interval=3600,
        keys=PublicKeys({"ck-1": ledger.keys.keys["ck-1"]}),
        clock=ledger.clock,
    )
    met = ledger.clock.time()
    assert (await verifier.run_once()).ok
    assert grace_since("audit-verifier") == met
    ledger.clock.advance(60)
    assert (await verifier.run_once()).ok
    assert grace_since("audit-verifier") == met
    assert await ledger.signer(CheckpointKeys.parse(f"{ledger_private(ledger)},{new_key}")).run_once()
    assert (await verifier.run_once()).ok  # the newest is ck-1's, chained to ck-2's: all vouched for
    assert grace_since("audit-verifier") == 0
