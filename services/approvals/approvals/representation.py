"""Typed decision rows as the contract's documents (:class:`svckit.contracts.approvals.Decision`).

Two ways to the same bytes: :func:`decision_of` builds the model (problems carry it as a member),
:func:`decision_json` writes an applied decision's answer directly. Writing the model out cost a
decision ~75 us of CPU in-process (a loaded machine), most of it pydantic calling the Python
serialiser of each of its four timestamps (``Timestamp``: :func:`~svckit.contracts.fields.rfc3339`),
three of them in the entry, which the timesheets service has just written as exactly those bytes:
its entries are ``Entry.model_dump_json()``'s text (``timesheets.representation.entry_json``, held to
it by that service's tests), as the queue's pages are, which the queue passes on the same way.
``tests/test_representation.py`` holds the two to the same bytes.
"""

from __future__ import annotations

from json.encoder import encode_basestring as _text  # json.dumps' own string escaping

from svckit.contracts.approvals import Decision
from svckit.contracts.fields import rfc3339
from svckit.contracts.identity import Person
from svckit.contracts.timesheets import Entry

from .store import DecisionRow


def decision_of(row: DecisionRow, entry: Entry | None = None) -> Decision:
    """``state`` is ``applied`` once the entry carries the decision, ``pending`` while it is being
    applied (the reconciler finishes it), ``void`` if the timesheets service refused it for good."""
    return Decision(
        id=row.id,
        entry_id=row.entry_id,
        decision=row.decision,
        comment=row.comment,
        by=Person(issuer=row.approver_issuer, subject=row.approver_subject, name=row.approver_name or None),
        at=row.decided_at,
        state=row.state,
        entry=entry,
    )


def decision_json(row: DecisionRow, entry: Entry | None, entry_text: str = "") -> bytes:
    """``decision_of(row, entry).model_dump_json()``, written directly: the decision's members from
    the row (the table's constraints are the contract's: verdicts, states), the entry as
    ``entry_text`` when the timesheets service's answer gave it (``entry`` read from it), else
    written from ``entry``."""
    comment = _text(row.comment) if row.comment is not None else "null"
    name = _text(row.approver_name) if row.approver_name else "null"
    by = f'{{"issuer":{_text(row.approver_issuer)},"subject":{_text(row.approver_subject)},"name":{name}}}'
    if entry is None:
        entry_text = "null"
    elif not entry_text:
        entry_text = entry.model_dump_json()
    return (
        f'{{"id":"{row.id}","entry_id":"{row.entry_id}","decision":{_text(row.decision)},'
        f'"comment":{comment},"by":{by},"at":"{rfc3339(row.decided_at)}","state":{_text(row.state)},'
        f'"entry":{entry_text}}}'
    ).encode()
