"""Where a ranged verification starts, and why that start proves something.

A walk of the whole chain costs ~1 s per 10,000 records, so on a long trail ``GET /audit/verify``
runs into its time limit (422 ``chain_too_long``). A walk of a few rows is cheap, but rows that merely
hash together prove little: whoever holds the database owner's rights can rewrite a range and re-hash
it. So a range starts at an **anchor** the database alone cannot forge:

* a **signed checkpoint** (``from_checkpoint=<n>|latest``; for ``since=<seq>`` the newest one at or
  before that record), whose signature must verify with a key this service knows; the walk then
  requires its record to still carry the head it signed, and every later record to link to it;
* or, when no checkpoint lies at or before ``since``, the **chain's start**: record 1 links to 64
  zeros, which nobody can move.

Checkpoints after the anchor are checked as the walk meets them (signatures, numbers, ``prev``
links), as in a full walk; those before it are outside the range, and so are the records before it.
A range's start is therefore at most one checkpoint interval before ``since``. With ``until``, those
signing beyond it are outside too — except as witnesses: a checkpoint inside the range signed by a
key this service does not know is vouched for only by a later one a known key signed, so the walk
reads checkpoints past ``until`` up to that one, or to the newest, where it reports the checkpoint
as a full walk does (:class:`audit.checkpoint_store.CheckpointFeed`).

What cannot anchor anything is refused: a checkpoint that does not exist or a position beyond the
head is the caller's mistake (:class:`BadRange`, a 422 naming the parameter), and so is a checkpoint
signed by a key this service no longer knows (a retired one, which only a later checkpoint's ``prev``
chain vouches for); a checkpoint that is no checkpoint, or whose signature does not verify, is the
database's fault (:attr:`Origin.problem`: the verification answers ``ok: false``, walking nothing).

The API and the offline ``python -m audit verify --from-checkpoint|--since|--until`` (:mod:`audit.offline`)
both take their range through :func:`range_request` and walk it with
:meth:`audit.store.AuditStore.verify_range`: a range means the same from inside and outside the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from svckit.contracts.audit import Anchor, RangeAnchor, VerifyQuery
from svckit.db import Connection

from .chain import GENESIS
from .checkpoint_store import CheckpointStore, StoredCheckpoint
from .checkpoints import Checkpoint, InvalidCheckpoint, PublicKeys, parse
from .trail import CheckpointTrail, TrailState


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """What ``GET /audit/verify`` was asked to walk (at most one of ``checkpoint`` and ``since``)."""

    checkpoint: int | Literal["latest"] | None = None
    since: int | None = None
    until: int | None = None
    anchor: Anchor | None = None  # the caller's record, checked within the range


class BadRange(ValueError):
    """The range names nothing on this chain: answered 422 naming ``parameter`` (offline: a usage
    error naming the option)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


def range_request(query: VerifyQuery) -> RangeRequest:
    """The range ``query`` asks for, checked as far as the parameters alone can be (what they say of
    the chain, the walk checks in its snapshot): :class:`BadRange` for ``since`` with
    ``from_checkpoint``, or ``until`` before ``since``."""
    if query.from_checkpoint is not None and query.since is not None:
        raise BadRange("since", "give since or from_checkpoint, not both")
    since, until = query.since_seq, query.until_seq
    if since is not None and until is not None and until < since:
        raise BadRange("until", f"is before since ({since})")
    return RangeRequest(checkpoint=query.checkpoint, since=since, until=until, anchor=query.anchor_point)


