"""Cross-service security: what a caller can and cannot make the real services do through the gateway,
and what a caller who goes around the gateway gets."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest
from svckit.identity import Identity

from testkit.fixtures import Caller, new_pair_keys, user

from .conftest import Edge, eventually

ENTRY = {"date": "2026-11-02", "project": "Security", "hours": 2.5, "notes": "edge tests"}


async def request(
    client: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with client.request(method, url, headers=headers, **kwargs) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def test_owner_is_the_token_subject_whatever_headers_say(
    edge: Edge, client: aiohttp.ClientSession
) -> None:
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    token = edge.issuer.token(alice, "create:timesheets", "read:timesheets")
    status, entry = await request(
        client,
        "POST",
        f"{edge.gateway}/api/timesheets",
        token,
        json=ENTRY,
        headers={
            "X-Identity-Subject": "mallory",
            "X-Identity-Kind": "service",
            "X-Identity-Scopes": "read:audit",
        },
    )
    assert status == 201, entry
    assert entry["owner"]["subject"] == alice
    assert entry["owner"]["issuer"] == edge.issuer.issuer


async def test_other_users_cannot_see_or_delete(edge: Edge, client: aiohttp.ClientSession) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    status, entry = await request(
        client,
        "POST",
        f"{edge.gateway}/api/timesheets",
        edge.issuer.token(alice, "create:timesheets"),
        json=ENTRY,
    )
    assert status == 201
    bob_token = edge.issuer.token(bob, "read:timesheets", "delete:timesheets")
    assert (await request(client, "GET", f"{edge.gateway}/api/timesheets/{entry['id']}", bob_token))[0] == 404
    assert (await request(client, "DELETE", f"{edge.gateway}/api/timesheets/{entry['id']}", bob_token))[
        0
    ] == 404
    _, listing = await request(client, "GET", f"{edge.gateway}/api/timesheets", bob_token)
    assert entry["id"] not in [item["id"] for item in listing["items"]]


async def test_same_subject_at_another_issuer_is_someone_else(
    edge: Edge, client: aiohttp.ClientSession
) -> None:
    subject = f"shared-{uuid.uuid4().hex[:6]}"
    status, entry = await request(
        client,
        "POST",
        f"{edge.gateway}/api/timesheets",
        edge.issuer.token(subject, "create:timesheets"),
        json=ENTRY,
    )
    assert status == 201
    impostor = edge.other_issuer.token(subject, "read:timesheets", "delete:timesheets")
    assert (await request(client, "GET", f"{edge.gateway}/api/timesheets/{entry['id']}", impostor))[0] == 404
    assert (await request(client, "DELETE", f"{edge.gateway}/api/timesheets/{entry['id']}", impostor))[
        0
    ] == 404


async def test_going_around_the_gateway(
    edge: Edge, client: aiohttp.ClientSession, identity_keys: dict[str, str]
) -> None:
    url = f"{edge.timesheets}/timesheets"
    # no identity at all
    assert (await request(client, "GET", url))[0] == 401
    # hand-made identity headers without a valid signature
    forged = {
        "X-Identity-Issuer": edge.issuer.issuer,
        "X-Identity-Subject": "alice",
        "X-Identity-Kind": "user",
    }
    assert (await request(client, "GET", url, headers={**forged, "X-Identity-Signature": "AAAA"}))[0] == 401
    # properly shaped but signed with a key the services do not know
    stranger = Caller(new_pair_keys("1"))  # the same key ids, other secrets
    alice = user("alice", "read:timesheets", issuer=edge.issuer.issuer)
    assert (await request(client, "GET", url, headers=stranger.headers(alice, "GET", url)))[0] == 401
    # a valid signature for one request line does not carry over to another
    genuine = Caller(identity_keys)
    signed_for_list = genuine.headers(alice, "GET", url)
    assert (await request(client, "GET", url, headers=signed_for_list))[0] == 200
    assert (await request(client, "GET", url + "?limit=1", headers=signed_for_list))[0] == 401
    assert (await request(client, "DELETE", url + "/x", headers=signed_for_list))[0] == 401
    # a user's genuine identity cannot use internal routes
    pending = f"{edge.timesheets}/internal/timesheets/pending"
    assert (await request(client, "GET", pending, headers=genuine.headers(alice, "GET", pending)))[0] == 403


async def test_internal_routes_are_not_reachable_through_the_gateway(
    edge: Edge, client: aiohttp.ClientSession
) -> None:
    token = edge.issuer.token("root", "read:timesheets", "approve:timesheets", "read:audit", "batch:upload")
    for path in ("/api/internal/timesheets/pending", "/api/internal/events", "/api/timesheets/x/decision"):
        assert (await request(client, "GET", edge.gateway + path, token))[0] == 404
        assert (await request(client, "POST", edge.gateway + path, token, json={}))[0] in (404, 405)


async def test_upload_needs_a_client_token_not_just_the_scope(
    edge: Edge, client: aiohttp.ClientSession
) -> None:
    rows = {"entries": [{"user": "someone", **ENTRY}]}
    # a user token that somehow carries batch:upload passes the gateway, the service still refuses it
    user_token = edge.issuer.token(f"user-{uuid.uuid4().hex[:6]}", "batch:upload")
    status, _ = await request(client, "POST", f"{edge.gateway}/api/timesheets/upload", user_token, json=rows)
    assert status == 403
    client_token = edge.issuer.token(
        "timesheets-batch@clients", "batch:upload", azp="timesheets-batch", gty="client-credentials"
    )
    status, body = await request(
        client, "POST", f"{edge.gateway}/api/timesheets/upload", client_token, json=rows
    )
    assert status in (200, 201), body


async def test_denials_are_in_the_real_audit_trail(edge: Edge, client: aiohttp.ClientSession) -> None:
    mallory = f"mallory-{uuid.uuid4().hex[:6]}"
    weak = edge.issuer.token(mallory, "read:timesheets")
    assert (await request(client, "GET", f"{edge.gateway}/api/audit/events", weak))[0] == 403
    rid = f"sec-{uuid.uuid4().hex}"
    forged = edge.issuer.token("x", "read:audit", aud="https://elsewhere.example")
    status, _ = await request(
        client, "GET", f"{edge.gateway}/api/audit/events", forged, headers={"X-Request-Id": rid}
    )
    assert status == 401
    auditor = edge.issuer.token(f"carol-{uuid.uuid4().hex[:6]}", "read:audit")

    def counted(event: dict[str, Any]) -> bool:
        # anonymous denials are aggregated per window: this one is counted in a record of its reason,
        # route and address whose window covers it (see docs/CONTRACTS.md, "Aggregated denials")
        details = event["details"]
        return bool(
            event["actor"]["kind"] == "anonymous"
            and details.get("reason") == "audience"
            and details.get("route") == "/api/audit/events"
            and details.get("count", 0) >= 1
        )

    async def denied_events() -> list[dict[str, Any]]:
        _, page = await request(
            client, "GET", f"{edge.gateway}/api/audit/events?action=access.denied&limit=100", auditor
        )
        items = page["items"]
        mine = [event for event in items if event["actor"]["subject"] == mallory]
        anonymous = [event for event in items if counted(event)]
        return items if mine and anonymous else []

    items = await eventually(denied_events)
    assert items, "denials did not reach the audit trail"
    assert forged not in json.dumps(items)
    assert weak not in json.dumps(items)
    mine = next(event for event in items if event["actor"]["subject"] == mallory)
    assert mine["details"]["required_scope"] == "read:audit"
    assert mine["source"] == "gateway"


@pytest.mark.unit
def test_identity_header_names_come_from_the_kit() -> None:
    # the gateway strips by the kit's prefix: a new identity header in the kit is stripped too
    from gateway.edge import _IDENTITY_PREFIX
    from svckit.identity import SIGNED_HEADERS

    assert all(name.encode().startswith(_IDENTITY_PREFIX) for name in SIGNED_HEADERS)
    assert Identity.service("gateway").kind == "service"


@pytest.mark.parametrize(
    ("charset", "encoding"), [("utf-16", "utf-16"), ("latin-1", "latin-1"), ("ISO-8859-1", "latin-1")]
)
async def test_a_json_body_in_another_charset_is_refused_through_the_gateway_not_misread(
    edge: Edge, client: aiohttp.ClientSession, charset: str, encoding: str
) -> None:
    """The gateway forwards the body and its Content-Type as sent; the service reads JSON in UTF-8
    only (RFC 8259 §8.1) and refuses another charset with 415 before reading a byte: a latin-1 "é"
    (0xE9) is never read as UTF-8, nor UTF-16 as anything."""
    token = edge.issuer.token(f"charset-{uuid.uuid4().hex[:6]}", "create:timesheets")
    body = json.dumps({**ENTRY, "project": "Caf\u00e9"}, ensure_ascii=False).encode(encoding)
    headers = {"Content-Type": f"application/json; charset={charset}"}
    status, problem = await request(
        client, "POST", f"{edge.gateway}/api/timesheets", token, data=body, headers=headers
    )
    assert status == 415, problem
    assert "UTF-8" in problem["detail"], problem
