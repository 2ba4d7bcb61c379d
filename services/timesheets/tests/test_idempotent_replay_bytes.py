"""A retried request with the same Idempotency-Key "gets the first response again, byte for byte in
content" (``timesheets/idempotency.py``; README: "replays the first response").

It does not: the first answer is stored in a ``jsonb`` column (``idempotency_keys.response``) and
read back as ``response::text``, which is Postgres' normalised form — members reordered (shorter
names first), ``", "`` and ``": "`` separators — so the replay is another document text than the
201 it replays (the same JSON value). A client that checks a replay against what it kept of the
first answer (a hash, a signature, a cached ETag of the body) sees a different response.
"""

from __future__ import annotations

import uuid

from testkit.client import SignedApi
from testkit.fixtures import user

from .test_upload import batch_client, rows


async def test_a_replayed_create_is_the_first_answer_byte_for_byte(api: SignedApi) -> None:
    who = user(f"replay-{uuid.uuid4().hex[:8]}", "create:timesheets")
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"date": "2026-11-23", "project": "Replay", "hours": 7.5}
    first = await api.call("POST", "/timesheets", who, json=body, headers=key)
    again = await api.call("POST", "/timesheets", who, json=body, headers=key)
    assert first.status == again.status == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.body == first.body  # the same JSON value (holds today)
    assert again.text == first.text  # the same bytes (fails today)


async def test_a_replayed_upload_is_the_first_answer_byte_for_byte(api: SignedApi) -> None:
    client = batch_client()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    batch = {"entries": rows(3, uuid.uuid4().hex[:8])}
    first = await api.call("POST", "/timesheets/upload", client, json=batch, headers=key)
    again = await api.call("POST", "/timesheets/upload", client, json=batch, headers=key)
    assert first.status == again.status == 201
    assert again.body == first.body
    assert again.text == first.text
