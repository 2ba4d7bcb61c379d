"""Where a decision's CPU goes, by kind of work: a py-spy profile (``--format raw``) summed by category.

``python -m bench._breakdown FILE ...`` prints, for each profile that ``BENCH_APPROVALS_PROFILE`` (or
any other ``*_PROFILE`` option) wrote, the share of its samples in each category of
:data:`CATEGORIES`, twice: of all samples, and of the samples whose innermost frame is not one of
:data:`WAIT_LEAVES`. The second column is the one to compare work by. py-spy counts a thread as
running while the kernel has it runnable (:class:`bench._measure.ProfileTime`), and on a loaded
machine a process is preempted for the process it has just woken: right after a socket write (to the
client, the peer, Redis or Postgres) or in the event loop's own native code, where py-spy shows the
innermost Python frame (``Runner.run``). Those lines collect most of the waiting, so leaving them out
leaves the Python-level work, close to its CPU (under the decision's load on 2 cores, half to two
thirds of the services' samples are such waits; ``perf`` puts the interpreter and its extensions at
about three quarters of their CPU, the kernel's socket work at ~15%).

A stack is put in the category of its innermost frame that matches one (a ``uuid5`` under
``settlement_id`` counts as an audit event's work, an ``asyncio.timeout`` as its caller's: the peer
call's, or asyncpg's release of a connection). The categories separate what the plain reference
(:mod:`bench._reference_app`) does as well — serving HTTP, its SQL and pool, the contract's reading
and writing — from what only the services do: the identity contract (the check, the replay memory,
signing the peer calls) and the audit trail (the events, the relay to the audit service).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: (category, pattern over one frame as py-spy names it: ``function (module/file.py:line)``), the
#: first that matches a frame wins
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("event loop (native: sockets, timers, callbacks)", r"^Runner\.run \(asyncio/"),
    ("socket writes (client, peer)", r"^(LeanCycle\._write|_Connection\.send|StreamWriter\._writelines) "),
    ("identity: replay memory (Redis)", r"\(svckit/replay"),
    (
        "identity: signing peer calls",
        r"^(PreparedIdentity\.header_block|new_nonce|PeerHttp\.request\.<locals>\.signed) ",
    ),
    (
        "identity: check (verify, digest, headers)",
        r"^(IdentityVerifier|identity_headers|content_digest|IdentityGate|_read_body|replaying_receive)[. ]",
    ),
    (
        "audit: events (outbox values, ids)",
        r"^(decided|voided|settlement_id|approver_of|outbox_values|_details_text|_actor_json) ",
    ),
    ("audit: outbox relay", r"\(svckit/(outbox|receipts)|\(aiohttp/"),
    (
        "connection pool (asyncpg's, svckit.db's uses)",
        r"^(Pool\.|PoolConnectionHolder|PoolAcquireContext|PooledConnection|PoolConnectionProxy|shield )",
    ),
    ("SQL statements (asyncpg)", r"\(asyncpg/|^Database\.write_once "),
    (
        "contract: read, validate, write",
        r"\(pydantic|^(entry_from|entry_in|apply_body|read_decision|_read|_one_pass|fast_decision|"
        r"decision_json|decision_of|entry_json|_entry|_hours|_person|rfc3339|send_json|parse_body|"
        r"DecisionRow\.of|EntryRow\.of|page_json|rows_of) |^encode \(timesheets/cursor",
    ),
    ("peer HTTP client (pool, timeouts, parsing)", r"\(approvals/peerhttp|^Timesheets\._call "),
    ("metrics, logging", r"\(prometheus_client/|\(svckit/metrics|\(logging/"),
    (
        "serving: protocol, cycle, front, routing",
        r"\(svckit/(server|cycle|middleware|context)|\(uvicorn/|\(starlette/",
    ),
    ("the services' own logic", r"\((approvals|timesheets)/"),
)
OTHER = "other (asyncio, standard library)"

#: innermost frames at which a preempted process waits (see the module docstring)
WAIT_LEAVES = frozenset(
    {
        "Runner.run (asyncio/runners.py)",
        "LeanCycle._write (svckit/cycle.py)",
        "_Connection.send (approvals/peerhttp.py)",
        "SetOnceWire.send (svckit/replay.py)",
        "Connection._do_execute (asyncpg/connection.py)",
        "StreamWriter._writelines (aiohttp/http_writer.py)",
        "_PollLikeSelector.select (selectors.py)",
    }
)

_LINE = re.compile(r":\d+\)$")
_PATTERNS = tuple((name, re.compile(pattern)) for name, pattern in CATEGORIES)


def frame_name(frame: str) -> str:
    """``function (file.py:12)`` without its line number."""
    return _LINE.sub(")", frame)


def category_of(frames: Sequence[str]) -> str:
    """The category of the innermost frame (of ``frames``, outermost first) that matches one."""
    for frame in reversed(frames):
        name = frame_name(frame)
        for category, pattern in _PATTERNS:
            if pattern.search(name):
                return category
    return OTHER


@dataclass(frozen=True)
class Breakdown:
    """Samples per category: all of them, and those not at a wait leaf (``work``)."""

    samples: Counter[str]
    work: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.samples.values())

    @property
    def work_total(self) -> int:
        return sum(self.work.values())

    def lines(self) -> list[str]:
        total, work = max(1, self.total), max(1, self.work_total)
        rows = [f"{'all':>6} {'work':>6}  ({self.total} samples, {self.work_total} not at a wait leaf)"]
        for category, count in self.samples.most_common():
            rows.append(f"{count / total:6.1%} {self.work[category] / work:6.1%}  {category}")
        return rows


def breakdown(lines: Iterable[str]) -> Breakdown:
    """The categories of a py-spy ``--format raw`` profile's lines (a collapsed stack and a count)."""
    samples: Counter[str] = Counter()
    work: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        category = category_of(frames)
        samples[category] += int(count)
        if frame_name(frames[-1]) not in WAIT_LEAVES:
            work[category] += int(count)
    return Breakdown(samples, work)


def main(paths: Sequence[str]) -> int:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as lines:
            found = breakdown(lines)
        print(f"== {Path(path).name}")
        print("\n".join(found.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
