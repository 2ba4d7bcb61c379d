"""``GET /audit/verify`` over a range: from a signed checkpoint (``from_checkpoint=<n>|latest``, or
``since=<seq>``: the newest checkpoint at or before it) to the head (or ``until=<seq>``).

A trail of some thousands of records with checkpoints at 1000, 2000 and 3000 (and ten records after
the newest); the attacker is the database's owner. No timing: a ranged walk is shown to touch only its
range by what it reports (``checked``; a record altered outside the range that it does not report and
the full walk does; one inside that it reports) and to be anchored by what it refuses (a checkpoint
whose signature does not verify, a record that no longer holds the anchor's signed head).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from audit import metrics
from audit.app import create_app
from audit.checkpointer import Checkpointer
from audit.checkpoints import Checkpoint, CheckpointKeys
from audit.settings import AuditSettings
from audit.store import AuditStore
from prometheus_client import REGISTRY
from svckit.db import Database
from svckit.settings import load_settings

from testkit.auditevents import make_event
from testkit.client import Reply, SignedApi
from testkit.clihost import CliHost, run_module
from testkit.clock import FakeClock
from testkit.fixtures import (
    Caller,
    create_migrated_database,
    drop_database,
    runtime_url,
    serve_app,
)
from testkit.tamper import rewrite_history

from .conftest import AUDITOR, PACKAGE_DIR, TIMESHEETS, wait_ready

#: records signed by each checkpoint: 1000, 2000, 3000; then :data:`AFTER` more, not yet signed
STEP = 1000
AFTER = 10
HEAD = 3 * STEP + AFTER
ALTERED = "actor_subject = 'mallory'"


@dataclass
class Ranged:
    api: SignedApi
    owner: str  # the owner's URL: the attacker
    env: dict[str, str]
    checkpoints: dict[int, Checkpoint]

    async def verify(self, **params: str) -> dict[str, Any]:
        reply = await self.api.call("GET", "/audit/verify", AUDITOR, params=params or None)
        assert reply.status == 200, reply.text
        body: dict[str, Any] = reply.body
        return body

    async def refused(self, **params: str) -> Reply:
        reply = await self.api.call("GET", "/audit/verify", AUDITOR, params=params)
        assert reply.status == 422, reply.text
        assert reply.problem, reply.text
        return reply


async def ingest(api: SignedApi, count: int) -> None:
    for start in range(0, count, 500):
        events = [make_event(details={"n": start + n}) for n in range(min(500, count - start))]
        reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
        assert reply.status == 200, reply.text


@pytest.fixture(scope="module")
async def ranged(caller: Caller, identity_keys: dict[str, str]) -> AsyncIterator[Ranged]:
    name = f"tsp_test_ranged_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name, "audit", PACKAGE_DIR)
    keys_text = CheckpointKeys.generate("rv-1")
    try:
        env = {
            "DATABASE_URL": runtime_url(dsn, "audit"),
            **identity_keys,
            "AUDIT_CHECKPOINT_KEYS": keys_text,
            "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0",  # the fixture signs, with its own clock
            "AUDIT_VERIFY_INTERVAL_SECONDS": "0",
        }
        database = Database(runtime_url(dsn, "audit"), schema="audit", application_name="audit-signer")
        await database.wait_connected(10)
        try:
            async with serve_app(create_app(load_settings(AuditSettings, env=env))) as url:
                await wait_ready(url)
                api = SignedApi(url, caller)
                try:
                    clock = FakeClock()
                    signer = Checkpointer(
                        AuditStore(database, "audit"), CheckpointKeys.parse(keys_text), 60, clock
                    )
                    signed: dict[int, Checkpoint] = {}
                    for _ in range(3):
                        await ingest(api, STEP)
                        checkpoint = await signer.run_once()
                        assert checkpoint is not None
                        signed[checkpoint.number] = checkpoint
                        clock.advance(61)
                    await ingest(api, AFTER)
                    assert [(c.number, c.seq) for c in signed.values()] == [(1, 1000), (2, 2000), (3, 3000)]
                    yield Ranged(api, dsn, env, signed)
                finally:
                    await api.close()
        finally:
            await database.close()
    finally:
        await drop_database(name)


@pytest.fixture(autouse=True)
async def intact_after(ranged: Ranged) -> AsyncIterator[None]:
    """Each test leaves the shared trail as it found it (what :func:`tampered` restores)."""
    yield
    body = await ranged.verify()
    assert (body["ok"], body["checked"]) == (True, HEAD), body


@contextlib.asynccontextmanager
async def tampered(owner: str, table: str, where: str, *statements: str) -> AsyncIterator[None]:
    """``statements`` as the owner with the append-only triggers off; afterwards the rows of ``table``
    matching ``where`` are put back as they were, those the statements added removed (the module's
    trail is shared by its tests)."""
    key = {"records": "seq", "checkpoints": "number"}[table]
    conn = await asyncpg.connect(owner)
    try:
        saved = await conn.fetch(f"SELECT * FROM audit.{table} WHERE {where}")
        await owner_run(conn, *statements)
        try:
            yield
        finally:
            async with conn.transaction():
                await conn.execute("ALTER TABLE audit.records DISABLE TRIGGER USER")
                await conn.execute("ALTER TABLE audit.checkpoints DISABLE TRIGGER USER")
                kept = [row[key] for row in saved]
                await conn.execute(f"DELETE FROM audit.{table} WHERE ({where}) AND {key} <> ALL($1)", kept)
                for row in saved:  # changed back, or inserted again if deleted
                    columns = list(row.keys())
                    values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
                    assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
                    await conn.execute(
                        f"INSERT INTO audit.{table} ({', '.join(columns)}) VALUES ({values})"
                        f" ON CONFLICT ({key}) DO UPDATE SET {assignments}",
                        *row.values(),
                    )
                await conn.execute("ALTER TABLE audit.checkpoints ENABLE TRIGGER USER")
                await conn.execute("ALTER TABLE audit.records ENABLE TRIGGER USER")
    finally:
        await conn.close()


async def owner_run(conn: asyncpg.Connection, *statements: str) -> None:
    async with conn.transaction():
        await conn.execute("ALTER TABLE audit.records DISABLE TRIGGER USER")
        await conn.execute("ALTER TABLE audit.checkpoints DISABLE TRIGGER USER")
        for statement in statements:
            await conn.execute(statement)
        await conn.execute("ALTER TABLE audit.checkpoints ENABLE TRIGGER USER")
        await conn.execute("ALTER TABLE audit.records ENABLE TRIGGER USER")


def anchor_of(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "kind": "checkpoint",
        "number": checkpoint.number,
        "seq": checkpoint.seq,
        "hash": checkpoint.head,
        "key_id": "rv-1",
        "signed_at": checkpoint.signed_at.isoformat().replace("+00:00", "Z"),  # the audit API's spelling
    }


async def test_from_the_latest_checkpoint_only_the_records_it_signed_and_after_are_walked(
    ranged: Ranged, conforms: Any
) -> None:
    """The answer names the range and what anchored it: "from checkpoint 3 (signed by rv-1 at T) to
    the head 3010, records up to 3000 as signed". The walk read the 11 records of the range."""
    body = await ranged.verify(from_checkpoint="latest")
    conforms("VerifyResult", body)
    assert body["ok"] is True, body
    assert body["checked"] == AFTER + 1
    latest = ranged.checkpoints[3]
    assert body["range"] == {
        "from_seq": 3000,
        "to_seq": HEAD,
        "to_head": True,
        "signed_through": 3000,
        "anchor": anchor_of(latest),
    }
    assert body["checkpoints"]["signatures_valid"] is True
    assert body["checkpoints"]["latest"]["number"] == 3
    # the same by number; and the full walk, asked for without parameters, as before (no range)
    assert await ranged.verify(from_checkpoint="3") == body
    full = await ranged.verify()
    assert full["ok"] is True
    assert full["checked"] == HEAD
    assert "range" not in full


