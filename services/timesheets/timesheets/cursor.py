"""Opaque, stable cursors for listings ordered by (date desc, created_at desc, id desc).

The cursor is the sort key of the last item served, base64url-encoded JSON. Keyset pagination on the
full sort key means inserts and deletes between pages neither skip nor repeat items, and every page
is an index range scan however deep the client pages. The cursor carries nothing secret and grants
nothing: the owner filter is applied on every page from the identity, never from the cursor.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from typing import NamedTuple

from svckit.problems import validation_problem


class Position(NamedTuple):
    date: dt.date
    created_at: dt.datetime
    id: uuid.UUID


def encode(position: Position) -> str:
    """The cursor after ``position``: base64url of the compact JSON array ``[date, created_at, id]``
    (ISO texts, the id's canonical form). Written out rather than by ``json.dumps``, which builds an
    encoder for its ``separators`` on every call (half the cost of a page's cursor): none of the three
    texts holds a character JSON escapes (digits, letters, ``-:.+T``), so the bytes are the same
    (``tests/test_representation.py``)."""
    raw = f'["{position.date.isoformat()}","{position.created_at.isoformat()}","{position.id}"]'.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str, parameter: str = "cursor") -> Position:
    """The position a cursor names, or a 422 problem naming the parameter."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        date_text, created_text, id_text = json.loads(raw)
        if not isinstance(id_text, str):  # uuid.UUID(1) is an AttributeError, not a ValueError
            raise TypeError("the id is not a string")
        created_at = dt.datetime.fromisoformat(created_text)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        created_at.astimezone(dt.UTC)  # a forged offset can put it outside what has a UTC form
        return Position(dt.date.fromisoformat(date_text), created_at, uuid.UUID(id_text))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise validation_problem(
            [
                {
                    "field": parameter,
                    "loc": ["query", parameter],
                    "message": "is not a cursor this service issued",
                    "type": "invalid_cursor",
                }
            ],
            "The query string has invalid parameters.",
        ) from exc
