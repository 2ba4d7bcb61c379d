"""GET /audit/events reads ``from``/``to`` as RFC 3339 instants with an offset (docs/CONTRACTS.md
"Dates and instants"; the published document says ``format: date-time``) and takes no parameter it
does not publish.

Today pydantic's lax datetime parsing reads a string of digits as a Unix time: ``to=20261203`` (a
compact date) is 1970-08-23T12:06:43Z and ``from=2026`` is 1970-01-01T00:33:46Z, so an auditor's
query silently answers 200 with the wrong range instead of naming the parameter. And the model's
``populate_by_name`` makes ``from_`` (the Python field's name) a second, unpublished spelling of
``from``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

AUDITOR = user("carol", "read:audit", name="Carol")
TIMESHEETS = Identity.service("timesheets")


@pytest.mark.parametrize(
    "params",
    [
        {"to": "20261203"},  # a compact date, read as 1970-08-23T12:06:43Z
        {"from": "2026"},  # a year, read as 1970-01-01T00:33:46Z
        {"to": "0.5"},  # what schemathesis' negative_data_rejection found
        {"from": "-1"},
    ],
)
async def test_a_number_is_not_an_instant(api: SignedApi, params: dict[str, str]) -> None:
    reply = await api.call("GET", "/audit/events", AUDITOR, params=params)
    assert reply.status == 422, reply.text
    assert reply.fields() == set(params), reply.body
    assert reply.problem


async def test_a_compact_date_does_not_hide_the_trail(api: SignedApi, new_event: Any) -> None:
    """The wrong answer itself: a record of 2026-11-23 exists, ``to=20261203`` lists nothing."""
    actor = f"instant-{uuid.uuid4().hex[:8]}"
    event = new_event(subject=actor, occurred_at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    stored = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
    assert stored.status == 200, stored.text
    everything = await api.call("GET", "/audit/events", AUDITOR, params={"actor": actor})
    assert [item["id"] for item in everything.body["items"]] == [event["id"]], everything.text
    reply = await api.call("GET", "/audit/events", AUDITOR, params={"actor": actor, "to": "20261203"})
    # either refused (the contract) or, if numbers were instants, an answer that holds the record
    assert reply.status == 422 or [item["id"] for item in reply.body["items"]] == [event["id"]], reply.text


async def test_from_underscore_is_an_unknown_parameter(api: SignedApi) -> None:
    reply = await api.call("GET", "/audit/events", AUDITOR, params={"from_": "2026-11-23T10:00:00Z"})
    assert reply.status == 422, reply.text
    assert reply.fields() == {"from_"}


async def test_an_offsets_plus_left_unescaped_is_named_as_such(api: SignedApi) -> None:
    """``from=2026-11-23T09:30:00+01:00`` written into a URL as is: a query string reads ``+`` as a
    space (HTML forms, WHATWG URL), so the service receives ``2026-11-23T09:30:00 01:00``. It was
    refused as having no offset ("must be an RFC 3339 date-time with an offset"), which the client
    can see it has; the 422 now says what happened to it and how to send it."""
    mangled = "/audit/events?from=2026-11-23T09%3A30%3A00+01:00&to=2026-11-24T00%3A00%3A00-05:30"
    reply = await api.call("GET", mangled, AUDITOR)
    assert reply.status == 422, reply.text
    assert reply.fields() == {"from"}, reply.body  # to's '-' arrives as sent
    message = reply.body["errors"][0]["message"]
    assert "%2B" in message, message
    assert "space" in message, message
    escaped = mangled.replace("+", "%2B")
    assert (await api.call("GET", escaped, AUDITOR)).status == 200