async def test_since_a_record_the_range_begins_at_the_newest_checkpoint_at_or_before_it(
    ranged: Ranged, conforms: Any
) -> None:
    body = await ranged.verify(since="2500")
    conforms("VerifyResult", body)
    assert body["ok"] is True, body
    assert body["checked"] == HEAD - 2000 + 1
    assert body["range"]["from_seq"] == 2000
    assert body["range"]["anchor"] == anchor_of(ranged.checkpoints[2])
    assert body["range"]["signed_through"] == 3000  # checkpoint 3 was met on the way
    exact = await ranged.verify(since="2000")
    assert exact["range"]["from_seq"] == 2000
    # before the first checkpoint: anchored at the chain's start (seq 1 links to 64 zeros)
    start = await ranged.verify(since="999")
    assert start["ok"] is True
    assert start["checked"] == HEAD
    assert start["range"]["anchor"] == {"kind": "start", "seq": 0, "hash": "0" * 64}
    assert start["range"]["from_seq"] == 1


async def test_a_record_seen_earlier_is_checked_within_the_range(ranged: Ranged) -> None:
    """``anchor=<seq>:<hash>`` still works inside a range: the newest record kept by the caller must
    still be there (records removed after the newest checkpoint are what checkpoints cannot see)."""
    conn = await asyncpg.connect(ranged.owner)
    try:
        newest = await conn.fetchval("SELECT hash FROM audit.records WHERE seq = $1", HEAD)
    finally:
        await conn.close()
    body = await ranged.verify(from_checkpoint="latest", anchor=f"{HEAD}:{newest}")
    assert body["ok"] is True, body
    async with tampered(
        ranged.owner, "records", f"seq > {HEAD - 3}", f"DELETE FROM audit.records WHERE seq > {HEAD - 3}"
    ):
        body = await ranged.verify(from_checkpoint="latest", anchor=f"{HEAD}:{newest}")
        assert (body["ok"], body["first_bad"]) == (False, HEAD)
        assert "truncated" in body["reason"]
        assert body["range"]["to_seq"] == HEAD - 3


