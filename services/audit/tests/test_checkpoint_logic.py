"""Checkpoints in process: keys, signatures, the checkpoint chain and its retained copies.

What an attacker with the database owner's rights can do to the checkpoints table — delete rows,
replace them, insert ones signed with a key of their own — and what each looks like to
:class:`audit.trail.CheckpointTrail`; and what a holder of the signing key can do, which only copies
retained outside the database reveal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from audit.checkpoints import (
    GENESIS_DIGEST,
    Checkpoint,
    CheckpointKeyError,
    CheckpointKeys,
    InvalidCheckpoint,
    PublicKeys,
    from_flattened,
    parse,
)
from audit.offline import checkpoint_jws, read_retained
from audit.trail import CheckpointTrail, Expectation, TrailState
from svckit.logs import JsonFormatter

pytestmark = pytest.mark.unit

KEYS = CheckpointKeys.parse(CheckpointKeys.generate("ck-1"))
T0 = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)


def head(n: int) -> str:
    return f"{n:064x}"


def signed_chain(keys: CheckpointKeys, count: int, first: Checkpoint | None = None) -> list[Checkpoint]:
    """``count`` checkpoints chained to ``first`` (or from the start), every 10 records."""
    chain: list[Checkpoint] = [first] if first else []
    for _ in range(count):
        last = chain[-1] if chain else None
        number = last.number + 1 if last else 1
        chain.append(
            keys.sign(
                number=number,
                seq=number * 10,
                head=head(number * 10),
                signed_at=T0 + timedelta(minutes=number),
                prev=last.digest if last else GENESIS_DIGEST,
            )
        )
    return chain[1:] if first else chain


def walk(trail: CheckpointTrail, checkpoints: list[tuple[int, str]]) -> list[Expectation]:
    found: list[Expectation] = []
    for number, jws in checkpoints:
        found += trail.feed(number, jws)
    return found + trail.finish()


def rows(chain: list[Checkpoint]) -> list[tuple[int, str]]:
    return [(c.number, c.jws) for c in chain]


# ---- keys and signatures ------------------------------------------------------------------------------


def test_a_checkpoint_reads_back_as_signed_and_verifies_with_the_published_keys() -> None:
    checkpoint = KEYS.sign(number=3, seq=1842, head=head(7), signed_at=T0, prev=head(1))
    assert (checkpoint.number, checkpoint.seq, checkpoint.count, checkpoint.head) == (3, 1842, 1842, head(7))
    assert checkpoint.key_id == "ck-1"
    assert parse(checkpoint.jws) == checkpoint
    published = PublicKeys.from_jwks(json.loads(json.dumps(KEYS.jwks())))  # as served, as pinned
    assert published.verify(checkpoint.jws) == checkpoint
    (jwk,) = KEYS.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}  # public half only
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["kid"]) == ("OKP", "Ed25519", "EdDSA", "ck-1")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda p: {**p, "seq": p["seq"] - 1, "count": p["count"] - 1}, "signature does not verify"),
        (lambda p: {**p, "head": head(99)}, "signature does not verify"),
        (lambda p: {**p, "extra": 1}, "unexpected fields"),
        (lambda p: {**p, "count": p["seq"] + 1}, "count equal to seq"),
    ],
)
def test_a_changed_checkpoint_does_not_verify(tamper: object, reason: str) -> None:
    checkpoint = KEYS.sign(number=1, seq=10, head=head(10), signed_at=T0, prev=GENESIS_DIGEST)
    protected, payload, signature = checkpoint.jws.split(".")
    body = json.loads(_b64(payload))
    changed = tamper(body)  # type: ignore[operator]
    forged = ".".join(
        [protected, _b64e(json.dumps(changed, sort_keys=True, separators=(",", ":"))), signature]
    )
    with pytest.raises(InvalidCheckpoint, match=reason):
        KEYS.verify(forged)


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_a_segment_re_encoded_with_other_unused_bits_is_not_the_signed_checkpoint(segment: int) -> None:
    """Base64url's last character carries bits no byte uses; setting them gives another string for the
    same bytes. Such a copy is not what was signed (its digest, which the next checkpoint's ``prev``
    names, differs), so it is refused outright rather than verified and then reported as a mismatch."""
    checkpoint = KEYS.sign(number=1, seq=10, head=head(10), signed_at=T0, prev=GENESIS_DIGEST)
    parts = checkpoint.jws.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    text = parts[segment]
    assert len(text) % 4 in (2, 3)  # a final group with unused bits (else nothing to set)
    parts[segment] = text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]
    altered = ".".join(parts)
    assert _b64(parts[segment]) == _b64(text)  # the same bytes: only the unused bits changed
    with pytest.raises(InvalidCheckpoint):
        KEYS.verify(altered)


def test_a_checkpoint_signed_with_another_key_does_not_verify() -> None:
    mallory = CheckpointKeys.parse(CheckpointKeys.generate("ck-1"))  # same kid, another key
    forged = mallory.sign(number=1, seq=10, head=head(10), signed_at=T0, prev=GENESIS_DIGEST)
    with pytest.raises(InvalidCheckpoint, match="signature does not verify"):
        KEYS.verify(forged.jws)
    unknown = CheckpointKeys.parse(CheckpointKeys.generate("mallory"))
    with pytest.raises(InvalidCheckpoint, match="unknown key 'mallory'"):
        KEYS.verify(unknown.sign(number=1, seq=1, head=head(1), signed_at=T0, prev=GENESIS_DIGEST).jws)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ck-1", "kid:seed"),
        ("ck 1:AAAA", "kid:seed"),
        ("ck-1:" + "A" * 10, "32 bytes"),
        ("ck-1:!!!", "32 bytes"),
        pytest.param(  # a fixed id: every xdist worker must collect the same test names
            f"{CheckpointKeys.generate('a')},{CheckpointKeys.generate('a')}", "appears twice", id="twice"
        ),
    ],
)
def test_unusable_keys_are_refused_without_echoing_them(text: str, message: str) -> None:
    with pytest.raises(CheckpointKeyError, match=message) as refused:
        CheckpointKeys.parse(text)
    seed = text.partition(":")[2]
    assert len(seed) < 8 or seed[:8] not in str(refused.value)


SEED = CheckpointKeys.generate("ck-1").partition(":")[2]


@pytest.mark.parametrize(
    "text",
    [
        f"{SEED}:ck-1",  # the seed and the key id swapped: the seed stands where the kid is read
        f"{SEED}:{SEED[:10]}",
        f"{SEED}:{SEED},{SEED}:{SEED}",
        f"{CheckpointKeys.generate('ck-0')},{SEED}",  # a seed set without its kid
    ],
    ids=["swapped", "swapped-short-kid", "twice", "no-kid"],  # no seed in the test ids either
)
def test_a_refused_entry_is_named_by_position_never_by_what_stands_before_its_colon(text: str) -> None:
    """Whatever stands before an entry's colon is read as its kid, but may be key material (a seed
    written first): a refusal names the entry's position, as IDENTITY_KEYS_* refusals do."""
    with pytest.raises(CheckpointKeyError, match=r"^entry [12]: ") as refused:
        CheckpointKeys.parse(text)
    assert SEED[:8] not in str(refused.value)


