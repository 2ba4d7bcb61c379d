"""A transfer coding besides chunked, sent straight to the service (as a client inside the cluster
could): refused 501 by the HTTP layer before the handler, nothing stored. llhttp read ``gzip,
chunked`` and ``xyz, chunked`` as plain chunked: the entry was stored (201)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from testkit.client import SignedApi
from testkit.fixtures import user

WHO = user("codings", "read:timesheets", "create:timesheets")


async def post_chunked(api: SignedApi, coding: bytes, project: str) -> bytes:
    """POST /timesheets with a signed identity, the entry's JSON sent in one chunk under
    ``Transfer-Encoding: <coding>``; the raw answer (the server closes after a refusal)."""
    url = api.base_url + "/timesheets"
    body = json.dumps({"date": "2026-11-23", "project": project, "hours": 1}).encode()
    signed = api.caller.headers(WHO, "POST", url, body=body)
    host, port = api.base_url.removeprefix("http://").split(":")
    head = b"POST /timesheets HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\n"
    head += b"".join(f"{name}: {value}\r\n".encode() for name, value in signed.items())
    head += b"Content-Type: application/json\r\nConnection: close\r\n"
    head += b"Transfer-Encoding: " + coding + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def stored(api: SignedApi, project: str) -> int:
    reply = await api.call("GET", "/timesheets", WHO, params={"project": project})
    assert reply.status == 200, reply.text
    return len(reply.body["items"])


@pytest.mark.parametrize(("coding", "named"), [(b"xyz, chunked", b"'xyz'"), (b"gzip, chunked", b"'gzip'")])
async def test_an_unknown_transfer_coding_is_refused_and_nothing_stored(
    api: SignedApi, coding: bytes, named: bytes
) -> None:
    project = f"te-{uuid.uuid4().hex[:8]}"
    response = await post_chunked(api, coding, project)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501 "), response[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert b"connection: close" in head.lower()
    assert json.loads(body)["status"] == 501
    assert named in body
    assert await stored(api, project) == 0


async def test_chunked_alone_in_any_case_is_stored(api: SignedApi) -> None:
    project = f"te-{uuid.uuid4().hex[:8]}"
    response = await post_chunked(api, b"Chunked", project)
    assert response.startswith(b"HTTP/1.1 201 "), response[:300]
    assert await stored(api, project) == 1