async def test_until_ends_the_range_before_the_head(ranged: Ranged) -> None:
    body = await ranged.verify(since="1000", until="1500")
    assert body["ok"] is True, body
    assert body["checked"] == 501
    assert (body["range"]["from_seq"], body["range"]["to_seq"], body["range"]["to_head"]) == (
        1000,
        1500,
        False,
    )
    assert body["range"]["signed_through"] == 1000
    # checkpoint 2 (seq 2000) lies beyond the range: not "records missing"
    assert body["checkpoints"]["chain_matches"] is True
    async with tampered(
        ranged.owner, "records", "seq = 1700", f"UPDATE audit.records SET {ALTERED} WHERE seq = 1700"
    ):
        assert (await ranged.verify(since="1000", until="1500"))["ok"] is True
        inside = await ranged.verify(since="1000", until="1800")
        assert (inside["ok"], inside["first_bad"]) == (False, 1700)


async def test_a_record_altered_outside_the_range_is_reported_by_the_full_walk_only(ranged: Ranged) -> None:
    async with tampered(
        ranged.owner, "records", "seq = 500", f"UPDATE audit.records SET {ALTERED} WHERE seq = 500"
    ):
        full = await ranged.verify()
        assert (full["ok"], full["first_bad"]) == (False, 500)
        assert full["reason"] == "hash does not match the record's content"
        for params in ({"from_checkpoint": "latest"}, {"from_checkpoint": "2"}, {"since": "1000"}):
            body = await ranged.verify(**params)
            assert body["ok"] is True, (params, body)
            assert body["checked"] <= HEAD - 1000 + 1


async def test_a_record_altered_inside_the_range_is_reported(ranged: Ranged) -> None:
    async with tampered(
        ranged.owner, "records", "seq = 2500", f"UPDATE audit.records SET {ALTERED} WHERE seq = 2500"
    ):
        for params in ({"from_checkpoint": "2"}, {"since": "2400"}, {"since": "2000", "until": "2600"}):
            body = await ranged.verify(**params)
            assert (body["ok"], body["first_bad"]) == (False, 2500), (params, body)
            assert body["reason"] == "hash does not match the record's content"
            assert body["range"]["from_seq"] == 2000
        assert (await ranged.verify(from_checkpoint="latest"))["ok"] is True


async def test_a_range_rewritten_and_rehashed_is_held_to_the_checkpoint_inside_it(ranged: Ranged) -> None:
    """The owner's attack within the range: record 2500 changed, every later one re-hashed. The chain
    links; checkpoint 3 (seq 3000, inside the range) no longer matches."""
    async with tampered(ranged.owner, "records", "seq >= 2500", "SELECT 1"):
        await rewrite_history(ranged.owner, 2500, ALTERED)
        body = await ranged.verify(from_checkpoint="2")
        assert body["ok"] is False
        assert body["first_bad"] == 2001
        assert body["reason"].startswith("records 2001 to 3000 differ from signed checkpoint 3")
        assert body["checkpoints"]["chain_matches"] is False


