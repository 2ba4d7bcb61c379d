"""Reading the body of ``POST /timesheets``: pydantic's JSON validator straight on the bytes whenever
that is known to give what :func:`svckit.body.parse_body` gives, else ``parse_body`` itself.

``parse_body`` reads a body in two Python passes: ``json.loads`` with hooks on every object and
number (duplicate names, integer range, non-finite numbers), then ``EntryIn.model_validate`` over the
dict. :func:`fast_entry` validates the bytes in one pass (``EntryIn.model_validate_json``) and takes
the result only when nothing ``parse_body`` refuses can be in it:

* not UTF-8, a byte order mark, invalid JSON, a value the model refuses: pydantic refuses them too
  (this path then gives way and ``parse_body`` answers, 400 or 422 as always);
* a ``Content-Encoding`` header (``parse_body`` refuses any coding but ``identity``, 415): gives way;
* no ``\\u`` escape at all (the only way JSON text carries a lone surrogate) and no control character
  anywhere (JSON forbids them in strings; whitespace between tokens is allowed, but a compact body
  has none, and one that has them gives way);
* numbers: an entry has one, ``hours``, which the model holds to (0, 24]: an integer beyond
  ±(2^53-1), an overflow to infinity or a NaN is refused by the model itself;
* nesting: every member of an entry is a string, a number or null: anything nested is refused by the
  model;
* a member name twice (pydantic keeps the last, ``parse_body`` refuses): every member name is a
  string followed by ``:``, so with no whitespace before any colon (else: give way) the body has at
  least as many ``":`` as member names, and more than the members the model was given exactly when a
  name was repeated (or a string contains ``":``: give way).

``tests/test_intake.py`` holds the two paths to the same entries and the same refusals over a corpus
of awkward bodies.

The approvals service's ``POST /internal/timesheets/{id}/decision`` bodies are read the same way
(:func:`fast_decision`, ``ApplyDecision``), under the same conditions, adapted to its model: every
member is a string, null or the one nested object ``by`` (whose members are strings or null), so
anything nested deeper, and any number, ``true`` or ``false`` where a string is expected, is refused
by the model — ``at`` included: an ``Instant`` is RFC 3339 text only, never a number; member names
counted with the nested object's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from svckit.body import parse_body
from svckit.contracts.timesheets import ApplyDecision, EntryIn

M = TypeVar("M", bound=BaseModel)

#: what makes the one-pass read give way: a control character, a byte order mark, a ``\u`` escape,
#: whitespace between a member name and its colon
_GIVE_WAY = re.compile(r'[\x00-\x1f\ufeff]|\\u|"\s+:')


def _one_pass(raw: bytes, model: type[M], nested: tuple[str, ...] = ()) -> M | None:
    """``raw`` as ``parse_body(request, model)`` reads it, or None: let ``parse_body`` read (and
    answer). The conditions are the module docstring's; ``nested``: the model's members that are
    objects, whose member names count too."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _GIVE_WAY.search(text) is not None:
        return None
    try:
        found = model.model_validate_json(text)
    except ValidationError:
        return None
    names = len(found.model_fields_set)
    for member in nested:
        names += len(getattr(found, member).model_fields_set)
    return found if text.count('":') == names else None


def fast_entry(raw: bytes) -> EntryIn | None:
    """The entry in ``raw`` as ``parse_body`` reads it, or None: let ``parse_body`` read (and answer)."""
    return _one_pass(raw, EntryIn)


def fast_decision(raw: bytes) -> ApplyDecision | None:
    """The decision in ``raw`` as ``parse_body`` reads it, or None: let ``parse_body`` read (and
    answer)."""
    return _one_pass(raw, ApplyDecision, ("by",))


async def _read(request: Request, model: type[M], fast: Callable[[bytes], M | None]) -> M:
    """The request's body as ``model``, read by ``fast`` when it can vouch for it, or the problem
    ``parse_body`` raises for it."""
    headers = request.headers
    if headers.get("content-type", "").lower() == "application/json" and "content-encoding" not in headers:
        found = fast(await request.body())
        if found is not None:
            return found
    return await parse_body(request, model)


async def read_entry(request: Request) -> EntryIn:
    """The request's entry, or the problem ``parse_body`` raises for it."""
    return await _read(request, EntryIn, fast_entry)


async def read_decision(request: Request) -> ApplyDecision:
    """The request's decision, or the problem ``parse_body`` raises for it."""
    return await _read(request, ApplyDecision, fast_decision)
