"""The domain rules end to end through the real gateway: real tokens, route mapping, signed
identities verified by the services, problem documents passed back to the client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
from approvals.app import create_app as create_approvals
from approvals.settings import ApprovalsSettings
from svckit.settings import load_settings

from bench.api import AUDIENCE, Issuer
from testkit.client import wait_ready
from testkit.fixtures import ServiceProcess, ServiceRedis, runtime_url, serve_app

EMPLOYEE = "openid read:timesheets create:timesheets delete:timesheets"
MANAGER = EMPLOYEE + " approve:timesheets"


class Gateway:
    def __init__(self, url: str, issuer: Issuer, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.issuer = issuer
        self.session = session

    async def call(self, method: str, path: str, token: str, json: Any = None) -> tuple[int, Any, Any]:
        async with self.session.request(
            method,
            self.url + path,
            json=json,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        ) as response:
            body = await response.json(content_type=None) if response.status != 204 else None
            return response.status, body, response.headers


@pytest.fixture(scope="module")
async def gateway(
    domain_database: str,
    timesheets_url: str,
    service_env: dict[str, str],
    service_redis: ServiceRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Gateway]:
    issuer = Issuer()
    env = {**service_env, "AUDIT_URL": "http://127.0.0.1:9"}
    approvals_env = {
        **env,
        "DATABASE_URL": runtime_url(domain_database, "approvals"),
        "REDIS_URL": service_redis.url("approvals"),
        "TIMESHEETS_URL": timesheets_url,
    }
    approvals_app = create_approvals(load_settings(ApprovalsSettings, env=approvals_env))
    async with serve_app(approvals_app) as approvals_url:
        await wait_ready(approvals_url)
        process = ServiceProcess(
            "gateway",
            {
                **env,
                "REDIS_URL": service_redis.url("gateway"),
                "OIDC_ISSUER": issuer.issuer,
                "OIDC_AUDIENCE": AUDIENCE,
                "TIMESHEETS_URL": timesheets_url,
                "APPROVALS_URL": approvals_url,
                "GATEWAY_WORKERS": "1",
            },
            log_dir=tmp_path_factory.mktemp("gateway"),
        )
        process.start()
        try:
            async with aiohttp.ClientSession() as session:
                yield Gateway(process.url, issuer, session)
        finally:
            process.stop()
            issuer.close()


async def queue_ids(gateway: Gateway, token: str) -> set[str]:
    """Every id in the approver's queue (the session's database holds other tests' entries too)."""
    ids: set[str] = set()
    path: str | None = "/api/approvals?limit=100"
    while path is not None:
        status, page, _ = await gateway.call("GET", path, token)
        assert status == 200, page
        ids.update(item["id"] for item in page["items"])
        path = f"/api/approvals?limit=100&cursor={page['next_cursor']}" if page["next_cursor"] else None
    return ids


async def test_create_approve_and_the_rules(gateway: Gateway) -> None:
    alice_sub, bob_sub = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    alice = gateway.issuer.token(alice_sub, EMPLOYEE, name="Alice Example")
    bob = gateway.issuer.token(bob_sub, MANAGER)

    entry = {"date": "2026-11-23", "project": "Store Zero/é", "hours": 7.5, "notes": "through the gateway"}
    status, created, headers = await gateway.call("POST", "/api/timesheets", alice, entry)
    assert status == 201, created
    assert created["owner"] == {
        "issuer": gateway.issuer.issuer,
        "subject": alice_sub,
        "name": "Alice Example",
    }
    # The relative Location resolves under the public prefix.
    location = urljoin(gateway.url + "/api/timesheets", headers["Location"])
    assert location == f"{gateway.url}/api/timesheets/{created['id']}"
    status, fetched, _ = await gateway.call("GET", location.removeprefix(gateway.url), alice)
    assert (status, fetched) == (200, created)
    # An encoded query survives the gateway's signature over the upstream request line.
    status, listed, _ = await gateway.call(
        "GET", "/api/timesheets?project=Store%20Zero%2F%C3%A9&limit=5", alice
    )
    assert status == 200, listed
    assert [item["id"] for item in listed["items"]] == [created["id"]]

    # Field-naming problems come back through the gateway untouched.
    status, problem, headers = await gateway.call("POST", "/api/timesheets", alice, {**entry, "hours": 7.3})
    assert status == 422
    assert headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in problem["errors"]] == ["hours"]

    # An employee cannot approve (the gateway refuses; the service would too).
    status, _, headers = await gateway.call(
        "PUT", f"/api/approvals/{created['id']}", alice, {"decision": "approved"}
    )
    assert status == 403
    # The manager sees it waiting and approves it; the owner then cannot delete it.
    assert created["id"] in await queue_ids(gateway, bob)
    status, decision, _ = await gateway.call(
        "PUT", f"/api/approvals/{created['id']}", bob, {"decision": "approved", "comment": "ok"}
    )
    assert status == 200, decision
    assert decision["entry"]["status"] == "approved"
    status, _, _ = await gateway.call("DELETE", f"/api/timesheets/{created['id']}", alice)
    assert status == 409
    status, _, _ = await gateway.call("PUT", f"/api/approvals/{created['id']}", bob, {"decision": "rejected"})
    assert status == 409


async def test_internal_routes_are_not_reachable(gateway: Gateway) -> None:
    token = gateway.issuer.token("mallory", MANAGER)
    for path in ("/api/internal/timesheets/pending", "/internal/timesheets/pending"):
        status, _, _ = await gateway.call("GET", path, token)
        assert status == 404, path