def test_the_service_refuses_a_misordered_entry_without_printing_the_seed() -> None:
    """As the process prints it: one line naming AUDIT_CHECKPOINT_KEYS, no part of the seed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    result = subprocess.run(
        [sys.executable, "-m", "audit"],
        env={**env, "AUDIT_CHECKPOINT_KEYS": f"{SEED}:ck-1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "AUDIT_CHECKPOINT_KEYS entry 1: " in result.stderr
    assert SEED[:8] not in result.stdout + result.stderr


def test_the_first_key_signs_the_others_verify() -> None:
    old = CheckpointKeys.generate("ck-old")
    new = CheckpointKeys.generate("ck-new")
    rotated = CheckpointKeys.parse(f"{new},{old}")
    assert rotated.signing_kid == "ck-new"
    before = CheckpointKeys.parse(old).sign(number=1, seq=1, head=head(1), signed_at=T0, prev=GENESIS_DIGEST)
    assert rotated.verify(before.jws).key_id == "ck-old"
    assert [k["kid"] for k in rotated.jwks()["keys"]] == ["ck-new", "ck-old"]


def test_the_log_line_carries_the_checkpoint_intact_through_the_scrubbing_formatter() -> None:
    """Log lines are scrubbed of token-shaped strings (a compact JWS is one); the checkpoint's
    flattened JWS survives and reads back as the same, verifiable checkpoint."""
    checkpoint = KEYS.sign(number=4, seq=40, head=head(40), signed_at=T0, prev=head(3))
    record = logging.LogRecord(
        "audit.checkpoints", logging.INFO, __file__, 1, "audit checkpoint signed", (), None
    )
    record.checkpoint = checkpoint.log_fields()
    line = JsonFormatter("audit").format(record)
    assert "redacted" not in line
    (jws,) = checkpoint_jws(json.loads(line))
    assert KEYS.verify(jws) == checkpoint
    assert from_flattened(checkpoint.flattened()) == checkpoint.jws


def test_retained_copies_are_read_from_log_lines_exports_and_api_pages(tmp_path: object) -> None:
    from pathlib import Path

    chain = signed_chain(KEYS, 3)
    folder = Path(str(tmp_path))
    log = io.StringIO()
    log.write("not json at all\n")
    log.write(json.dumps({"msg": "audit checkpoint signed", "checkpoint": chain[0].log_fields()}) + "\n")
    log.write(json.dumps({**chain[1].log_fields(), "jws": chain[1].jws}) + "\n")  # an export line
    log.write(json.dumps({"msg": "something else", "level": "info"}) + "\n")
    (folder / "mixed.jsonl").write_text(log.getvalue())
    assert read_retained(folder / "mixed.jsonl") == {1: chain[0].jws, 2: chain[1].jws}
    page = {"items": [{"number": c.number, "jws": c.jws} for c in chain], "next_cursor": None}
    (folder / "page.json").write_text(json.dumps(page))
    assert sorted(read_retained(folder / "page.json")) == [1, 2, 3]
    other = KEYS.sign(number=2, seq=99, head=head(99), signed_at=T0, prev=head(0))
    (folder / "conflict.jsonl").write_text(
        json.dumps({"jws": chain[1].jws}) + "\n" + json.dumps({"jws": other.jws})
    )
    with pytest.raises(InvalidCheckpoint, match="two different checkpoints numbered 2"):
        read_retained(folder / "conflict.jsonl")


def test_retained_copies_are_read_back_from_their_place_in_the_file(tmp_path: object) -> None:
    """The file is not held: each copy is found again where it was read (a line of several
    checkpoints too), and a document spread over lines (a page saved pretty-printed) still reads."""
    from pathlib import Path

    chain = signed_chain(KEYS, 4)
    folder = Path(str(tmp_path))
    lines = [
        "2026-01-01 some text first\n",
        json.dumps([{"jws": chain[0].jws}, {"jws": chain[1].jws}]) + "\n",  # two on one line
        '{"broken": \n',
        json.dumps({"checkpoint": chain[2].log_fields()}) + "\n",
        json.dumps({"jws": chain[3].jws}),  # the last line without its newline
    ]
    (folder / "log.jsonl").write_text("".join(lines))
    retained = read_retained(folder / "log.jsonl")
    assert dict(retained) == {c.number: c.jws for c in chain}
    assert retained[2] == chain[1].jws
    assert len(retained) == 4
    page = {"items": [{"number": c.number, "jws": c.jws} for c in chain], "next_cursor": None}
    (folder / "page.json").write_text(json.dumps(page, indent=2))
    assert dict(read_retained(folder / "page.json")) == {c.number: c.jws for c in chain}
    (folder / "list.json").write_text("[\n" + ",\n".join(json.dumps({"jws": c.jws}) for c in chain) + "\n]")
    assert dict(read_retained(folder / "list.json")) == {c.number: c.jws for c in chain}


def test_retained_copies_are_held_to_the_database_in_one_pass() -> None:
    """Each checkpoint the walk feeds looks at the retained copies before it once, not at them all
    again: a year of copies (525,600) took an hour of set scans before (quadratic), here 60,000 are
    fed in well under the bound (unparseable ones, so that no signature check hides the cost)."""
    import time

    count = 60_000
    retained = {number: f"junk-{number}" for number in range(1, count + 1)}
    trail = CheckpointTrail(KEYS, retained)
    started = time.process_time()
    for number in range(2, count + 1, 2):  # every other one is missing from the database
        trail.feed(number, retained[number])
    trail.finish()
    elapsed = time.process_time() - started
    assert trail.checked == count
    assert sum("is missing from the database" in p for p in trail.problems) == count // 2
    assert elapsed < 5, f"{elapsed:.1f} s of CPU for {count} retained copies"


# ---- the checkpoint chain -------------------------------------------------------------------------


def test_an_intact_chain_of_checkpoints_yields_every_signed_head() -> None:
    chain = signed_chain(KEYS, 5)
    trail = CheckpointTrail(KEYS)
    assert walk(trail, rows(chain)) == [Expectation(c.number, c.seq, c.head) for c in chain]
    assert (trail.ok, trail.checked, trail.verified, trail.signatures_valid) == (True, 5, 5, True)
    assert trail.latest == chain[-1]


def test_a_checkpoint_deleted_from_the_middle_is_noticed() -> None:
    chain = signed_chain(KEYS, 5)
    trail = CheckpointTrail(KEYS)
    expectations = walk(trail, rows(chain[:2] + chain[3:]))
    assert trail.problems == ["checkpoint 3 is missing"]
    assert [e.number for e in expectations] == [1, 2, 4, 5]  # the others still hold the records


def test_numbers_skipped_by_a_checkpoint_chained_to_the_one_before_are_not_missing() -> None:
    """After an accepted restore (audit.watermark) the signer goes on past the numbers it had signed
    for the lost heads, its ``prev`` the digest of the restored newest checkpoint: nothing was removed
    in between, and no number is signed twice. The copies retained before the restore still say
    which checkpoints the restore lost."""
    chain = signed_chain(KEYS, 4)  # 3 and 4 are lost by the restore
    after = KEYS.sign(
        number=5, seq=30, head=head(31), signed_at=T0 + timedelta(hours=1), prev=chain[1].digest
    )
    trail = CheckpointTrail(KEYS)
    expectations = walk(trail, rows([*chain[:2], after]))
    assert trail.ok, trail.problems
    assert [e.number for e in expectations] == [1, 2, 5]
    retained = CheckpointTrail(KEYS, retained=dict(rows(chain)))
    walk(retained, rows([*chain[:2], after]))
    assert "checkpoint 3 is missing from the database (a retained copy has it)" in retained.problems
    assert "checkpoint 4 is missing from the database (a retained copy has it)" in retained.problems


def test_a_skip_whose_prev_names_a_removed_checkpoint_is_missing_checkpoints() -> None:
    chain = signed_chain(KEYS, 5)
    trail = CheckpointTrail(KEYS)
    walk(trail, rows([chain[0], chain[4]]))  # 2 to 4 removed: 5 still names 4 as its prev
    assert trail.problems == ["checkpoints 2 to 4 are missing"]


def test_a_checkpoint_replaced_by_one_signed_with_another_key_is_noticed() -> None:
    chain = signed_chain(KEYS, 4)
    mallory = CheckpointKeys.parse(CheckpointKeys.generate("ck-1"))
    forged = mallory.sign(number=2, seq=20, head=head(666), signed_at=T0, prev=chain[0].digest)
    trail = CheckpointTrail(KEYS)
    expectations = walk(trail, rows([chain[0], forged, *chain[2:]]))
    assert "checkpoint 2: the signature does not verify" in trail.problems
    assert (
        "checkpoint 3 does not follow checkpoint 2 (prev differs): checkpoints were replaced or removed"
        in (trail.problems)
    )
    assert trail.signatures_valid is False
    assert Expectation(2, 20, head(666)) not in expectations  # a forged head is never held against records


def test_a_newest_checkpoint_signed_by_an_unknown_key_is_noticed() -> None:
    chain = signed_chain(KEYS, 3)
    mallory = CheckpointKeys.parse(CheckpointKeys.generate("mallory"))
    (planted,) = signed_chain(mallory, 1, first=chain[-1])
    trail = CheckpointTrail(KEYS)
    walk(trail, rows([*chain, planted]))
    assert trail.signatures_valid is False
    assert (
        "checkpoint 4 and those after checkpoint 3 are signed by a key this verifier does not know"
        in (trail.problems[0])
    )


def test_checkpoints_of_a_retired_key_are_vouched_for_by_later_ones() -> None:
    """After a rotation the old key may be dropped: its checkpoints stay covered by the chain of prev
    digests up to a checkpoint signed by a key the verifier knows."""
    old = CheckpointKeys.parse(CheckpointKeys.generate("ck-old"))
    early = signed_chain(old, 3)
    later = signed_chain(KEYS, 2, first=early[-1])
    trail = CheckpointTrail(KEYS)  # knows only the new key
    expectations = walk(trail, rows(early + later))
    assert trail.ok, trail.problems
    assert (trail.checked, trail.verified) == (5, 2)
    assert [e.number for e in expectations] == [4, 5]


def test_a_trail_says_which_checkpoints_still_await_a_voucher() -> None:
    """What a range ending at ``until`` reads on for (:class:`audit.checkpoint_store.CheckpointFeed`):
    a checkpoint before the first one beyond the range, signed by an unknown key and not yet followed
    by one a known key signed. An unknown one beyond the range alone is not the range's to vouch for."""
    old = CheckpointKeys.parse(CheckpointKeys.generate("ck-old"))
    chain = signed_chain(KEYS, 1)
    early = signed_chain(old, 2, first=chain[-1])  # checkpoints 2 and 3
    (later,) = signed_chain(KEYS, 1, first=early[-1])  # checkpoint 4
    trail = CheckpointTrail(KEYS)
    for checkpoint in (chain[0], early[0], early[1]):
        trail.feed(checkpoint.number, checkpoint.jws)
    assert trail.awaits_vouching(before=3)  # checkpoint 2, inside a range that 3 is beyond
    assert not trail.awaits_vouching(before=2)  # only 2 and 3, beyond a range that 2 is beyond
    trail.feed(later.number, later.jws)
    assert not trail.awaits_vouching(before=3)  # 4 vouches for 2 and 3
    assert trail.ok


