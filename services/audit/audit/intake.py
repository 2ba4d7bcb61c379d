"""Reading the body of ``POST /internal/events``: pydantic's JSON validator straight on the bytes
whenever that is known to give what :func:`svckit.body.parse_body` gives, else ``parse_body`` itself.

``parse_body`` reads a body in three Python passes: ``json.loads`` with hooks on every object and
number (duplicate names, integer range), a walk for the nesting depth once a batch has more than 32
brackets (every batch of nine events or more), and ``IngestBatch.model_validate`` over the dicts. For a
batch that is most of the service's CPU per event. :func:`fast_read` validates the bytes in one pass
(``IngestBatch.model_validate_json``) and takes the result only when nothing ``parse_body`` refuses can
be in it:

* not UTF-8, a byte order mark, invalid JSON, a value the model refuses: pydantic refuses them too
  (this path then gives way and ``parse_body`` answers, 400 or 422 as always);
* a ``Content-Encoding`` header (``parse_body`` refuses any coding but ``identity``, 415): gives way;
* the model's checks written in Python, each a call per value (names without NUL or lone surrogates,
  an instant with a UTC form): the body is validated with subclasses of the contract's models that
  leave them out (:data:`_Batch`, derived from the contract's own fields), when what they refuse
  cannot be in it: no ``\\u`` escape at all (the only way JSON text carries a NUL or a lone
  surrogate, or spells a character other than as itself) and no ``occurred_at`` in the year 1 or
  9999, read from the parsed batch (only an instant on the first or the last day has no UTC form;
  an instant is RFC 3339 text, which the fast models check too);
* integers beyond ±(2^53-1): only ``details`` takes a number, and the walk that counts its member
  names (below) gives way at such an integer. (Scanning the text for numbers of 16 digits or more
  cost more per event than the rest of these checks together.) Floats need no check: pydantic reads
  them correctly rounded, as ``float`` does (``test_intake`` holds the two to the same values);
* NaN, infinities: only ``details`` takes a number, and the walk gives way at a non-finite one;
* the details' own check in Python (the contract's: at most ``MAX_DETAILS_BYTES`` as JSON text, no
  NUL, deeper nesting looked for once the text has more than ``MAX_DETAILS_DEPTH`` brackets): made on
  the ``jsonb`` text form of the details (:func:`~audit.jsonb.jsonb_text`) that the chain hashes and
  the store would write anyway, which is ``json.dumps``' text in another key order (the same
  separators and spellings: the same bytes, the same brackets); where that check would look further
  or refuse, the one pass gives way. The form goes on to the store with the batch (:class:`Intake`):
  each event's details are written as JSON once, not once to be measured and once to be hashed;
* nesting deeper than :data:`~svckit.body.MAX_DEPTH`: a batch this path takes nests at most
  ``MAX_DETAILS_DEPTH`` + 4 levels (the details check above gives way at more brackets than that);
* a member name twice in one object (pydantic keeps the last): every member name is a string
  followed by ``:``, so with no whitespace before any colon (else: give way) the body has at least
  as many ``":`` as member names, and more than the distinct names the model was given exactly when
  a name was repeated (or a string contains ``":``: give way).

``test_intake`` holds the two paths to the same models and the same refusals over a corpus of
awkward bodies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, Field, ValidationError, create_model
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope
from svckit.body import MAX_SAFE_INTEGER, parse_body
from svckit.contracts.audit import (
    MAX_DETAILS_BYTES,
    MAX_DETAILS_DEPTH,
    Actor,
    AuditEvent,
    IngestBatch,
    Resource,
    Storable,
)
from svckit.contracts.fields import Instant
from svckit.identity import replaying_receive

from .jsonb import jsonb_text

Model = TypeVar("Model", bound=BaseModel)

_SPACED_COLON = re.compile(r'"\s+:')


#: the model checks written in Python that :func:`fast_read` makes for the whole body at once (the
#: AfterValidators among these; Instant's BeforeValidator, RFC 3339 text only, stays in the fast model)
_PYTHON_CHECKS = (
    Storable,  # no NUL or lone surrogate
    *get_args(Instant)[1:],  # a UTC form
    *(m for m in AuditEvent.model_fields["details"].metadata if isinstance(m, AfterValidator)),  # size
)


def _unchecked(annotation: Any, models: Mapping[type[BaseModel], type[BaseModel]]) -> Any:
    """``annotation`` without :data:`_PYTHON_CHECKS` and with ``models`` in place of their contract
    models; every other part (bounds, patterns, types) as the contract states it."""
    if isinstance(annotation, type) and annotation in models:
        return models[annotation]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        kept = [m for m in annotation.__metadata__ if not _is_python_check(m)]
        base = _unchecked(args[0], models)
        return Annotated[(base, *kept)] if kept else base
    if origin is Union or origin is UnionType:
        return Union[tuple(_unchecked(arg, models) for arg in args)]  # noqa: UP007 (built from parts)
    if origin is list:
        return list[_unchecked(args[0], models)]  # type: ignore[misc]
    return annotation


def _is_python_check(metadata: Any) -> bool:
    return isinstance(metadata, AfterValidator) and metadata in _PYTHON_CHECKS


def _without_python_checks(
    name: str, model: type[Model], models: Mapping[type[BaseModel], type[BaseModel]]
) -> type[Model]:
    """A subclass of ``model`` whose fields are the contract's minus :data:`_PYTHON_CHECKS`, derived
    from the contract model itself (one source of truth for every bound and pattern)."""
    fields: dict[str, Any] = {}
    for field_name, field in model.model_fields.items():
        annotation: Any = field.annotation
        if field.metadata:
            annotation = Annotated[(annotation, *field.metadata)]
        unchecked = _unchecked(annotation, models)
        if unchecked == annotation:
            continue  # inherited as it is
        if field.default_factory is not None:
            fields[field_name] = (unchecked, Field(default_factory=field.default_factory))
        else:
            fields[field_name] = (unchecked, ... if field.is_required() else field.default)
    return create_model(name, __base__=model, __module__=__name__, **fields)


_Actor = _without_python_checks("_Actor", Actor, {})
_Resource = _without_python_checks("_Resource", Resource, {})
_Event = _without_python_checks("_Event", AuditEvent, {Actor: _Actor, Resource: _Resource})
_Batch = _without_python_checks("_Batch", IngestBatch, {AuditEvent: _Event})
"""The contract's :class:`IngestBatch` without the checks in Python that :func:`fast_read` makes for
the whole body at once (``test_intake`` holds the JSON Schemas of the two to the same)."""


#: what :func:`_names` answers for a value that holds a number ``parse_body`` or the model refuses
_BEYOND = -1


def _names(value: dict[str, Any] | list[Any]) -> int:
    """Member names in a JSON object or array as parsed (the distinct names of each object), or
    :data:`_BEYOND` when it holds an integer beyond ±(2^53-1) (``parse_body`` refuses those) or a
    non-finite float (the model does)."""
    if isinstance(value, dict):
        names = len(value)
        items: Any = value.values()
    else:
        names = 0
        items = value
    for item in items:
        if isinstance(item, dict | list):
            inner = _names(item)
            if inner == _BEYOND:
                return _BEYOND
            names += inner
        elif type(item) is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return _BEYOND
        elif type(item) is float and not math.isfinite(item):
            return _BEYOND
    return names


@dataclass(frozen=True, slots=True)
class Intake:
    """A request's batch, and the ``jsonb`` text form of each event's details when the one pass
    wrote it (None: ``parse_body`` read the batch; the store writes the forms itself)."""

    batch: IngestBatch
    forms: list[str] | None = None


def _details_form(details: dict[str, Any]) -> str | None:
    """``details`` in ``jsonb``'s text form, or None where the contract's check on its JSON text
    (``MAX_DETAILS_BYTES``, no NUL, the depth) would refuse it or look further: give way."""
    form = jsonb_text(details)
    if (
        len(form.encode()) > MAX_DETAILS_BYTES
        or "\\u0000" in form
        or form.count("{") + form.count("[") > MAX_DETAILS_DEPTH
    ):
        return None
    return form


def fast_read(raw: bytes) -> Intake | None:
    """The batch in ``raw`` as ``parse_body`` reads it, with its events' details forms, or None: let
    ``parse_body`` read (and answer)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\u" in text or _SPACED_COLON.search(text) is not None:
        return None
    try:
        batch = _Batch.model_validate_json(text)
    except ValidationError:
        return None
    names = len(batch.model_fields_set)
    forms = []
    for event in batch.events:
        year = event.occurred_at.year
        details = _names(event.details)
        if year == 1 or year == 9999 or details == _BEYOND:
            return None
        form = _details_form(event.details)
        if form is None:
            return None
        forms.append(form)
        names += (
            len(event.model_fields_set)
            + len(event.actor.model_fields_set)
            + len(event.resource.model_fields_set)
            + details
        )
    return Intake(batch, forms) if text.count('":') == names else None


def _json_media_type(scope: Scope) -> bool:
    """``Content-Type: application/json`` exactly (any case), as ``request.headers.get`` reads it (the
    first such header), and no ``Content-Encoding`` (``parse_body`` refuses any coding but identity),
    straight from the scope: Starlette's ``Headers`` is built anew per request."""
    media_type: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            return False
        if name == b"content-type" and media_type is None:
            media_type = value.decode("latin-1").lower()
    return media_type == "application/json"


async def _whole_body(receive: Receive) -> bytes:
    """The request body as ``Request.body`` reads it (:class:`ClientDisconnect` if the client left
    first), without the ``Request`` and its stream generator around it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def read_batch(request: Request) -> Intake:
    """The request's batch (with its details forms from the one pass), or the problem ``parse_body``
    raises for it."""
    if _json_media_type(request.scope):
        body = await _whole_body(request.receive)
        found = fast_read(body)
        if found is not None:
            return found
        request = Request(request.scope, replaying_receive(body, request.receive))
    return Intake(await parse_body(request, IngestBatch))
