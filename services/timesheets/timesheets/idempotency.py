"""``Idempotency-Key`` for create and upload (draft-ietf-httpapi-idempotency-key-header).

A retried request (same caller, same key, same normalised body) gets the first response again,
byte for byte in content (kept as the text sent, not as jsonb) and with the same status and
``Location``, plus ``Idempotent-Replayed: true``, and creates nothing; the same key with a different
body is refused with 422. The key is claimed in the same transaction as the write it protects, so a
request that fails leaves the key free and two concurrent retries cannot both write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from svckit.db import Connection
from svckit.problems import Problem

from . import store

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def key_from(request: Request) -> str | None:
    """The request's key, if any; a malformed one is a 400 naming the header.

    The header is one value. Two field lines are what a hop may join into one, ``a, b`` (RFC 9110
    §5.3), which the character set refuses; they are refused as such. Taking the first would let a
    retry that sends the same two the other way round create the entry again."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    value = values[0].strip().strip('"')  # the draft spells it as a structured-field string
    if len(values) > 1 or not _KEY.fullmatch(value):
        raise Problem(
            400,
            "Bad Request",
            f"The {HEADER} header must be one value of 1-255 visible ASCII characters.",
            errors=[
                {"field": HEADER, "loc": ["header", HEADER], "message": "malformed", "type": "value_error"}
            ],
        )
    return value


def fingerprint(operation: str, canonical: Any) -> str:
    text = json.dumps([operation, canonical], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    caller: store.Principal
    key: str

    async def save(self, conn: Connection, status: int, body: str, location: str | None = None) -> None:
        """Keep the answer for replays: ``body``, the JSON text as sent (the same string)."""
        await store.store_response(conn, self.caller, self.key, status, body, location)


async def begin(
    conn: Connection,
    caller: store.Principal,
    key: str,
    operation: str,
    request_fingerprint: str,
    ttl: dt.timedelta,
) -> Claim | Response:
    """Claim the key (go ahead, then :meth:`Claim.save`) or get the earlier response to replay."""
    earlier = await store.claim_key(conn, caller, key, operation, request_fingerprint, ttl)
    if earlier is None:
        return Claim(caller, key)
    if earlier.operation != operation or earlier.fingerprint != request_fingerprint:
        raise Problem(
            422,
            "Unprocessable Content",
            f"This {HEADER} was already used for a different request; use a new key for a new request.",
            errors=[
                {
                    "field": HEADER,
                    "loc": ["header", HEADER],
                    "message": "reused with a different request body",
                    "type": "idempotency_key_reused",
                }
            ],
        )
    headers = {REPLAYED_HEADER: "true"}
    if earlier.location:
        headers["Location"] = earlier.location
    return Response(
        earlier.response.encode(),
        status_code=earlier.status_code,
        media_type="application/json",
        headers=headers,
    )
