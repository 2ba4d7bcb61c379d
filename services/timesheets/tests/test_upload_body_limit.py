"""A batch the contract accepts is not refused for its size in bytes.

``POST /timesheets/upload`` takes up to 1,000 rows (docs, the published ``maxItems``), each with a
``notes`` of up to 2,000 characters, a ``project`` of up to 100 and a ``user`` of up to 255. The
service's ``MAX_BODY_BYTES`` (4 MiB) was sized on the belief that "a 1,000-row upload with long
notes is ~2 MB" (``TimesheetsSettings``): true of ASCII only. The same rows in any script beyond
Latin take 2-3 bytes a character in UTF-8 (and 6 as the ``\\uXXXX`` escapes Python's ``json.dumps``
writes by default), so a valid batch is answered 413 — while the gateway in front takes up to
10 MiB, so the refusal comes from behind it, after the whole body travelled.
"""

from __future__ import annotations

import json
import uuid

import asyncpg

from testkit.client import SignedApi

from .test_upload import batch_client, stored


async def test_a_full_batch_of_valid_rows_in_cjk_is_stored(api: SignedApi, db: asyncpg.Connection) -> None:
    prefix = uuid.uuid4().hex[:8]
    rows = [
        {
            "user": f"{prefix}-{i % 7}",
            "date": "2026-11-23",
            "project": "倉庫" * 50,  # 100 characters
            "hours": 1,
            "notes": "作業記録" * 500,  # 2,000 characters
        }
        for i in range(1000)
    ]
    raw = json.dumps({"entries": rows}, ensure_ascii=False).encode()
    assert 4 << 20 < len(raw) < 10 << 20  # over the service's limit, within the gateway's
    reply = await api.call(
        "POST", "/timesheets/upload", batch_client(), data=raw, headers={"content-type": "application/json"}
    )
    assert reply.status == 201, reply.text[:300]
    assert reply.body["count"] == 1000
    assert await stored(db, prefix) == 1000
