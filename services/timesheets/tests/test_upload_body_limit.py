"""A batch the contract accepts is not refused for its size in bytes.

``POST /timesheets/upload`` takes up to 1,000 rows (docs, the published ``maxItems``), each with a
``notes`` of up to 2,000 characters, a ``project`` of up to 100 and a ``user`` of up to 255. The
service's ``MAX_BODY_BYTES`` was 4 MiB, sized on the belief that "a 1,000-row upload with long notes
is ~2 MB": true of ASCII only. The same rows in any script beyond Latin take 2-3 bytes a character in
UTF-8 (and 6 as the ``\\uXXXX`` escapes Python's ``json.dumps`` writes by default), so a valid batch
was answered 413 — while the gateway in front took up to 10 MiB, so the refusal came from behind
it, after the whole body travelled. Both now default to ``MAX_UPLOAD_BYTES`` (16 MiB).
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from svckit.contracts.timesheets import MAX_UPLOAD_BYTES, MAX_UPLOAD_ENTRIES

from testkit.client import SignedApi

from .test_upload import batch_client, stored


@pytest.mark.parametrize("ensure_ascii", [False, True], ids=["utf-8", "escaped"])
async def test_a_full_batch_of_the_longest_rows_in_cjk_is_stored(
    api: SignedApi, db: asyncpg.Connection, ensure_ascii: bool
) -> None:
    prefix = uuid.uuid4().hex[:8]
    rows = []
    for i in range(MAX_UPLOAD_ENTRIES):
        name = f"{prefix}-{i:04d}"  # a user of their own: 23.75 hours each on the one date
        rows.append(
            {
                "user": name + "者" * (255 - len(name)),  # 255 characters
                "date": "2026-11-23",
                "project": "倉庫" * 50,  # 100 characters
                "hours": 23.75,
                "notes": "作業記録" * 500,  # 2,000 characters
            }
        )
    raw = json.dumps({"entries": rows}, ensure_ascii=ensure_ascii).encode()
    assert 4 << 20 < len(raw) <= MAX_UPLOAD_BYTES  # over the former limit, within the new one
    reply = await api.call(
        "POST", "/timesheets/upload", batch_client(), data=raw, headers={"content-type": "application/json"}
    )
    assert reply.status == 201, reply.text[:300]
    assert reply.body["count"] == MAX_UPLOAD_ENTRIES
    assert await stored(db, prefix) == MAX_UPLOAD_ENTRIES
