"""Checking the checkpoints themselves: signatures, numbering, the chain of ``prev`` digests, and the
copies retained outside the database.

The database holds the checkpoints, and whoever owns the database can delete or replace rows there —
but cannot sign. :class:`CheckpointTrail` takes the checkpoints in number order (as they stream out of
the database, so memory does not grow with the trail) and reports:

* a signature that does not verify with the key its ``kid`` names (a forged or altered checkpoint);
* a number missing, or a ``prev`` that is not the digest of the checkpoint before (one deleted or
  replaced in the middle). Numbers may skip when the next checkpoint's ``prev`` is the digest of
  the one before the gap: the signer never signs a number twice, so after an accepted restore it
  goes on past the numbers of the lost heads (:mod:`audit.watermark`);
* checkpoints signed by a key the verifier does not know (a retired key): acceptable only while a
  later checkpoint, signed by a known key, chains back to them — the newest must always verify
  (unless ``tolerate`` says the keys of the newest ones may still be a newer replica's: the
  background verifier's grace, :mod:`audit.keygrace`; they are then listed in ``tolerated``);
* with copies retained elsewhere (log lines, exports: ``python -m audit verify --checkpoints``): a
  retained checkpoint the database no longer has, or has in another form.

It yields an :class:`Expectation` — "record ``seq`` must have hash ``head``" — for every checkpoint
whose signature verified; the chain walk (:mod:`audit.store`) holds the records to them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .checkpoints import GENESIS_DIGEST, Checkpoint, InvalidCheckpoint, PublicKeys, parse


@dataclass(frozen=True)
class Expectation:
    number: int
    seq: int
    head: str


@dataclass
class TrailState:
    """Where the previous walk left the checkpoint chain (an incremental walk goes on from there)."""

    number: int = 0
    digest: str = GENESIS_DIGEST
    seq: int = 0


@dataclass
class CheckpointTrail:
    keys: PublicKeys
    retained: Mapping[int, str] = field(default_factory=dict)
    state: TrailState = field(default_factory=TrailState)
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    verified: int = 0
    latest: Checkpoint | None = None
    signatures_valid: bool = True
    #: whether the newest checkpoints may stay unvouched for, given their (unknown) key ids
    tolerate: Callable[[frozenset[str]], bool] | None = None
    tolerated: list[int] = field(default_factory=list)  # unvouched, and tolerated
    _unvouched: list[int] = field(default_factory=list)
    _unvouched_kids: set[str] = field(default_factory=set)
    _retained_left: set[int] = field(init=False)
    #: the retained numbers in order, and how far :meth:`feed` has gone through them: each checkpoint
    #: fed looks only at those before it not yet looked at (a scan of the whole set per checkpoint
    #: made a year of retained copies, 525,600, an hour of work)
    _retained_order: list[int] = field(init=False)
    _retained_next: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._retained_order = sorted(n for n in self.retained if n > self.state.number)
        self._retained_left = set(self._retained_order)

    @property
    def ok(self) -> bool:
        return not self.problems

    def feed(self, number: int, jws: str) -> list[Expectation]:
        """The database's checkpoint ``number`` (called in increasing number order)."""
        found: list[Expectation] = []
        order = self._retained_order
        while self._retained_next < len(order) and order[self._retained_next] < number:
            earlier = order[self._retained_next]
            self._retained_next += 1
            if earlier in self._retained_left:
                found += self._missing_from_database(earlier)
        if number in self._retained_left:
            self._retained_left.discard(number)
            if self.retained[number] != jws:
                self.problems.append(
                    f"checkpoint {number} differs from the copy retained outside the database: "
                    "it was replaced (and, if both verify, re-signed with the key)"
                )
                jws = self.retained[number]  # the retained copy is the better witness
        return found + self._take(number, jws)

    def awaits_vouching(self, before: int) -> bool:
        """Whether a checkpoint numbered below ``before`` is signed by a key this verifier does not
        know, with no checkpoint a known key signed after it yet: only a later one can vouch for it
        (or :meth:`finish`, at the end of the checkpoints, report it)."""
        return bool(self._unvouched) and self._unvouched[0] < before

    def finish(self) -> list[Expectation]:
        """After the database's last checkpoint: retained ones beyond it, and what stays unvouched."""
        found: list[Expectation] = []
        for number in sorted(self._retained_left):
            found += self._missing_from_database(number)
        self._retained_left.clear()
        if self._unvouched and self.tolerate is not None and self.tolerate(frozenset(self._unvouched_kids)):
            self.tolerated = list(self._unvouched)
        elif self._unvouched:
            self.signatures_valid = False
            self.problems.append(
                f"checkpoint {self._unvouched[-1]} and those after checkpoint {self._unvouched[0] - 1} are "
                "signed by a key this verifier does not know, and no later checkpoint signed by a known "
                "key vouches for them"
            )
        return found

    def _missing_from_database(self, number: int) -> list[Expectation]:
        self._retained_left.discard(number)
        self.problems.append(f"checkpoint {number} is missing from the database (a retained copy has it)")
        return self._take(number, self.retained[number])

    def _take(self, number: int, jws: str) -> list[Expectation]:
        self.checked += 1
        expected = self.state.number + 1
        missing = (
            f"checkpoint {expected} is missing"
            if number == expected + 1
            else f"checkpoints {expected} to {number - 1} are missing"
        )
        digest = hashlib.sha256(jws.encode("utf-8", "replace")).hexdigest()
        try:
            checkpoint = parse(jws)
        except InvalidCheckpoint as exc:
            if number > expected:
                self.problems.append(missing)
            self.signatures_valid = False
            self.problems.append(f"checkpoint {number} is not a valid checkpoint ({exc})")
            self.state = TrailState(number, digest, self.state.seq)
            return []
        # Numbers skipped with ``prev`` still naming the checkpoint before: the signer went on past the
        # numbers it had signed for heads a restore lost, after the operator accepted the loss
        # (audit.watermark) — the signed link says nothing was removed in between. A checkpoint
        # removed from the middle leaves the next one's ``prev`` naming it: reported.
        if number > expected and checkpoint.prev != self.state.digest:
            self.problems.append(missing)
        if checkpoint.number != number:
            self.problems.append(f"checkpoint {number} is signed as number {checkpoint.number}")
        if number == expected and checkpoint.prev != self.state.digest:
            self.problems.append(
                f"checkpoint {number} does not follow checkpoint {number - 1} (prev differs): "
                "checkpoints were replaced or removed"
            )
        if checkpoint.seq < self.state.seq:
            self.problems.append(f"checkpoint {number} goes back in the chain (seq {checkpoint.seq})")
        trusted = False
        if self.keys.known(checkpoint.key_id):
            try:
                self.keys.check(checkpoint)
                trusted = True
            except InvalidCheckpoint:
                self.signatures_valid = False
                self.problems.append(f"checkpoint {number}: the signature does not verify")
        else:
            self._unvouched.append(number)
            self._unvouched_kids.add(checkpoint.key_id)
        if trusted:
            self.verified += 1
            self._unvouched.clear()  # a verified checkpoint vouches for the links before it
            self._unvouched_kids.clear()
        self.state = TrailState(number, digest, max(self.state.seq, checkpoint.seq))
        self.latest = checkpoint
        return [Expectation(number, checkpoint.seq, checkpoint.head)] if trusted else []
