"""GET /timesheets takes the parameters it publishes and no others (docs/CONTRACTS.md "Query
strings": an unknown parameter is a 422 naming it).

``ListQuery`` sets ``populate_by_name``, so besides ``from`` it also takes ``from_``, the Python
field's name: ``?from_=2027-01-01`` filters as ``from`` would, a spelling no document names. The
repeated-parameter rule is then only half kept: ``?from=…&from_=…`` is refused, but for
``from_`` being extra, not for giving ``from`` twice.
"""

from __future__ import annotations

import uuid

from testkit.client import SignedApi
from testkit.fixtures import user


async def test_from_underscore_is_an_unknown_parameter(api: SignedApi) -> None:
    who = user(f"names-{uuid.uuid4().hex[:8]}", "read:timesheets", "create:timesheets")
    made = await api.call("POST", "/timesheets", who, json={"date": "2026-11-23", "project": "P", "hours": 1})
    assert made.status == 201, made.text
    reply = await api.call("GET", "/timesheets", who, params={"from_": "2027-01-01"})
    assert reply.status == 422, reply.text  # today: 200 and an empty page (filtered as from=2027-01-01)
    assert reply.fields() == {"from_"}
    assert reply.problem