async def test_a_rewrite_before_the_anchor_shows_at_the_anchor_record(ranged: Ranged) -> None:
    """A rewrite that began before the range and was re-hashed through it: the record at the anchor no
    longer carries the head its checkpoint signed. That is what anchoring buys: "these rows hash
    together" alone would say yes."""
    async with tampered(ranged.owner, "records", "seq >= 1500", "SELECT 1"):
        await rewrite_history(ranged.owner, 1500, ALTERED)
        body = await ranged.verify(from_checkpoint="2")
        assert body["ok"] is False
        assert body["first_bad"] == 2000
        assert body["checked"] == 1
        assert "signed checkpoint 2, the range's anchor" in body["reason"]
        assert body["checkpoints"]["chain_matches"] is False
        assert "signed_through" not in body["range"]  # nothing of the range is as signed


async def test_an_anchor_whose_signature_does_not_verify_anchors_nothing(ranged: Ranged) -> None:
    """Checkpoint 2 replaced by one signed with a key of the attacker's own (the same kid): a ranged
    walk from it refuses it and walks nothing; the full walk reports it too."""
    mallory = CheckpointKeys.parse(CheckpointKeys.generate("rv-1"))
    real = ranged.checkpoints[2]
    forged = mallory.sign(number=2, seq=real.seq, head=real.head, signed_at=real.signed_at, prev=real.prev)
    async with tampered(
        ranged.owner,
        "checkpoints",
        "number = 2",
        f"UPDATE audit.checkpoints SET jws = '{forged.jws}' WHERE number = 2",
    ):
        for params in ({"from_checkpoint": "2"}, {"since": "2500"}):
            body = await ranged.verify(**params)
            assert body["ok"] is False, (params, body)
            assert body["checked"] == 0
            assert "first_bad" not in body
            assert body["reason"] == "checkpoint 2, the range's anchor: the signature does not verify"
            assert body["checkpoints"]["signatures_valid"] is False
            assert "range" not in body  # nothing was anchored, so no range was verified
        full = await ranged.verify()
        assert full["ok"] is False
        assert full["checkpoints"]["problem"] == "checkpoint 2: the signature does not verify"
        # a checkpoint met inside the range is checked as well
        inside = await ranged.verify(from_checkpoint="1")
        assert inside["ok"] is False
        assert inside["checkpoints"]["problem"] == "checkpoint 2: the signature does not verify"
        assert (await ranged.verify(from_checkpoint="latest"))["ok"] is True


def resigned(key: CheckpointKeys, real: list[Checkpoint], after: Checkpoint) -> list[Checkpoint]:
    """``real`` signed again with ``key``, chained by ``prev`` from ``after`` (same heads and instants)."""
    chain: list[Checkpoint] = []
    for checkpoint in real:
        prev = (chain[-1] if chain else after).digest
        chain.append(
            key.sign(
                number=checkpoint.number,
                seq=checkpoint.seq,
                head=checkpoint.head,
                signed_at=checkpoint.signed_at,
                prev=prev,
            )
        )
    return chain


def replacing(checkpoints: list[Checkpoint]) -> list[str]:
    return [
        f"UPDATE audit.checkpoints SET jws = '{c.jws}', key_id = '{c.key_id}' WHERE number = {c.number}"
        for c in checkpoints
    ]


#: ranges that end past checkpoint 2 (seq 2000) but before checkpoint 3 (seq 3000), or at it
THROUGH_CHECKPOINT_2 = (
    {"until": "2500"},
    {"from_checkpoint": "1", "until": "2500"},
    {"since": "1500", "until": "2000"},
    {"since": "1000", "until": "2999"},
)


