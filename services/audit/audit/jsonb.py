"""Postgres's ``jsonb`` text form of a JSON value, written in Python.

A record's hash covers its details as ``jsonb`` prints them (see :mod:`audit.chain`): object keys
ordered by length then bytes, ``", "`` and ``": "`` between members, the same string escapes as
``json.dumps(ensure_ascii=False)``. Writing that form here lets the ingesting process hash a group
before it reaches the database, in one round trip. It is a prediction, never trusted: the append
function (migration 0006) compares every text with jsonb's own form of it and stores nothing when
one differs, answering the right forms instead. So a value spelt differently here (a float
in exponent notation, which ``numeric`` prints in full) costs a second round trip, never a wrong hash.
"""

from __future__ import annotations

from collections.abc import Iterable
from json.encoder import encode_basestring as _string
from typing import Any


def _key(name: str) -> tuple[int, bytes]:
    encoded = name.encode()
    return (len(encoded), encoded)


def jsonb_text(value: Any) -> str:
    """``value`` (as parsed from JSON) in the text form ``jsonb`` outputs."""
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        if len(value) == 1:
            names: Iterable[str] = value
        elif "".join(value).isascii():
            # one byte per character: by length, then by name (both sorts in C; the second is stable)
            names = sorted(sorted(value), key=len)
        else:
            names = sorted(value, key=_key)
        return "{" + ", ".join([f"{_string(name)}: {jsonb_text(value[name])}" for name in names]) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(item) for item in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")
