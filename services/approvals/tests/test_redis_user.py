"""Approvals and the timesheets service it applies decisions to run as their own Redis ACL users
(svckit.redisacl), as in production, so a command or key either uses that its user is not granted
fails here: NOPERM opens the replay memory's circuit, and an unsafe request is then refused 503."""

from __future__ import annotations

import uuid

from testkit.client import SignedApi
from testkit.fixtures import ServiceRedis, user
from testkit.redisusers import connections_of, refusals, replay_keys


async def test_both_services_connect_as_their_own_redis_users_and_may_do_no_more(
    approvals: SignedApi,
    timesheets: SignedApi,
    service_redis: ServiceRedis,
    redis_url: str,
    redis_prefix: str,
) -> None:
    alice = user(f"alice-{uuid.uuid4().hex[:6]}", "create:timesheets")
    made = await timesheets.call(
        "POST", "/timesheets", alice, json={"date": "2026-01-06", "project": "R", "hours": 2}
    )
    assert made.status == 201, made.text
    before = {s: await replay_keys(redis_url, redis_prefix, s) for s in ("approvals", "timesheets")}
    boss = user(f"boss-{uuid.uuid4().hex[:6]}", "approve:timesheets")
    decided = await approvals.call(
        "PUT", f"/approvals/{made.body['id']}", boss, json={"decision": "approved"}
    )
    assert decided.status == 200, decided.text  # approvals → timesheets, each nonce recorded, no 503
    for service in ("approvals", "timesheets"):
        # new keys written (an older one may have expired meanwhile: a superset was asked and flaked)
        assert await replay_keys(redis_url, redis_prefix, service) - before[service], service
        assert await connections_of(redis_url, service_redis.user(service)) >= 1, service
        assert await refusals(service_redis.url(service), service, redis_prefix) == [], service
