"""A long audit trail whose records chain correctly, written fast (for memory and time measurements).

Ingesting 200,000 events through ``POST /internal/events`` takes minutes; these rows are hashed here
(:func:`audit.chain.canonical_of`, what the walk recomputes) and written with one ``COPY`` as the
schema's owner, at about 100,000 records a second. The trigger that keeps ``chain_head`` fires for the
``COPY`` as for any insert, so the service finds the head where it appends.

Most records are small (an entry's details, as the platform writes them); ``fat`` of them, the newest,
carry details as large as the contract lets an event have (:data:`MAX_DETAILS_BYTES`): the heaviest
page of a listing and the heaviest batches of a walk. Checkpoints are signed every ``checkpoint_every``
records with ``keys`` (as the service's signer would, without its walk).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from audit.chain import GENESIS, canonical_of, timestamp
from audit.checkpoints import GENESIS_DIGEST, CheckpointKeys
from audit.store import COLUMNS as STORED_COLUMNS
from svckit.contracts.audit import MAX_DETAILS_BYTES

#: recorded_at of record 1; one record a second after it
START = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = STORED_COLUMNS  # the order rows are built and copied in: the store's


def fat_details() -> str:
    """Details of the largest size an event may have, as the jsonb text the chain hashes."""
    text = json.dumps({"notes": ""}, separators=(", ", ": "))
    pad = MAX_DETAILS_BYTES - len(text.encode()) - 64
    return json.dumps({"notes": "n" * pad}, separators=(", ", ": "))


SMALL = json.dumps({"date": "2026-11-23", "hours": 7.5, "project": "Store rollout"}, separators=(", ", ": "))


def records(count: int, fat: int = 0) -> list[tuple[Any, ...]]:
    """``count`` chained rows in :data:`COLUMNS` order, the last ``fat`` with the largest details."""
    large = fat_details()
    rows: list[tuple[Any, ...]] = []
    prev = GENESIS
    for seq in range(1, count + 1):
        at = START + timedelta(seconds=seq)
        values = (
            seq,
            f"00000000-0000-4000-8000-{seq:012x}",  # the event's id, as text (asyncpg takes it so)
            at,
            at,
            "timesheets",
            "http://localhost:9000/",
            f"local|user{seq % 500}",
            "user",
            "timesheets-spa",
            f"User {seq % 500}",
            "timesheet.created",
            "timesheet",
            f"{seq:08x}-0000-4000-8000-000000000000",
            "success",
            f"{seq:032x}",
            large if seq > count - fat else SMALL,
            prev,
        )
        text = timestamp(at)
        digest = hashlib.sha256(canonical_of(*values[:2], text, text, *values[4:])).hexdigest()
        rows.append((*values, digest))
        prev = digest
    return rows


async def write(
    owner_dsn: str, count: int, *, fat: int = 0, keys: str | None = None, checkpoint_every: int = 0
) -> str:
    """The trail of :func:`records` in ``audit.records`` of an empty, migrated database (as its
    owner), checkpoints signed with ``keys`` every ``checkpoint_every`` records; the head's hash."""
    rows = records(count, fat)
    conn = await asyncpg.connect(owner_dsn)
    try:
        await conn.copy_records_to_table("records", schema_name="audit", columns=COLUMNS, records=rows)
        if keys is not None and checkpoint_every > 0:
            signer = CheckpointKeys.parse(keys)
            prev = GENESIS_DIGEST
            for number, seq in enumerate(range(checkpoint_every, count + 1, checkpoint_every), start=1):
                checkpoint = signer.sign(number, seq, rows[seq - 1][-1], START + timedelta(seconds=seq), prev)
                await conn.execute(
                    """INSERT INTO audit.checkpoints (number, seq, head, signed_at, key_id, jws)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    number,
                    seq,
                    checkpoint.head,
                    checkpoint.signed_at,
                    checkpoint.key_id,
                    checkpoint.jws,
                )
                prev = checkpoint.digest
        await conn.execute("ANALYZE audit.records")
    finally:
        await conn.close()
    return str(rows[-1][-1])
