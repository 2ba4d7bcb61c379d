"""Field types shared by the contracts: each one validates *and* states its JSON Schema.

Every type here pairs the rule a service enforces (a validator, with the error message clients see)
with the schema the OpenAPI documents publish (``WithJsonSchema``), side by side, so a constraint is
written once. ``services/kit/tests/test_contracts.py`` checks the pairing both ways: values generated
from each published schema are accepted by the model, and the examples in the schemas validate.

Patterns are written in the subset of regular-expression syntax that ECMA-262 (what JSON Schema and
browsers use) and Python's ``re`` (what the validators and the property tests use) read the same.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    PlainSerializer,
    Strict,
    StringConstraints,
)
from pydantic.json_schema import WithJsonSchema

# Control characters other than tab, line feed and carriage return (which free text may contain): C0,
# DEL and C1 (U+0080-U+009F), all of Unicode's general category Cc. C1 was once let through: "a\x9b2J"
# (CSI, an 8-bit terminal escape) or a NEL inside a name went into the database, the trail and the
# logs while the published document said "no control characters".
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_CLASS = r"\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F"
# Bidirectional formatting controls ("Trojan Source", CVE-2021-42574): the embeddings and overrides
# U+202A-U+202E (LRE, RLE, PDF, LRO, RLO) and the isolates U+2066-U+2069 (LRI, RLI, FSI, PDI). One
# user's "\u202egnp.exe" reads "exe.png" in another's view (an approver's queue, the audit trail), and
# an override or an unclosed isolate reorders what a view draws after it. Right-to-left letters need
# none of them (a reader's browser orders Hebrew and Arabic by itself), nor do the marks U+200E, U+200F
# and U+061C, which reorder nothing and stay allowed. A name (a key people type, filtered by) holds
# none; free text no embedding or override, and an isolate only closed on its own line, not nested.
_BIDI_CLASS = r"\u202A-\u202E\u2066-\u2069"
_BIDI = re.compile(rf"[{_BIDI_CLASS}]")
# What ends a paragraph to the bidi algorithm (class B) in free text: an isolate ends there too.
_PARAGRAPH_CLASS = r"\n\r\u2029"
_BIDI_OR_PARAGRAPH = re.compile(rf"[{_BIDI_CLASS}{_PARAGRAPH_CLASS}]")
_PLAIN_CLASS = _CONTROL_CLASS + _BIDI_CLASS
# Free text: any characters but control characters (line breaks and tabs are fine), and bidirectional
# controls only as an isolate (U+2066-U+2068) closed by U+2069 on its line.
FREE_TEXT_PATTERN = rf"^(?:[^{_PLAIN_CLASS}]|[\u2066-\u2068][^{_PLAIN_CLASS}{_PARAGRAPH_CLASS}]*\u2069)*$"
# Whitespace to ECMA-262 (``\s``: WhiteSpace and LineTerminator, U+FEFF included) or to Python (``\s``,
# ``str.isspace``: U+001C-U+001F and U+0085 included), listed rather than written ``\s``, which the two
# read differently.
WHITESPACE = (
    "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# Characters drawn as nothing: Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt) in
# the Basic Multilingual Plane — soft hyphen, zero-width space and joiners, bidi marks and overrides,
# word joiner, Hangul fillers, variation selectors. A name of only these was stored and shown as no
# name at all. (The property's astral ranges — tags, U+E0000 up — are left out: a published pattern
# holds only what ECMA-262 reads without its "u" flag.)
_INVISIBLE_CLASS = (
    r"\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F"
    r"\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8"
)
# What a name may not consist of only: control characters, that whitespace and invisible characters.
_BLANK_CLASS = (
    r"\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF" + _INVISIBLE_CLASS
)
_BLANK = re.compile(rf"[{_BLANK_CLASS}]*")
# A name: free text that is not blank (services strip surrounding whitespace before checking length).
NAME_PATTERN = rf"^[^{_PLAIN_CLASS}]*[^{_BLANK_CLASS}][^{_PLAIN_CLASS}]*$"
ISO_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# RFC 3339 date-time (section 5.6): a full date, "T", a full time with seconds, and an offset ("Z" or
# +hh:mm / -hh:mm); the letters in either case, as the RFC's ABNF allows.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
# Opaque cursors are base64url without padding.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
UUID_SCHEMA: dict[str, Any] = {"type": "string", "format": "uuid"}
_UUID_TEXT = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def path_uuid(text: str) -> uuid.UUID | None:
    """The UUID a path segment names, or None: only the form the document's ``format: uuid`` gives
    (8-4-4-4-12 hex digits, either case). ``uuid.UUID`` alone also reads ``{…}``, ``urn:uuid:…`` and
    the 32 digits without hyphens, so one entry had several addresses."""
    return uuid.UUID(text) if _UUID_TEXT.fullmatch(text) else None


EARLIEST_DATE = dt.date.min  # 0001-01-01
LATEST_DATE = dt.date.max  # 9999-12-31
# What a timesheet entry may be dated (docs/CONTRACTS.md "Accepted input"): 0001-01-01 or 9999-12-31
# are typos or probes, not work. The window is exactly the years the pattern below allows.
FIRST_WORK_DATE = dt.date(2000, 1, 1)
LAST_WORK_DATE = dt.date(2099, 12, 31)
WORK_DATE_PATTERN = r"^20[0-9]{2}-[0-9]{2}-[0-9]{2}$"


def no_control_chars(value: str) -> str:
    if CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters")
    return value


def _named(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char)})"


def _bidi_refused(char: str) -> ValueError:
    return ValueError(
        f"must not contain {_named(char)}: a bidirectional control makes text display in another order "
        "than it is written (right-to-left letters need none)"
    )


def no_bidi_controls(value: str) -> str:
    """A name holds no bidirectional control (:data:`_BIDI_CLASS`), isolates included: one would
    make two names drawn alike ("A" and "A" isolated) two projects."""
    found = _BIDI.search(value)
    if found is not None:
        raise _bidi_refused(found.group())
    return value


_UNDRAWABLE = re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI_CLASS}]")


def display_text(value: str) -> str:
    """Another system's display text (an external provider's ``name`` claim), which is not ours to
    refuse, as the services may keep and show it: without control characters (C0 — tab and line
    breaks included —, DEL, C1) and bidirectional controls (:data:`_BIDI_CLASS`), the characters
    :class:`NameText` refuses in a name. Dropping them changes no principal (a name is a label, the
    subject names the caller); right-to-left letters and the marks U+200E, U+200F and U+061C stay."""
    return _UNDRAWABLE.sub("", value)


def closed_isolates(value: str | None) -> str | None:
    """Free text's bidirectional controls, as :data:`FREE_TEXT_PATTERN` has them: no embedding or
    override; an isolate (LRI, RLI, FSI) closed by PDI before its line ends, not nested; no PDI that
    closes nothing (one would end an isolate a view puts around the text). The message names the
    character."""
    if value is None:
        return None
    opened: str | None = None
    for found in _BIDI_OR_PARAGRAPH.finditer(value):
        char = found.group()
        if char in "\u2066\u2067\u2068":
            if opened is not None:
                raise ValueError(f"must not open {_named(char)} inside another isolate ({_named(opened)})")
            opened = char
        elif char == "\u2069":
            if opened is None:
                raise ValueError(f"has {_named(char)}, which closes no isolate")
            opened = None
        elif char in "\n\r\u2029":
            if opened is not None:
                break
        else:
            raise _bidi_refused(char)
    if opened is not None:
        raise ValueError(f"has {_named(opened)}, which is not closed by U+2069 on its line")
    return value


def _not_blank(value: str) -> str:
    """``value`` without surrounding :data:`WHITESPACE` (pydantic's strip leaves U+FEFF, which
    ECMA-262 and so the published pattern count as whitespace); a name of nothing else, or of
    nothing but invisible characters (``_INVISIBLE_CLASS``), is blank."""
    value = value.strip(WHITESPACE)
    if _BLANK.fullmatch(value) is not None:
        raise ValueError("must not be blank (nor only invisible characters)")
    return value


def _iso_date_text(value: Any) -> Any:
    """Only ``YYYY-MM-DD`` strings: pydantic alone would also take numbers (as Unix times)."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not re.fullmatch(ISO_DATE_PATTERN, value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


