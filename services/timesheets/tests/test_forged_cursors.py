"""A forged cursor is a 422 naming ``cursor``, whatever JSON it decodes to (docs/CONTRACTS.md:
"a forged one is a 422 cursor"); never a 500."""

from __future__ import annotations

import base64
import json

import pytest

from testkit.client import SignedApi
from testkit.fixtures import user

WHO = user("forged-cursor", "read:timesheets", "create:timesheets")


def forged(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "last",
    [1, ["0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f"], {"id": "0b5c6f9e-3d2a-4c1b-8e7f-6a5b4c3d2e1f"}],
    ids=["number", "list", "object"],
)
async def test_a_cursor_whose_id_is_not_a_string_is_422(api: SignedApi, last: object) -> None:
    cursor = forged(["2026-11-23", "2026-11-23T17:02:11.204518+00:00", last])
    reply = await api.call("GET", "/timesheets", WHO, params={"cursor": cursor})
    assert reply.status == 422, reply.text  # was 500: AttributeError in uuid.UUID
    assert reply.fields() == {"cursor"}
