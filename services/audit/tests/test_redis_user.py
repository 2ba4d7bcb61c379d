"""The audit service under test runs as its own Redis ACL user (svckit.redisacl), as in production, so
a command or key it uses that its user is not granted fails here: NOPERM opens the replay memory's
circuit, and an unsafe request (every intake) then goes to the replay memory's Postgres fallback instead
(svckit.replayfallback): the nonce must be found in Redis, not only the request answered."""

from __future__ import annotations

from testkit.client import SignedApi
from testkit.fixtures import ServiceRedis
from testkit.redisusers import connections_of, refusals, replay_keys

from .conftest import TIMESHEETS, EventFactory


async def test_the_service_connects_as_its_own_redis_user_and_may_do_no_more(
    api: SignedApi, new_event: EventFactory, service_redis: ServiceRedis, redis_url: str, redis_prefix: str
) -> None:
    before = await replay_keys(redis_url, redis_prefix, "audit")
    stored = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [new_event()]})
    assert stored.status == 200, stored.text  # in Redis, or else in the fallback table
    assert await replay_keys(redis_url, redis_prefix, "audit") - before  # new keys (old ones may expire)
    assert await connections_of(redis_url, service_redis.user("audit")) >= 1, "connected as its user"
    assert await refusals(service_redis.url("audit"), "audit", redis_prefix) == []
