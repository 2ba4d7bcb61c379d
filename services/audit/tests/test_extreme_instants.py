"""Events at the two ends of the instant range that the contract accepts are stored as ``-infinity`` /
``infinity`` (migration 0010) and must still be listed: asyncpg reads those back as *naive*
``datetime.min`` / ``datetime.max``, which the API's timestamp serialiser must not take for local time."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from svckit.identity import Identity

from testkit.client import SignedApi
from testkit.fixtures import user

TIMESHEETS = Identity.service("timesheets")
AUDITOR = user("carol", "read:audit", name="Carol")


@pytest.mark.parametrize(
    ("sent", "listed"),
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
    ],
)
async def test_an_accepted_instant_at_either_end_is_listed(
    api: SignedApi, new_event: Any, sent: str, listed: str
) -> None:
    subject = f"edge-{uuid.uuid4().hex[:12]}"
    event = {**new_event(subject=subject), "occurred_at": sent}
    stored = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [event]})
    assert stored.status == 200, stored.text  # the contract accepts it: it has a UTC form
    page = await api.call("GET", "/audit/events", AUDITOR, params={"actor": subject})
    assert page.status == 200, page.text  # was 500: ValueError "year 0 is out of range"
    [record] = page.body["items"]
    assert record["occurred_at"] == listed
