"""The service under test runs as its own Redis ACL user (svckit.redisacl), as in production, so a
command or key it uses that its user is not granted fails here: NOPERM opens the replay memory's
circuit, and an unsafe request then goes to the replay memory's Postgres fallback instead
(svckit.replayfallback): the nonce must be found in Redis, not only the request answered."""

from __future__ import annotations

import uuid

from testkit.client import SignedApi
from testkit.fixtures import ServiceRedis, user
from testkit.redisusers import connections_of, refusals, replay_keys


async def test_the_service_connects_as_its_own_redis_user_and_may_do_no_more(
    api: SignedApi, service_redis: ServiceRedis, redis_url: str, redis_prefix: str
) -> None:
    before = await replay_keys(redis_url, redis_prefix, "timesheets")
    who = user(f"redis-user-{uuid.uuid4().hex[:6]}", "create:timesheets")
    made = await api.call("POST", "/timesheets", who, json={"date": "2026-01-02", "project": "R", "hours": 1})
    assert made.status == 201, made.text  # in Redis, or else in the fallback table
    assert await replay_keys(redis_url, redis_prefix, "timesheets") - before  # new keys (old ones may expire)
    assert await connections_of(redis_url, service_redis.user("timesheets")) >= 1, "connected as its user"
    assert await refusals(service_redis.url("timesheets"), "timesheets", redis_prefix) == []
