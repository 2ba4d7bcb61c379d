"""Value types every service validates the same way (bodies and query strings alike).

:data:`Instant` is an aware timestamp that has a UTC form. pydantic's ``AwareDatetime`` alone takes
``0001-01-01T00:00:00+14:00``, whose UTC instant falls before year 1: Python cannot represent it and
the database driver failed with a 500 converting it. Refused here with a 422 naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime


def _has_utc_form(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be an instant between 0001-01-01 and 9999-12-31 in UTC") from None
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_has_utc_form)]

__all__ = ["Instant"]
