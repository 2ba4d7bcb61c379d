"""A person's day holds at most :data:`DAY_HOURS_LIMIT` (24) hours: the rule's answers.

What counts towards a day: every live entry of the owner on that date, whatever its status.
Deleted entries do not (they are gone for the user: 404 everywhere, in no listing); submitted and
approved ones do, and so do rejected ones: a rejection refuses the claim, it does not take the entry
off the person's record — it is still listed, and the person clears it by deleting it (a rejected
entry may be deleted) before recording the day again. Counting it keeps what a person's list shows
for a day within 24 hours, and keeps a rejected-then-re-entered day from holding twice its hours.

The rule holds whatever the per-entry limit on ``hours`` is (also 24 today): it is about the day.
It is checked in the database under a row lock on the (owner, date)'s bucket (migration 0005,
``store.CREATE_ENTRY``, ``store.day_totals``), so concurrent creates and uploads cannot pass it
together. Only new writes are
checked: a day already over the limit (data from before the rule) stays readable and deletable, and
takes nothing more until it is under it.

The number is written once, in the contract (``DAY_HOURS_LIMIT``, which the API documents), and read
through :data:`LIMIT`: the upload's rows are compared with it here, and a create hands it to the
database's ``admit_day_hours`` as an argument (migration 0006), which holds no copy of its own.
Refusals are counted in ``timesheets_refusals_total{reason="day_hours_exceeded",source}``.

The answer is the service's validation problem (422, ``errors[]``), type ``day_hours_exceeded`` on
the ``hours`` field (``entries.N.hours`` in an upload), saying the day, the hours already recorded
and the limit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg
from svckit.contracts.timesheets import DAY_HOURS_LIMIT, UploadRow
from svckit.problems import Problem, validation_problem

#: the check violation ``admit_day_hours`` raises (migration 0005)
CONSTRAINT = "entries_day_hours"
ERROR_TYPE = "day_hours_exceeded"
LIMIT = Decimal(DAY_HOURS_LIMIT)


def hours_text(value: Decimal | float) -> str:
    """Hours as a person writes them: ``24``, ``7.5``, ``0.25``."""
    return format(Decimal(str(value)).normalize(), "f")


def is_refusal(exc: asyncpg.CheckViolationError) -> bool:
    return getattr(exc, "constraint_name", None) == CONSTRAINT


def _room(recorded: Decimal) -> str:
    room = LIMIT - recorded
    return f"at most {hours_text(room)} more" if room > 0 else "no more"


def refusal(exc: asyncpg.CheckViolationError, date: dt.date, hours: float) -> Problem:
    """The 422 for a create that ``admit_day_hours`` refused (its DETAIL: the hours recorded)."""
    recorded = Decimal(str(getattr(exc, "detail", None) or "0"))
    limit = hours_text(LIMIT)
    return validation_problem(
        [
            {
                "field": "hours",
                "loc": ["hours"],
                "message": (
                    f"would bring {date.isoformat()} to {hours_text(recorded + Decimal(str(hours)))} "
                    f"hours; {hours_text(recorded)} already recorded, at most {limit} a day"
                ),
                "type": ERROR_TYPE,
            }
        ],
        f"A day holds at most {limit} hours: {hours_text(recorded)} hours are already recorded on "
        f"{date.isoformat()}, so {_room(recorded)} can be added.",
    )


def row_errors(
    rows: Sequence[UploadRow], recorded: dict[tuple[str, dt.date], Decimal]
) -> list[dict[str, Any]]:
    """An upload's rows that would take their user's day past the limit, given the hours
    ``recorded`` on each (user, date) already and the batch's earlier rows that fit (a refused row is
    not counted for the rows after it: the errors name the rows to take out, no more)."""
    batch: dict[tuple[str, dt.date], Decimal] = {}
    errors: list[dict[str, Any]] = []
    limit = hours_text(LIMIT)
    for index, row in enumerate(rows):
        day = (row.user, row.date)
        before, earlier = recorded.get(day, Decimal(0)), batch.get(day, Decimal(0))
        hours = Decimal(str(row.hours))
        if before + earlier + hours > LIMIT:
            errors.append(
                {
                    "field": f"entries.{index}.hours",
                    "loc": ["entries", index, "hours"],
                    "message": (
                        f"would bring {row.date.isoformat()} to {hours_text(before + earlier + hours)} hours "
                        f"for {row.user}: {hours_text(before)} already recorded, {hours_text(earlier)} in "
                        f"rows before it; at most {limit} a day"
                    ),
                    "type": ERROR_TYPE,
                }
            )
        else:
            batch[day] = earlier + hours
    return errors