async def test_a_checkpoint_in_the_range_signed_by_an_unknown_key_is_reported(
    ranged: Ranged, cli_host: CliHost
) -> None:
    """Checkpoints 2 and 3 replaced by ones the owner signed with a key of their own (its own kid),
    chained from checkpoint 1 as the real ones were. The full walk reports them: no key this service
    knows vouches for them. A range that holds checkpoint 2 reports them the same way, although the
    first checkpoint beyond it (3) is the owner's too — the walk reads on past ``until`` until a
    checkpoint a known key signed vouches for 2, or the checkpoints end (here: they end). A range that
    ends before checkpoint 2 holds no checkpoint but 1, and is intact."""
    mallory = CheckpointKeys.parse(CheckpointKeys.generate("mallory"))
    real = ranged.checkpoints
    forged = resigned(mallory, [real[2], real[3]], after=real[1])
    unknown = (
        "checkpoint 3 and those after checkpoint 1 are signed by a key this verifier does not know, and no "
        "later checkpoint signed by a known key vouches for them"
    )
    async with tampered(ranged.owner, "checkpoints", "number >= 2", *replacing(forged)):
        full = await ranged.verify()
        assert (full["ok"], full["reason"]) == (False, unknown), full
        for params in THROUGH_CHECKPOINT_2:
            body = await ranged.verify(**params)
            assert body["ok"] is False, (params, body)
            assert body["reason"] == unknown, params
            assert "first_bad" not in body  # the records are as checkpoint 1 (or the chain's start) says
            assert body["checkpoints"]["problem"] == unknown
            assert body["checkpoints"]["signatures_valid"] is False
            assert body["checkpoints"]["chain_matches"] is True
        before = await ranged.verify(since="1000", until="1999")  # checkpoint 2 signs beyond it
        assert before["ok"] is True, before
        assert before["checkpoints"]["signatures_valid"] is True
        # the same range from outside the service: the same answer
        status, report, stderr = await asyncio.to_thread(
            verify_offline, ranged, "--until", "2500", host=cli_host
        )
        assert (status, report) == (1, await ranged.verify(until="2500")), stderr[-800:]
        assert f"BROKEN: {unknown}" in stderr


async def test_a_retired_keys_checkpoint_in_the_range_is_vouched_for_by_a_later_one(
    ranged: Ranged, cli_host: CliHost
) -> None:
    """A rotation: checkpoints 2 and 3 signed by ``rv-0``, a key since retired (this service no longer
    has it), and checkpoint 4 by ``rv-1``, chained to them. The full walk accepts 2 and 3 (4 vouches
    for them through ``prev``), and so does a range that ends between 2 and 3: it reads on past its
    end to checkpoint 4, where a key it knows vouches for the chain — only checkpoints, no records."""
    retired = CheckpointKeys.parse(CheckpointKeys.generate("rv-0"))
    current = CheckpointKeys.parse(ranged.env["AUDIT_CHECKPOINT_KEYS"])
    real = ranged.checkpoints
    old = resigned(retired, [real[2], real[3]], after=real[1])
    conn = await asyncpg.connect(ranged.owner)
    try:
        head = await conn.fetchval("SELECT hash FROM audit.records WHERE seq = $1", HEAD)
    finally:
        await conn.close()
    later = real[3].signed_at + timedelta(seconds=61)
    newest = current.sign(number=4, seq=HEAD, head=head, signed_at=later, prev=old[-1].digest)
    insert = (
        "INSERT INTO audit.checkpoints (number, seq, head, signed_at, key_id, jws) VALUES "
        f"(4, {HEAD}, '{head}', '{later.isoformat()}', 'rv-1', '{newest.jws}')"
    )
    async with tampered(ranged.owner, "checkpoints", "number >= 2", *replacing(old), insert):
        full = await ranged.verify()
        assert full["ok"] is True, full
        assert (full["checkpoints"]["checked"], full["checkpoints"]["verified"]) == (4, 2)
        for params in THROUGH_CHECKPOINT_2:
            body = await ranged.verify(**params)
            assert body["ok"] is True, (params, body)
            assert body["checkpoints"]["signatures_valid"] is True
            assert body["range"]["to_seq"] == int(params["until"])
        status, report, stderr = await asyncio.to_thread(
            verify_offline, ranged, "--until", "2500", host=cli_host
        )
        assert (status, report) == (0, await ranged.verify(until="2500")), stderr[-800:]