_RFC3339 = re.compile(RFC3339_PATTERN)


#: an RFC 3339 date-time whose offset's "+" a query string decoded as a space
_RFC3339_PLUS_AS_SPACE = re.compile(RFC3339_PATTERN.replace("([Zz]|[+-]", "( "))


def _rfc3339_text(value: Any) -> Any:
    """Only RFC 3339 date-time strings (or datetimes built in code): pydantic alone would also take
    numbers and strings of digits (as Unix times: ``20261203`` is 1970-08-23), times without seconds,
    and offsets without a colon.

    A space where a positive offset's ``+`` belongs is what a query string makes of an unescaped ``+``
    (it reads as a space): still refused (no second spelling), but saying so, since the client did
    send an offset and the general message would tell it that it had not."""
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        if isinstance(value, str) and _RFC3339_PLUS_AS_SPACE.fullmatch(value) is not None:
            raise ValueError(
                "has a space where its offset's '+' belongs: in a query string '+' reads as a space, "
                "so send it as %2B (e.g. 2026-11-23T09:30:00%2B01:00), or give the time in UTC with Z"
            )
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-23T09:30:00Z")
    if value[17:19] == "60":
        return _leap_second(value)
    return value


def _leap_second(value: str) -> dt.datetime:
    """A time whose second is 60 (RFC 3339 5.7: a leap second), which ``datetime`` cannot hold: read
    as PostgreSQL reads it, the start of the next second (``2016-12-31T23:59:60Z`` is
    ``2017-01-01T00:00:00Z``), so a range given either way means the same rows. Not a 422: the text is
    valid RFC 3339, and pydantic's message for it ("unexpected extra characters") was wrong."""
    text = value.upper()
    try:
        return dt.datetime.fromisoformat(text[:17] + "59" + text[19:]) + dt.timedelta(seconds=1)
    except OverflowError:  # 9999-12-31T23:59:60: no next second
        raise ValueError("must be an instant between 0001-01-01 and 9999-12-31 in UTC") from None
    except ValueError:  # a date that does not exist (2026-02-30), an hour of 24
        raise ValueError("must be a date and time that exist, e.g. 2026-11-23T09:30:00Z") from None


