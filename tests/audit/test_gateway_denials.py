"""The gateway's denial events, as its DenialAuditor really sends them, are recorded by the audit
service — including the aggregated records of callers whose token did not verify (the anonymous
actor, a count per window)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from audit.app import create_app
from audit.settings import AuditSettings
from gateway.denials import DenialAuditor
from svckit.http import HttpClient, SignedClient
from svckit.settings import load_settings

from testkit.client import SignedApi
from testkit.fixtures import Caller, ServiceRedis, migrate_schema, pair_signer, serve_app, user

AUDIT_PACKAGE = Path(__file__).resolve().parents[2] / "services" / "audit" / "audit"
AUDITOR = user("carol", "read:audit")


@pytest.fixture
async def audit_url(
    database_url: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> AsyncIterator[str]:
    await migrate_schema(database_url, "audit", AUDIT_PACKAGE)
    env = service_redis.runtime_env(service_env, "audit")  # its own runtime role and Redis user
    settings = load_settings(AuditSettings, env=env, audit_verify_interval_seconds=0)
    async with serve_app(create_app(settings)) as url:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
        yield url


async def test_denials_from_the_gateway_are_recorded(
    audit_url: str, identity_keys: dict[str, str], caller: Caller
) -> None:
    http = HttpClient()
    client = SignedClient(http, audit_url, pair_signer(identity_keys, "gateway", "audit"))
    auditor = DenialAuditor(client, queue_size=100, batch_size=10, flush_seconds=0.1, window_seconds=0.2)
    auditor.start()
    anonymous_request, scoped_request = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        for _ in range(7):  # a small flood: one aggregated record
            auditor.aggregate(
                status=401,
                reason="invalid_token",
                route="/api/timesheets",
                method="GET",
                request_id=anonymous_request,
                identity=None,
                address="203.0.113.7",
            )
        auditor.record(
            status=403,
            reason="insufficient_scope",
            route="/api/approvals",
            method="GET",
            request_id=scoped_request,
            identity=user("alice", "read:timesheets"),
            client_ip="203.0.113.8",
            required_scope="approve:timesheets",
        )
        for _ in range(100):
            if auditor.delivered >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await auditor.stop()
        await http.close()
    assert auditor.delivered == 2

    api = SignedApi(audit_url, caller)
    try:
        reply = await api.call(
            "GET", "/audit/events", AUDITOR, params={"action": "access.denied", "source": "gateway"}
        )
    finally:
        await api.close()
    by_request = {item["request_id"]: item for item in reply.body["items"]}
    anonymous = by_request[anonymous_request]
    assert anonymous["actor"]["kind"] == "anonymous"
    assert anonymous["outcome"] == "denied"
    details = anonymous["details"]
    assert details["reason"] == "invalid_token"
    assert details["count"] == 7
    assert details["address"] == "203.0.113.7"
    assert details["route"] == "/api/timesheets"
    assert details["window_start"] < details["window_end"]
    scoped = by_request[scoped_request]
    assert scoped["actor"]["subject"] == "alice"
    assert scoped["details"]["required_scope"] == "approve:timesheets"