async def test_an_intact_range_does_not_clear_the_alarm_of_a_broken_chain(ranged: Ranged) -> None:
    """audit_chain_ok is the whole chain's: a range found intact says nothing of the rest, so it leaves
    the gauge alone; a range found broken is evidence enough to set it to 0."""
    async with tampered(
        ranged.owner, "records", "seq = 500", f"UPDATE audit.records SET {ALTERED} WHERE seq = 500"
    ):
        assert (await ranged.verify())["ok"] is False
        assert REGISTRY.get_sample_value("audit_chain_ok") == 0
        assert (await ranged.verify(from_checkpoint="latest"))["ok"] is True
        assert REGISTRY.get_sample_value("audit_chain_ok") == 0
    metrics.chain_ok.set(1)
    async with tampered(
        ranged.owner, "records", "seq = 3005", f"UPDATE audit.records SET {ALTERED} WHERE seq = 3005"
    ):
        assert (await ranged.verify(from_checkpoint="latest"))["ok"] is False
        assert REGISTRY.get_sample_value("audit_chain_ok") == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "abc"}, "since"),
        ({"since": "-1"}, "since"),
        ({"since": "0"}, "since"),
        ({"since": "1.0"}, "since"),
        ({"since": " 5"}, "since"),
        ({"since": "99999999999999999999"}, "since"),
        ({"since": str(HEAD + 1)}, "since"),
        ({"until": "x"}, "until"),
        ({"until": str(HEAD + 1)}, "until"),
        ({"since": "2000", "until": "1999"}, "until"),
        ({"from_checkpoint": "3", "until": "2999"}, "until"),
        ({"from_checkpoint": "first"}, "from_checkpoint"),
        ({"from_checkpoint": "-2"}, "from_checkpoint"),
        ({"from_checkpoint": "4"}, "from_checkpoint"),
        ({"from_checkpoint": "2", "since": "2000"}, "since"),
        ({"from_checkpoint": "3", "anchor": f"2999:{'a' * 64}"}, "anchor"),
    ],
)
async def test_a_bad_range_is_a_422_naming_the_parameter(
    ranged: Ranged, params: dict[str, str], field: str
) -> None:
    reply = await ranged.refused(**params)
    assert reply.fields() == {field}, reply.body


async def test_without_checkpoints_a_range_has_nothing_to_be_anchored_to(
    ranged: Ranged, caller: Caller
) -> None:
    settings = load_settings(AuditSettings, env=ranged.env, audit_checkpoint_keys="")
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        api = SignedApi(url, caller)
        try:
            for params, field in (
                ({"since": "5"}, "since"),
                ({"from_checkpoint": "latest"}, "from_checkpoint"),
            ):
                reply = await api.call("GET", "/audit/verify", AUDITOR, params=params)
                assert reply.status == 422, reply.text
                assert reply.fields() == {field}
                assert "AUDIT_CHECKPOINT_KEYS" in reply.body["errors"][0]["message"]
        finally:
            await api.close()


# ---- the same ranges from outside the service: python -m audit verify --from-checkpoint|--since|--until


def verify_offline(
    ranged: Ranged, *args: str, keys: bool = True, host: CliHost | None = None
) -> tuple[int, dict[str, Any], str]:
    """``python -m audit verify ARGS`` against the module's database, as an auditor runs it: the
    database's URL and the checkpoint keys (their public halves), nothing else of the service's.
    A real process; with ``host``, the same command line run in the session's command host (one
    interpreter for the cases: :mod:`testkit.clihost`). Each answer's wiring (a report and exit 0,
    a broken range and exit 1, a usage error and exit 2) keeps a real process."""
    env = {"DATABASE_URL": ranged.env["DATABASE_URL"], "PATH": "/usr/bin:/bin"}
    if keys:
        env["AUDIT_CHECKPOINT_KEYS"] = ranged.env["AUDIT_CHECKPOINT_KEYS"]
    result = run_module("audit", env, "verify", *args, timeout=120, host=host)
    report: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


@pytest.mark.parametrize(
    ("args", "params"),
    [
        (("--from-checkpoint", "latest"), {"from_checkpoint": "latest"}),
        (("--from-checkpoint", "2"), {"from_checkpoint": "2"}),
        (("--since", "2500"), {"since": "2500"}),
        (("--since", "999"), {"since": "999"}),
        (("--since", "1000", "--until", "1500"), {"since": "1000", "until": "1500"}),
        (("--until", "1200"), {"until": "1200"}),
    ],
)
async def test_offline_the_same_range_gives_the_same_answer_as_the_api(
    ranged: Ranged, args: tuple[str, ...], params: dict[str, str], cli_host: CliHost
) -> None:
    """The first case as a real process, the others in the host."""
    host = None if params == {"from_checkpoint": "latest"} else cli_host
    status, report, stderr = await asyncio.to_thread(verify_offline, ranged, *args, host=host)
    assert status == 0, stderr[-800:]
    assert report == await ranged.verify(**params)
    assert report["range"]["from_seq"] in (1, 1000, 2000, 3000)
    assert f"from record {report['range']['from_seq']}" in stderr


