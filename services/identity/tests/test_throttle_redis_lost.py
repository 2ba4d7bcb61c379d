"""A throttle's limit holds across Redis going away in the middle of a burst.

Slots taken through Redis were counted only there; when the next attempts found Redis unavailable (a
timeout on a busy machine, a failover), the in-process fallback counted from zero and let the whole
limit through again: twice the limit in Argon2 verifications (seen in a parallel ``make test`` on a
loaded machine: ``test_a_burst_of_wrong_secrets_gets_no_more_than_the_limit``, 6 of 12 guesses
verified with a limit of 3). Slots taken through Redis are now also counted in process.
"""

from __future__ import annotations

from identity.throttle import FailureThrottle, LoginThrottle
from svckit.redisguard import RedisGuard

from testkit.redisproc import PrivateRedis

LIMIT = 3


async def test_a_failure_throttle_counts_the_slots_redis_gave_after_redis_is_gone() -> None:
    with PrivateRedis() as server:
        guard = RedisGuard(server.url, "t:", timeout=0.5, retry_seconds=60.0)
        throttle = FailureThrottle(guard, "client-auth-fail", max_per_address=LIMIT, window_seconds=60)
        try:
            for _ in range(LIMIT - 1):
                assert (await throttle.begin("10.0.0.9", presents_secret=True)).allowed  # through Redis
            server.stop()
            verdicts = [await throttle.begin("10.0.0.9", presents_secret=True) for _ in range(LIMIT)]
            assert [v.allowed for v in verdicts] == [True, False, False]  # one slot left, not LIMIT
        finally:
            await guard.close()


async def test_sign_in_slots_taken_through_redis_count_after_redis_is_gone() -> None:
    with PrivateRedis() as server:
        guard = RedisGuard(server.url, "t:", timeout=0.5, retry_seconds=60.0)
        throttle = LoginThrottle(guard, max_per_user=LIMIT, max_per_address=100, window_seconds=60)
        try:
            for _ in range(LIMIT):
                assert (await throttle.attempt("mallory", "10.0.0.9")).allowed  # three failures, in Redis
            server.stop()
            verdict = await throttle.attempt("mallory", "10.0.0.9")
            assert (verdict.allowed, verdict.scope) == (False, "user")
        finally:
            await guard.close()
