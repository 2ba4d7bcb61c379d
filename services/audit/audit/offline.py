"""``python -m audit verify`` and ``python -m audit export-checkpoints``: the trail checked, and its
checkpoints copied, from outside the service.

Why a command: the verification an auditor trusts should not depend on the service being audited. It
connects to the database directly (``DATABASE_URL``, with ``DB_SSLMODE`` / ``DB_SSLROOTCERT`` as the
services read them; any role that can read ``audit`` will do), takes the public keys from a JWKS file
the auditor pinned (``--keys``; else the public halves of ``AUDIT_CHECKPOINT_KEYS``), and holds the
chain to the checkpoints in the database *and* to copies retained elsewhere (``--checkpoints FILE``:
exported earlier, or the service's own log lines). It needs none of the service's other settings.

``verify`` prints the same JSON document as ``GET /audit/verify`` and exits 0 (intact), 1 (broken),
2 (bad arguments or settings) or 3 (database unreachable). ``--from-checkpoint N|latest``, ``--since
SEQ`` and ``--until SEQ`` verify a range, as the API's ``from_checkpoint``/``since``/``until`` do and
with the same code (:mod:`audit.ranges`): anchored at a signed checkpoint whose signature verifies
(or at the chain's start), the retained copies held to the checkpoints from the anchor on. A range
that names nothing on the chain (a checkpoint that does not exist, a position beyond the head) is a
usage error (exit 2) naming the option. ``export-checkpoints`` writes one JSON line
per checkpoint (``--after N`` continues an earlier export): keep them where the database's owner cannot
write (object storage with retention, a log archive).

A ``--checkpoints`` file may hold JSON lines — this export, the service's log lines (their
``checkpoint`` field), API items — or one JSON document (a ``GET /audit/checkpoints`` page, a list).
Anything else in it is ignored; a checkpoint in it that is not a valid JWS is an error (exit 2). It
is read line by line and not held (:class:`RetainedCopies`): a year of copies fits the audit pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from svckit.contracts.audit import VerifyQuery
from svckit.db import LOCK_ERRORS, LOCK_REFUSAL, UNAVAILABLE_ERRORS, Database
from svckit.dbtls import resolve
from svckit.settings import describe_error

from .app import SCHEMA
from .checkpoints import (
    CheckpointKeyError,
    CheckpointKeys,
    InvalidCheckpoint,
    PublicKeys,
    from_flattened,
    parse,
)
from .ranges import BadRange, RangeRequest, range_request
from .store import AuditStore
from .trail import CheckpointTrail

USAGE, BROKEN, UNREACHABLE_EXIT = 2, 1, 3
# unreachable, or refusing us (a wrong password, a role that may not read the schema)
DATABASE_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class OfflineSettings(BaseSettings):
    """What the commands read from the environment (nothing else of the service's settings)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_sslmode: str = ""
    db_sslrootcert: str = ""
    audit_checkpoint_keys: str = ""
    db_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # as the services' (DB_LOCK_TIMEOUT_SECONDS): behind a table another session holds exclusively (an
    # operator's LOCK TABLE, a migration), the command says so within this bound instead of waiting
    # the statement bound and calling the database unreachable
    db_lock_timeout_seconds: float = Field(default=2.0, gt=0, le=600)


def checkpoint_jws(entry: Any) -> Iterator[str]:
    """The checkpoints in one parsed JSON value of a ``--checkpoints`` file."""
    if isinstance(entry, list):
        for item in entry:
            yield from checkpoint_jws(item)
        return
    if not isinstance(entry, dict):
        return
    if isinstance(entry.get("items"), list):  # a GET /audit/checkpoints page
        yield from checkpoint_jws(entry["items"])
        return
    if isinstance(entry.get("checkpoint"), dict):  # a log line
        yield from checkpoint_jws(entry["checkpoint"])
        return
    jws = entry.get("jws")
    if isinstance(jws, str):
        yield jws
    elif isinstance(jws, dict):
        yield from_flattened(jws)


class RetainedCopies(Mapping[int, str]):
    """Checkpoint number → JWS of a ``--checkpoints`` file, without holding the file in memory.

    Why: the file grows by one checkpoint a minute (the export CronJob's lines, or the service's log
    lines), and the command may run in the audit pod or a Job like it. Read whole — its text, its
    lines, every line parsed — a year of it (525,600 checkpoints) took ~1.8 GB, several times the
    pod's limit (``tests/packaging/test_request_memory.py``). So the file is read line by line and only
    where each checkpoint is (its line's offset and its place among that line's checkpoints) is kept;
    a copy is read back when the walk asks for it (once a checkpoint, in number order). A file that
    is one JSON document spread over lines (a ``GET /audit/checkpoints`` page as saved, a list) is
    read whole instead, as before: that is a page, not a year.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._places: dict[int, int] = {}  # number → line offset << PLACE_BITS | index in that line
        self._document: dict[int, str] = {}  # the checkpoints of a file that is one JSON document
        with path.open("rb") as file:
            first = file.readline()
            if first.lstrip()[:1] in (b"{", b"[") and _parsed(first) is None:
                try:
                    document = json.loads(first + file.read())
                except json.JSONDecodeError:
                    pass  # not one document either: lines, some of them broken
                else:
                    for jws in checkpoint_jws(document):
                        self._add(parse(jws).number, jws, None)
                    return
            file.seek(0)
            offset = 0
            for line in file:
                for index, jws in enumerate(checkpoint_jws(_parsed(line))):
                    self._add(parse(jws).number, jws, offset << PLACE_BITS | index)
                offset += len(line)

    def _add(self, number: int, jws: str, place: int | None) -> None:
        if number in self._places or number in self._document:
            if self[number] != jws:
                raise InvalidCheckpoint(f"{self.path} holds two different checkpoints numbered {number}")
            return
        if place is None:
            self._document[number] = jws
        else:
            self._places[number] = place

    def __getitem__(self, number: int) -> str:
        place = self._places.get(number)
        if place is None:
            return self._document[number]
        with self.path.open("rb") as file:
            file.seek(place >> PLACE_BITS)
            found = list(checkpoint_jws(_parsed(file.readline())))
        return found[place & PLACE_MASK]

    def __iter__(self) -> Iterator[int]:
        yield from self._places
        yield from self._document

    def __len__(self) -> int:
        return len(self._places) + len(self._document)


#: a checkpoint's place in a ``--checkpoints`` file: its line's offset, then its index in that line
PLACE_BITS = 24
PLACE_MASK = (1 << PLACE_BITS) - 1


def _parsed(line: bytes) -> Any:
    """One line of a ``--checkpoints`` file as JSON (None: not JSON, some other line of a log)."""
    try:
        return json.loads(line.decode("utf-8"))
    except json.JSONDecodeError:
        return None


def read_retained(path: Path) -> Mapping[int, str]:
    """Checkpoint number → JWS from a file of retained copies (duplicates must agree)."""
    try:
        return RetainedCopies(path)
    except RecursionError:  # json.loads (or the walk) on a value nested beyond Python's limit
        raise InvalidCheckpoint(f"{path} nests JSON too deeply to be retained checkpoints") from None


def public_keys(args: argparse.Namespace, settings: OfflineSettings) -> PublicKeys:
    if args.keys is not None:
        return PublicKeys.from_jwks(json.loads(Path(args.keys).read_text(encoding="utf-8")))
    if settings.audit_checkpoint_keys.strip():
        private = CheckpointKeys.parse(settings.audit_checkpoint_keys)
        return PublicKeys(private.keys)
    raise CheckpointKeyError(
        "give --keys FILE (a JWKS, e.g. from GET /api/audit/checkpoint-keys) or AUDIT_CHECKPOINT_KEYS"
    )


async def _with_store(settings: OfflineSettings) -> tuple[Database, AuditStore]:
    tls = resolve(settings.database_url, settings.db_sslrootcert, settings.db_sslmode)
    database = Database(
        settings.database_url,
        schema=SCHEMA,
        application_name="audit-offline",
        min_size=1,
        max_size=2,
        connect_timeout=settings.db_connect_timeout_seconds,
        lock_timeout=settings.db_lock_timeout_seconds,
        tls=tls,
    )
    await database.wait_connected(settings.db_connect_timeout_seconds)
    return database, AuditStore(database, SCHEMA)


def option(parameter: str) -> str:
    """The command-line option of an API parameter (``from_checkpoint`` → ``--from-checkpoint``)."""
    return "--" + parameter.replace("_", "-")


def wanted_range(args: argparse.Namespace) -> RangeRequest | None:
    """The range the options ask for, read as ``GET /audit/verify`` reads its parameters (None: the
    whole chain); :class:`BadRange` naming the API's parameter when they are wrong."""
    given = {
        name: getattr(args, name)
        for name in ("from_checkpoint", "since", "until")
        if getattr(args, name) is not None
    }
    if not given:
        return None
    try:
        query = VerifyQuery.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        parameter = str(error["loc"][0]) if error["loc"] else next(iter(given))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise BadRange(parameter, message) from None
    return range_request(query)


async def _verify(
    settings: OfflineSettings, keys: PublicKeys, retained: Mapping[int, str], wanted: RangeRequest | None
) -> int:
    database, store = await _with_store(settings)
    try:
        if wanted is None:
            result = await store.verify(trail=CheckpointTrail(keys, retained))
        else:  # unbounded, as the whole walk: nobody shares this pool
            result = await store.verify_range(wanted, keys, retained=retained, bounded=False)
    finally:
        await database.close()
    print(result.result().model_dump_json(exclude_none=True, indent=2))
    if result.ok:
        covered = result.covered
        span = f" from record {covered.from_seq} to {covered.to_seq}" if covered is not None else ""
        print(f"audit chain intact{span}: {result.checked} records", file=sys.stderr)
        return 0
    where = f" at record {result.first_bad}" if result.first_bad is not None else ""
    print(f"audit chain BROKEN{where}: {result.reason}", file=sys.stderr)
    return BROKEN


async def _export(settings: OfflineSettings, after: int) -> int:
    database, store = await _with_store(settings)
    try:
        async with database.connection() as conn:
            while batch := await store.checkpoints.after(conn, after, 500):
                for stored in batch:
                    checkpoint = parse(stored.jws)
                    print(json.dumps({**checkpoint.log_fields(), "jws": checkpoint.jws}, sort_keys=True))
                    after = stored.number
    finally:
        await database.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit", description="Check or copy the audit trail offline."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="verify the chain against its signed checkpoints")
    verify.add_argument("--checkpoints", type=Path, help="checkpoints retained outside the database")
    verify.add_argument("--keys", type=Path, help="a JWKS of the checkpoint keys (pinned by the auditor)")
    verify.add_argument(
        "--from-checkpoint",
        metavar="N|latest",
        help="verify a range: from this signed checkpoint (its number, or the newest) to the head",
    )
    verify.add_argument(
        "--since",
        metavar="SEQ",
        help="verify a range: from the newest signed checkpoint at or before this record (not with "
        "--from-checkpoint)",
    )
    verify.add_argument("--until", metavar="SEQ", help="end the range at this record instead of the head")
    export = commands.add_parser("export-checkpoints", help="print every checkpoint as one JSON line")
    export.add_argument("--after", type=int, default=0, help="only checkpoints numbered above this")
    args = parser.parse_args(argv)
    try:
        settings = OfflineSettings()
        resolve(settings.database_url, settings.db_sslrootcert, settings.db_sslmode)
    except (ValidationError, ValueError) as exc:
        message = describe_error(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"audit {args.command}: {message}", file=sys.stderr)
        return USAGE
    keys: PublicKeys | None = None
    retained: Mapping[int, str] = {}
    wanted: RangeRequest | None = None
    if args.command == "verify":
        try:
            wanted = wanted_range(args)
            keys = public_keys(args, settings)
            retained = read_retained(args.checkpoints) if args.checkpoints is not None else {}
        except (
            CheckpointKeyError,
            InvalidCheckpoint,
            OSError,
            json.JSONDecodeError,
            UnicodeDecodeError,
        ) as exc:
            print(f"audit verify: {exc}", file=sys.stderr)
            return USAGE
        except BadRange as exc:
            print(f"audit verify: {option(exc.parameter)}: {exc.message}", file=sys.stderr)
            return USAGE
    try:
        if keys is None:
            return asyncio.run(_export(settings, args.after))
        return asyncio.run(_verify(settings, keys, retained, wanted))
    except BadRange as exc:  # what the range names is not on this chain (found in the walk's snapshot)
        print(f"audit verify: {option(exc.parameter)}: {exc.message}", file=sys.stderr)
        return USAGE
    except LOCK_ERRORS:  # the database is fine: another session holds the table (not "unreachable")
        print(f"audit {args.command} failed: {LOCK_REFUSAL}", file=sys.stderr)
        return UNREACHABLE_EXIT
    except DATABASE_FAILURES as exc:
        print(
            f"audit {args.command}: database unreachable or refusing ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return UNREACHABLE_EXIT