def test_a_retained_copy_reveals_a_checkpoint_deleted_or_re_signed_in_the_database() -> None:
    """Someone with the signing key can re-sign a rewritten history, and someone with database rights
    can delete the newest checkpoints: the database alone then looks consistent. A copy retained
    outside it (log lines, exports) does not."""
    chain = signed_chain(KEYS, 4)
    retained = {c.number: c.jws for c in chain}
    # the newest two deleted: consistent on its own, not against the retained copies
    alone = CheckpointTrail(KEYS)
    walk(alone, rows(chain[:2]))
    assert alone.ok
    trail = CheckpointTrail(KEYS, retained)
    expectations = walk(trail, rows(chain[:2]))
    assert trail.problems == [
        "checkpoint 3 is missing from the database (a retained copy has it)",
        "checkpoint 4 is missing from the database (a retained copy has it)",
    ]
    assert [e.number for e in expectations] == [1, 2, 3, 4]  # the retained heads are still held to
    # re-signed with the real key after a rewrite: both verify, and they differ
    resigned = KEYS.sign(number=3, seq=30, head=head(333), signed_at=T0, prev=chain[1].digest)
    trail = CheckpointTrail(KEYS, retained)
    expectations = walk(trail, rows([*chain[:2], resigned, chain[3]]))
    assert trail.problems[0].startswith("checkpoint 3 differs from the copy retained outside the database")
    assert Expectation(3, 30, chain[2].head) in expectations  # the retained copy is what counts


def test_an_incremental_walk_goes_on_where_the_last_one_ended() -> None:
    chain = signed_chain(KEYS, 5)
    first = CheckpointTrail(KEYS)
    walk(first, rows(chain[:3]))
    assert first.state == TrailState(3, chain[2].digest, 30)
    second = CheckpointTrail(KEYS, state=first.state)
    assert [e.number for e in walk(second, rows(chain[3:]))] == [4, 5]
    assert second.ok


def _b64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