async def test_offline_a_range_reports_what_lies_in_it_only(ranged: Ranged, cli_host: CliHost) -> None:
    """The broken range as a real process (exit 1), the others in the host."""
    async with tampered(
        ranged.owner, "records", "seq = 2500", f"UPDATE audit.records SET {ALTERED} WHERE seq = 2500"
    ):
        status, report, stderr = await asyncio.to_thread(verify_offline, ranged, "--from-checkpoint", "2")
        assert (status, report["ok"], report["first_bad"]) == (1, False, 2500), stderr[-800:]
        assert "BROKEN at record 2500" in stderr
        latest = ("--from-checkpoint", "latest")
        status, report, _ = await asyncio.to_thread(verify_offline, ranged, *latest, host=cli_host)
        assert (status, report["ok"], report["checked"]) == (0, True, AFTER + 1)
        # the whole chain, as before
        status, report, _ = await asyncio.to_thread(verify_offline, ranged, host=cli_host)
        assert (status, report["first_bad"]) == (1, 2500)
        assert "range" not in report


async def test_offline_a_range_is_held_to_the_checkpoints_retained_outside_the_database(
    ranged: Ranged, tmp_path: Path, cli_host: CliHost
) -> None:
    """The restore's case (docs/runbook.md): the database rolled back to checkpoint 2, records and
    checkpoint 3 gone. The trail left is consistent, so the range from its newest checkpoint verifies
    by itself; with the copies retained outside the database it is reported. A retained copy of the
    anchor that differs from the database's is reported too. (In the command host: the real
    process's answers are those of the tests above.)"""
    retained = tmp_path / "retained.jsonl"
    retained.write_text("".join(json.dumps({"jws": c.jws}) + "\n" for c in ranged.checkpoints.values()))
    async with (
        tampered(ranged.owner, "records", "seq > 2000", "DELETE FROM audit.records WHERE seq > 2000"),
        tampered(ranged.owner, "checkpoints", "number = 3", "DELETE FROM audit.checkpoints WHERE number = 3"),
    ):
        latest = ("--from-checkpoint", "latest")
        status, report, stderr = await asyncio.to_thread(verify_offline, ranged, *latest, host=cli_host)
        assert (status, report["ok"], report["range"]["from_seq"]) == (0, True, 2000), stderr[-800:]
        args = ("--from-checkpoint", "latest", "--checkpoints", str(retained))
        status, report, stderr = await asyncio.to_thread(verify_offline, ranged, *args, host=cli_host)
        assert (status, report["ok"]) == (1, False), stderr[-800:]
        assert report["first_bad"] == 2001
        assert "checkpoint 3 is missing from the database" in report["checkpoints"]["problem"]
    # the anchor re-signed with the key (stolen) at another instant: both verify, they differ
    key = CheckpointKeys.parse(ranged.env["AUDIT_CHECKPOINT_KEYS"])
    real = ranged.checkpoints[3]
    later = real.signed_at + timedelta(seconds=1)
    resigned = key.sign(number=3, seq=real.seq, head=real.head, signed_at=later, prev=real.prev)
    assert resigned.jws != real.jws
    retained.write_text(json.dumps({"jws": resigned.jws}) + "\n")
    args = ("--from-checkpoint", "3", "--checkpoints", str(retained))
    status, report, stderr = await asyncio.to_thread(verify_offline, ranged, *args, host=cli_host)
    assert (status, report["ok"]) == (1, False), stderr[-800:]
    assert "the range's anchor, differs from the copy retained" in report["reason"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--since", "abc"), "--since"),
        (("--since", "0"), "--since"),
        (("--since", str(HEAD + 1)), "--since"),
        (("--until", str(HEAD + 1)), "--until"),
        (("--since", "2000", "--until", "1999"), "--until"),
        (("--from-checkpoint", "3", "--until", "2999"), "--until"),
        (("--from-checkpoint", "first"), "--from-checkpoint"),
        (("--from-checkpoint", "4"), "--from-checkpoint"),
        (("--from-checkpoint", "2", "--since", "2000"), "--since"),
    ],
)
async def test_offline_a_bad_range_is_a_usage_error_naming_the_option(
    ranged: Ranged, args: tuple[str, ...], option: str, cli_host: CliHost
) -> None:
    """The first case as a real process, the others in the host."""
    host = None if args == ("--since", "abc") else cli_host
    status, report, stderr = await asyncio.to_thread(verify_offline, ranged, *args, host=host)
    assert status == 2, stderr[-800:]
    assert report == {}
    assert "Traceback" not in stderr
    assert f"audit verify: {option}: " in stderr, stderr
