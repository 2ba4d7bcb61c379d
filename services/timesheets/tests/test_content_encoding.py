"""A request body in a content coding the service does not decode is refused as such.

The service reads every body as identity-coded bytes whatever ``Content-Encoding`` says: a gzip
body is answered 400 "The body is not UTF-8 (invalid byte at offset 1)", which tells the client
nothing of the cause, and a body labelled ``gzip`` (or ``br``) that is in fact plain JSON is stored
(201) as if the label were absent. docs/CONTRACTS.md refuses ``charset`` other than UTF-8 with 415
because "guessing an encoding reads something else than was sent"; a content coding the client
declares is the same case, and RFC 9110 §15.5.16 names 415 for it (with ``Accept-Encoding``,
RFC 7694 §3).
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest

from testkit.client import SignedApi
from testkit.fixtures import user

from .test_upload import batch_client

BODY = {"date": "2026-11-23", "project": "Coded", "hours": 1}


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", gzip.compress(json.dumps(BODY).encode())),
        ("gzip", json.dumps(BODY).encode()),  # labelled gzip, sent plain: stored today
        ("br", json.dumps(BODY).encode()),
    ],
    ids=["gzip body", "plain body labelled gzip", "plain body labelled br"],
)
async def test_a_coded_body_is_415(api: SignedApi, coding: str, data: bytes) -> None:
    who = user(f"coded-{uuid.uuid4().hex[:8]}", "create:timesheets")
    headers = {"content-type": "application/json", "content-encoding": coding}
    reply = await api.call("POST", "/timesheets", who, data=data, headers=headers)
    assert reply.status == 415, reply.text
    assert reply.problem


async def test_the_refusal_names_the_coding_accepted(api: SignedApi) -> None:
    who = user(f"coded-{uuid.uuid4().hex[:8]}", "create:timesheets", "read:timesheets")
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    reply = await api.call("POST", "/timesheets", who, data=json.dumps(BODY).encode(), headers=headers)
    assert reply.status == 415
    assert reply.headers["accept-encoding"] == "identity"  # RFC 7694 §3
    listed = await api.call("GET", "/timesheets", who)
    assert listed.body["items"] == []  # nothing stored


@pytest.mark.parametrize("coding", ["identity", "Identity", " identity "])
async def test_identity_is_no_coding(api: SignedApi, coding: str) -> None:
    who = user(f"coded-{uuid.uuid4().hex[:8]}", "create:timesheets")
    headers = {"content-type": "application/json", "content-encoding": coding}
    reply = await api.call("POST", "/timesheets", who, data=json.dumps(BODY).encode(), headers=headers)
    assert reply.status == 201, reply.text


async def test_a_coded_upload_is_415(api: SignedApi) -> None:
    batch = {"entries": [{**BODY, "user": "someone"}]}
    headers = {"content-type": "application/json", "content-encoding": "br"}
    reply = await api.call(
        "POST", "/timesheets/upload", batch_client(), data=json.dumps(batch).encode(), headers=headers
    )
    assert reply.status == 415, reply.text
    assert reply.problem