@dataclass(frozen=True, slots=True)
class Origin:
    """The anchor found: ``checkpoint`` (verified), or None for the chain's start; or ``problem``, why
    the checkpoint the range names anchors nothing: the checkpoint is at fault (not a checkpoint, a
    signature that fails), or, with ``first_bad``, the records (the one it signs is gone)."""

    checkpoint: Checkpoint | None = None
    problem: str | None = None
    first_bad: int | None = None

    @property
    def start(self) -> int:
        """The first record of the range: the checkpoint's (whose hash is checked), else record 1."""
        return self.checkpoint.seq if self.checkpoint is not None and self.checkpoint.seq > 0 else 1

    @property
    def point(self) -> Anchor | None:
        """The record the walk starts at and what it must hash to (None: from the chain's start)."""
        if self.checkpoint is None or self.checkpoint.seq == 0:
            return None
        return Anchor(seq=self.checkpoint.seq, hash=self.checkpoint.head)

    def described(self) -> RangeAnchor:
        checkpoint = self.checkpoint
        if checkpoint is None:
            return RangeAnchor(kind="start", seq=0, hash=GENESIS)
        return RangeAnchor(
            kind="checkpoint",
            seq=checkpoint.seq,
            hash=checkpoint.head,
            number=checkpoint.number,
            key_id=checkpoint.key_id,
            signed_at=checkpoint.signed_at,
        )

    def trail(self, keys: PublicKeys, retained: Mapping[int, str] | None = None) -> CheckpointTrail:
        """The checkpoint trail of the walk: it goes on after the anchor (whose signature verified,
        counted as checked and verified), or begins at checkpoint 1 from the chain's start.

        ``retained``: copies kept outside the database (offline ``--checkpoints``); those after the
        anchor are held to the database's as in a full walk (one the database lacks is reported), the
        anchor's own copy must be the anchor, and earlier ones lie outside the range."""
        retained = retained or {}
        checkpoint = self.checkpoint
        if checkpoint is None:
            return CheckpointTrail(keys, retained)
        state = TrailState(checkpoint.number, checkpoint.digest, checkpoint.seq)
        trail = CheckpointTrail(keys, retained, state=state, checked=1, verified=1, latest=checkpoint)
        copy = retained.get(checkpoint.number)
        if copy is not None and copy != checkpoint.jws:
            trail.problems.append(
                f"checkpoint {checkpoint.number}, the range's anchor, differs from the copy retained "
                "outside the database: it was replaced (and, as it verifies, re-signed with the key)"
            )
        return trail


async def find_origin(
    conn: Connection, store: CheckpointStore, keys: PublicKeys, wanted: RangeRequest, head: int
) -> Origin:
    """The anchor of ``wanted`` on a chain whose last record is ``head`` (read in the walk's snapshot);
    :class:`BadRange` when the request names nothing usable."""
    parameter = "since" if wanted.since is not None else "from_checkpoint"
    if wanted.since is not None:
        stored = await store.at_or_before(conn, wanted.since)
        if stored is None:
            return Origin()  # no checkpoint that early: the chain's start
    elif wanted.checkpoint is not None:
        if wanted.checkpoint == "latest":
            stored = await store.latest(conn)
            if stored is None:
                raise BadRange(parameter, "no checkpoint has been signed yet: verify the whole chain")
        else:
            stored = await store.numbered(conn, wanted.checkpoint)
            if stored is None:
                newest = await store.latest(conn)
                raise BadRange(
                    parameter,
                    f"there is no checkpoint {wanted.checkpoint}"
                    + (
                        f" (the newest is {newest.number})" if newest is not None else " (none is signed yet)"
                    ),
                )
    else:
        return Origin()  # until alone: from the chain's start
    return _verified(stored, keys, parameter, wanted.since, head)


def _verified(
    stored: StoredCheckpoint, keys: PublicKeys, parameter: str, since: int | None, head: int
) -> Origin:
    """The stored checkpoint as an anchor, if it is one: parsed, numbered as stored, signed by a key
    this service knows, and its signature verifies. Nothing trusts the row's other columns: what
    ``since`` selected by them must still sign a position at or before it."""
    anchor = f"checkpoint {stored.number}, the range's anchor"
    try:
        checkpoint = parse(stored.jws)
    except InvalidCheckpoint as exc:
        return Origin(problem=f"{anchor}, is not a valid checkpoint ({exc})")
    if checkpoint.number != stored.number:
        return Origin(problem=f"{anchor}, is signed as number {checkpoint.number}")
    if not keys.known(checkpoint.key_id):
        raise BadRange(
            parameter,
            f"checkpoint {stored.number} is signed by key {checkpoint.key_id!r}, which this service does "
            "not know (retired?): anchor the range at a later checkpoint",
        )
    try:
        keys.check(checkpoint)
    except InvalidCheckpoint:
        return Origin(problem=f"{anchor}: the signature does not verify")
    if since is not None and checkpoint.seq > since:
        return Origin(
            problem=f"{anchor}, is stored as covering seq {since} or less but signs seq {checkpoint.seq}"
        )
    if checkpoint.seq > head:
        return Origin(
            problem=f"record {head + 1} is missing: signed checkpoint {checkpoint.number} covers the "
            f"chain up to seq {checkpoint.seq}, so records were removed",
            first_bad=head + 1,
        )
    return Origin(checkpoint)