def rfc3339(value: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: one spelling for every timestamp the services emit."""
    if value.tzinfo is dt.UTC:  # what asyncpg returns: the common case, without a conversion
        # isoformat(timespec="microseconds") with "Z" for "+00:00", written out: ~40% less time (its
        # keyword argument is parsed on every call), and a list page formats 20 to 40 of these
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - faster than the f-string
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
        )
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


IsoDate = Annotated[
    dt.date,
    BeforeValidator(_iso_date_text),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date",
            "pattern": ISO_DATE_PATTERN,
            "description": (
                f"A calendar date as YYYY-MM-DD (RFC 3339 full-date), {EARLIEST_DATE.isoformat()} to "
                f"{LATEST_DATE.isoformat()}."
            ),
        }
    ),
]
"""A calendar date in a request: ``YYYY-MM-DD`` text only."""


def _work_date(value: dt.date) -> dt.date:
    if not FIRST_WORK_DATE <= value <= LAST_WORK_DATE:
        raise ValueError(f"must be a work date from {FIRST_WORK_DATE} to {LAST_WORK_DATE}")
    return value


WorkDate = Annotated[
    dt.date,
    BeforeValidator(_iso_date_text),
    AfterValidator(_work_date),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date",
            "pattern": WORK_DATE_PATTERN,
            "description": (
                f"The day worked, YYYY-MM-DD, {FIRST_WORK_DATE.isoformat()} to {LAST_WORK_DATE.isoformat()}."
            ),
        }
    ),
]
"""The date of an entry: an :data:`IsoDate` within the work-date window (422 naming the field)."""


def _has_utc_form(value: dt.datetime) -> dt.datetime:
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("must be an instant between 0001-01-01 and 9999-12-31 in UTC") from None
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_has_utc_form)]
"""An aware timestamp in a request, RFC 3339 text with an offset, that has a UTC form. The published
schema is ``AwareDatetime``'s (``format: date-time``). ``AwareDatetime`` alone reads ``20261203`` or
``0.5`` as Unix times, and takes ``0001-01-01T00:00:00+14:00``, before year 1 in UTC:
unrepresentable, and the database driver failed with a 500 converting it."""

Timestamp = Annotated[
    dt.datetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, microseconds, Z."}
    ),
]
"""A point in time in a response, always written as :func:`rfc3339` spells it."""


class NameText(GroupedMetadata):
    """A required, stripped, non-blank name of at most ``max_length`` characters (``Annotated[str, …]``).

    ``nfc``: the name is a key people type (a project: listed, filtered and summed by it), stored in
    Unicode NFC, so "Café" composed (U+00E9) and decomposed (e + U+0301) — drawn alike — are one name,
    not two. Not for names another system issued (a ``sub``), which are compared as they are. A name
    whose NFC is longer than ``max_length`` (a few characters decompose under NFC: U+0958 is two) is
    refused, never cut."""

    def __init__(self, max_length: int, description: str, *, nfc: bool = False) -> None:
        self.max_length = max_length
        self.description = description
        self.nfc = nfc

    def _composed(self, value: str) -> str:
        value = unicodedata.normalize("NFC", value)
        if len(value) > self.max_length:
            raise ValueError(f"must be at most {self.max_length} characters in Unicode NFC")
        return value

    def __iter__(self) -> Iterator[object]:
        yield Strict()
        yield StringConstraints(strip_whitespace=True, min_length=1, max_length=self.max_length)
        yield AfterValidator(no_control_chars)
        yield AfterValidator(no_bidi_controls)
        yield AfterValidator(_not_blank)
        if self.nfc:
            yield AfterValidator(self._composed)
        stored = " Stored in Unicode NFC (a decomposed spelling is the same name)." if self.nfc else ""
        yield WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": self.max_length,
                "pattern": NAME_PATTERN,
                "description": f"{self.description} Not blank, no control characters, no bidirectional "
                f"controls (U+202A-U+202E, U+2066-U+2069); surrounding whitespace is removed.{stored}",
            }
        )


def _blank_is_none(value: str | None) -> str | None:
    if value is not None and CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters (line breaks are fine)")
    return value or None


class OptionalText(GroupedMetadata):
    """Optional free text (``Annotated[str | None, …]``): line breaks allowed, no other control
    characters, at most ``max_length`` characters; blank means absent."""

    def __init__(self, max_length: int, description: str) -> None:
        self.max_length = max_length
        self.description = description

    def __iter__(self) -> Iterator[object]:
        yield StringConstraints(max_length=self.max_length)
        yield AfterValidator(_blank_is_none)
        yield AfterValidator(closed_isolates)
        yield WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "maxLength": self.max_length, "pattern": FREE_TEXT_PATTERN},
                    {"type": "null"},
                ],
                "description": f"{self.description} At most {self.max_length} characters; line breaks "
                "are fine, other control characters are not. No bidirectional embedding or override "
                "(U+202A-U+202E); an isolate (U+2066-U+2068) is closed by U+2069 on its line, not "
                "nested. An empty string means none.",
            }
        )


class CursorText(GroupedMetadata):
    """An opaque pagination cursor as returned in ``next_cursor`` (``Annotated[str, …]``)."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __iter__(self) -> Iterator[object]:
        # the published pattern enforced too: a decoder that ignores padding or reads the other
        # alphabet ("…==", "+/") would otherwise take spellings the document says are not cursors
        yield StringConstraints(min_length=1, max_length=self.max_length, pattern=CURSOR_PATTERN)
        yield WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": self.max_length,
                "pattern": CURSOR_PATTERN,
                "description": "The next_cursor of the previous page, unchanged (opaque).",
            }
        )


__all__ = [
    "CONTROL_CHARS",
    "CURSOR_PATTERN",
    "FREE_TEXT_PATTERN",
    "ISO_DATE_PATTERN",
    "NAME_PATTERN",
    "RFC3339_PATTERN",
    "UUID_SCHEMA",
    "WHITESPACE",
    "CursorText",
    "Instant",
    "IsoDate",
    "NameText",
    "OptionalText",
    "Timestamp",
    "WorkDate",
    "closed_isolates",
    "display_text",
    "no_bidi_controls",
    "no_control_chars",
    "path_uuid",
    "rfc3339",
]
