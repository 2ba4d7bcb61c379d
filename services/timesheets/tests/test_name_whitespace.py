"""A name (``project``; an upload row's ``user``) must not be blank, as the published schema states it.

The schema's ``NAME_PATTERN`` requires one character outside ``\\s`` (and U+0085, named because
Python's ``\\s`` has it and ECMA-262's has not: ``svckit/contracts/fields.py`` writes patterns "in
the subset that ECMA-262 and Python's re read the same"). The other way round was missed: ECMA-262's
``\\s`` — what JSON Schema validators and browsers apply — also holds U+FEFF (ZERO WIDTH NO-BREAK
SPACE), Python's does not, and the model's strip (pydantic's, on Unicode White_Space) leaves it.
So a project that is only U+FEFF is blank by the published document (the SPA's, any JS client's
validator refuses it) yet stored by the service, and shown as an empty project name.
``test_contracts``'s agreement check reads the pattern with Python's ``re`` and cannot see it.
"""

from __future__ import annotations

import uuid

import pytest

from testkit.client import SignedApi
from testkit.fixtures import user

from .test_upload import batch_client


@pytest.mark.parametrize("project", ["\ufeff", " \ufeff ", "\ufeff\u3000\ufeff"])
async def test_a_project_of_zero_width_no_break_spaces_is_blank(api: SignedApi, project: str) -> None:
    who = user(f"blank-{uuid.uuid4().hex[:8]}", "create:timesheets")
    body = {"date": "2026-11-23", "project": project, "hours": 1}
    reply = await api.call("POST", "/timesheets", who, json=body)
    assert reply.status == 422, reply.text
    assert reply.fields() == {"project"}


async def test_an_upload_row_for_a_blank_user_is_refused(api: SignedApi) -> None:
    row = {"user": "\ufeff", "date": "2026-11-23", "project": "P", "hours": 1}
    reply = await api.call("POST", "/timesheets/upload", batch_client(), json={"entries": [row]})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"entries.0.user"}


#: Default_Ignorable_Code_Point characters (Unicode's DerivedCoreProperties): drawn as nothing
INVISIBLE = ["\u200b", "\u2060\u200d", "\u00ad", "\u3164", "\u115f\u1160", "\u200e\u202e", " \u180e \ufe0f "]


@pytest.mark.parametrize("project", INVISIBLE, ids=[f"invisible-{n}" for n in range(len(INVISIBLE))])
async def test_a_project_of_invisible_characters_is_blank(api: SignedApi, project: str) -> None:
    """A zero-width space, a word joiner, a soft hyphen or a Hangul filler alone was stored as a
    project, listed and shown to the approver as no name at all: as blank as a space."""
    who = user(f"blank-{uuid.uuid4().hex[:8]}", "create:timesheets")
    body = {"date": "2026-11-23", "project": project, "hours": 1}
    reply = await api.call("POST", "/timesheets", who, json=body)
    assert reply.status == 422, reply.text
    assert reply.fields() == {"project"}


async def test_a_visible_character_beside_invisible_ones_is_kept_as_sent(api: SignedApi) -> None:
    who = user(f"blank-{uuid.uuid4().hex[:8]}", "create:timesheets")
    body = {"date": "2026-11-23", "project": "\u200bA\u00ad", "hours": 1}
    reply = await api.call("POST", "/timesheets", who, json=body)
    assert reply.status == 201, reply.text
    assert reply.body["project"] == "\u200bA\u00ad"
