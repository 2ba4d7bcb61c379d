"""The reported attack on the audit trail, as tests perform it: with the database owner's rights.

:func:`rewrite_history` changes a record, recomputes the hash chain from there on so that it is
internally consistent again, and re-enables the append-only trigger — after which a verification of the
chain alone says ``{"ok": true}``. Only the signed checkpoints (audit/checkpoints.py) can tell.
"""

from __future__ import annotations

import asyncpg
from audit.chain import record_hash

ENABLE = "ALTER TABLE audit.records ENABLE TRIGGER USER"
DISABLE = "ALTER TABLE audit.records DISABLE TRIGGER USER"


async def rewrite_history(owner_dsn: str, seq: int, assignment: str) -> None:
    """``UPDATE audit.records SET <assignment> WHERE seq = <seq>``, then re-hash every record from
    ``seq`` on, in one transaction with the trigger off, and switch it back on."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            await conn.execute(DISABLE)
            await conn.execute(f"UPDATE audit.records SET {assignment} WHERE seq = $1", seq)
            prev = await conn.fetchval("SELECT hash FROM audit.records WHERE seq = $1", seq - 1)
            rows = await conn.fetch(
                "SELECT *, details::text AS details FROM audit.records WHERE seq >= $1 ORDER BY seq", seq
            )
            for row in rows:
                record = {**dict(row), "prev_hash": prev if prev is not None else "0" * 64}
                digest = record_hash(record)
                await conn.execute(
                    "UPDATE audit.records SET prev_hash = $1, hash = $2 WHERE seq = $3",
                    record["prev_hash"],
                    digest,
                    row["seq"],
                )
                prev = digest
            await conn.execute(ENABLE)
    finally:
        await conn.close()


async def owner_sql(owner_dsn: str, *statements: str) -> None:
    """Statements as the owner, in one transaction (the triggers of records and checkpoints off)."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            await conn.execute(DISABLE)
            await conn.execute("ALTER TABLE audit.checkpoints DISABLE TRIGGER USER")
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("ALTER TABLE audit.checkpoints ENABLE TRIGGER USER")
            await conn.execute(ENABLE)
    finally:
        await conn.close()
