"""The bundled Redis's users: the chart renders svckit.redisacl's rules, and a real server enforces them.

svckit.redisacl is the one statement of what each component may do in Redis (devstack and the tests
use it); the chart cannot import it, so its template (timesheets.redisAclRules) repeats the rules, and
these tests keep the two equal. The rendered ACL file is then loaded by a real Redis server: each
component's URL from the generated Secret connects, runs what that component runs and is refused
(NOPERM) everything else, and the default user is off. The operators' ``admin`` user
(``redis-admin-password``) runs the read-only diagnostics (INFO, SLOWLOG GET, CLIENT LIST, MEMORY
STATS, …) and nothing that reads a key, changes the configuration or the users, or ends Redis for all.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from svckit import redisacl

from testkit.redisproc import PrivateRedis
from tests.packaging.support import (
    MINIMAL,
    SCENARIOS,
    Obj,
    component,
    render,
    render_notes,
    rendered_scenario,
)
from tests.packaging.test_policies import app_deployments, env_of, main_container

COMPONENTS = ("gateway", "identity", "timesheets", "approvals", "audit")


def generated(objects: list[Obj]) -> dict[str, str]:
    (secret,) = [o for o in objects if o["kind"] == "Secret" and "redis-users.acl" in o.get("data", {})]
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def expected_file(data: dict[str, str], prefix: str) -> str:
    components = [c for c in COMPONENTS if f"redis-password-{c}" in data]
    return redisacl.acl_file(
        {c: c for c in components},
        {c: data[f"redis-password-{c}"] for c in components},
        prefix,
        probe_password=data["redis-password"],
        admin_password=data["redis-admin-password"],
    )


@pytest.mark.parametrize(
    "scenario", [name for name, values in SCENARIOS.items() if values.get("redis", {}).get("enabled")]
)
def test_the_bundled_redis_acl_is_svckit_redisacl(scenario: str) -> None:
    values = SCENARIOS[scenario]
    data = generated(rendered_scenario(scenario))
    prefix = values.get("config", {}).get("redisKeyPrefix", "tsp:")
    assert data["redis-users.acl"] == expected_file(data, prefix)


@pytest.mark.parametrize("identity", [True, False])
def test_the_acl_escapes_the_prefix_and_names_the_enabled_components_only(identity: bool) -> None:
    prefix = r"a*b?[c]\d:"
    values: dict[str, Any] = {
        **SCENARIOS["values-dev.yaml"],
        "config": {**SCENARIOS["values-dev.yaml"].get("config", {}), "redisKeyPrefix": prefix},
        "identity": {**SCENARIOS["values-dev.yaml"].get("identity", {}), "enabled": identity},
    }
    if not identity:
        values["oidc"] = {"issuers": ["https://login.example.com/"]}
    data = generated(render(values))
    assert data["redis-users.acl"] == expected_file(data, prefix)
    assert r"~a\*b\?\[c\]\\d:gateway:*" in data["redis-users.acl"]
    assert ("redis-url-identity" in data) == identity


def test_the_rendered_acl_limits_each_component_on_a_real_redis() -> None:
    data = generated(rendered_scenario("values-dev.yaml"))
    with PrivateRedis(acl=data["redis-users.acl"]) as server:

        def client(component: str) -> redis.Redis:
            url = data[f"redis-url-{component}"]
            url = url.replace("ts-timesheets-redis:6379", f"127.0.0.1:{server.port}")
            return redis.Redis.from_url(url, driver_info=None)

        anonymous = redis.Redis.from_url(server.url, driver_info=None)
        with pytest.raises((ResponseError, AuthenticationError), match=r"NOAUTH|authenticated"):
            anonymous.get("tsp:revocations:complete")  # the default user is off
        with pytest.raises(AuthenticationError):
            redis.Redis.from_url(server.url_for("default", data["redis-password"]), driver_info=None).ping()
        probe = redis.Redis.from_url(server.url_for("probe", data["redis-password"]), driver_info=None)
        assert probe.ping()
        with pytest.raises(NoPermissionError):
            probe.get("tsp:gateway:jwks:x")

        gateway, identity, timesheets = client("gateway"), client("identity"), client("timesheets")
        assert identity.xadd("tsp:revocations", {"jti": "a"}, minid="0")
        assert identity.time()  # the stream's entries are aged on Redis's clock
        assert identity.xtrim("tsp:revocations", minid="0") == 0
        assert identity.set("tsp:revocations:complete", "1")
        assert gateway.xread({"tsp:revocations": "0"}, count=10)
        assert gateway.set("tsp:gateway:jwks:x", "{}", ex=60)
        assert gateway.incrby("tsp:gateway:rl:client:a:1", 3) == 3
        assert timesheets.set("tsp:identity-replay:timesheets:n1", "1", nx=True, ex=60)
        # the replay memory's lookup while Redis refuses writes (full): EXISTS of its own keys
        assert timesheets.exists("tsp:identity-replay:timesheets:n1") == 1
        assert client("approvals").exists("tsp:identity-replay:approvals:n1") == 0
        assert client("audit").exists("tsp:identity-replay:audit:n1") == 0
        # the DPoP memories' lookup then: GET of their own proof ids (granted before)
        assert gateway.get("tsp:dpop-jti:d1") is None
        assert identity.get("tsp:identity-dpop-jti:d1") is None
        audit = client("audit")  # the trail's watermark (audit.watermark): GET, and the raise-only EVAL
        assert audit.get("tsp:audit:watermark:db") is None
        raise_only = "redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], ARGV[1])"
        assert audit.eval(raise_only, 1, "tsp:audit:watermark:db", "{}")
        refused: list[Callable[[], object]] = [
            lambda: gateway.xadd("tsp:revocations", {"jti": "b"}),  # the gateways only read the stream
            lambda: gateway.delete("tsp:revocations"),
            lambda: timesheets.xadd("tsp:revocations", {"jti": "c"}, id=f"{2**64 - 1}-{2**64 - 1}"),
            lambda: timesheets.set("tsp:revocations:complete", "1"),
            lambda: timesheets.set("tsp:identity-replay:audit:n1", "1"),  # another service's memory
            lambda: timesheets.set("tsp:identity:login:addr:1.2.3.4", "0"),
            lambda: timesheets.get("tsp:identity-replay:timesheets:n1"),
            lambda: timesheets.exists("tsp:identity-replay:audit:n1"),  # another service's memory
            lambda: timesheets.exists("tsp:revocations:complete"),
            lambda: client("audit").exists("tsp:identity:login:addr:1.2.3.4"),
            lambda: gateway.exists("tsp:dpop-jti:d1"),  # the gateway reads with GET, as before
            lambda: client("approvals").delete("tsp:gateway:rl:client:a:1"),
            lambda: client("audit").flushall(),
            lambda: client("audit").get("tsp:identity:login:addr:1.2.3.4"),  # its own keys only
            lambda: client("audit").eval("return redis.call('GET', KEYS[1])", 1, "tsp:revocations:complete"),
            lambda: client("approvals").get("tsp:audit:watermark:db"),
            lambda: identity.config_set("maxmemory", "1"),
            lambda: identity.client_kill_filter(_type="normal"),
            lambda: identity.keys("*"),
            lambda: identity.delete("tsp:revocations"),
            lambda: identity.set("tsp:gateway:jwks:x", "{}"),
            lambda: gateway.eval("return 1", 0),
        ]
        for attempt in refused:
            with pytest.raises(NoPermissionError):
                attempt()


def test_the_bundled_redis_has_an_admin_user_for_diagnostics_only() -> None:
    """Without it an operator had no user that may run INFO or SLOWLOG on the bundled Redis (the
    default user is off, the probe may PING only, each component its own commands): diagnosing meant
    editing the ACL file in the Secret and restarting Redis. Its rules are svckit.redisacl's."""
    data = generated(rendered_scenario("values-dev.yaml"))
    password = data["redis-admin-password"]
    assert len(password) >= 32
    line = f"user admin on {redisacl.password_hash(password)} {redisacl.ADMIN_RULES}"
    assert line in data["redis-users.acl"].splitlines()
    assert not any(rule.startswith(("~", "%", "&", "allkeys", "allchannels")) for rule in line.split(" "))
    with PrivateRedis(acl=data["redis-users.acl"]) as server:
        owner = client_of(server, "gateway", data)
        owner.set("tsp:gateway:jwks:x", "{}")
        admin = redis.Redis.from_url(server.url_for("admin", password), driver_info=None)
        assert "redis_version" in admin.info()
        assert "used_memory" in admin.info("memory")
        assert isinstance(admin.slowlog_get(), list)
        assert admin.slowlog_len() >= 0
        assert any(c["user"] == "gateway" for c in admin.client_list())
        assert admin.client_info()["user"] == "admin"
        assert "keys.count" in admin.memory_stats()
        assert command(admin, "MEMORY", "DOCTOR")
        assert isinstance(command(admin, "LATENCY", "LATEST"), list)
        assert admin.dbsize() == 1
        assert isinstance(admin.acl_log(), list)
        assert admin.acl_whoami() == "admin"
        refused: list[Callable[[], object]] = [
            lambda: admin.get("tsp:gateway:jwks:x"),  # no key reads
            lambda: admin.keys("*"),
            lambda: admin.scan(),
            lambda: command(admin, "MEMORY", "USAGE", "tsp:gateway:jwks:x"),
            lambda: admin.set("tsp:gateway:jwks:x", "[]"),
            lambda: admin.delete("tsp:gateway:jwks:x"),
            lambda: admin.flushall(),
            lambda: admin.flushdb(),
            lambda: admin.config_set("maxmemory", "1"),
            lambda: admin.config_get("*"),
            lambda: command(admin, "CONFIG", "REWRITE"),
            lambda: admin.acl_setuser("admin", enabled=True, commands=["+@all"], keys=["*"]),
            lambda: admin.acl_list(),  # the users' password hashes
            lambda: admin.acl_getuser("gateway"),
            lambda: command(admin, "ACL", "LOAD"),
            lambda: command(admin, "MONITOR"),  # every command's arguments, values too
            lambda: admin.client_kill_filter(_type="normal"),
            lambda: command(admin, "CLIENT", "PAUSE", "1000"),
            lambda: admin.slowlog_reset(),
            lambda: command(admin, "SHUTDOWN", "NOSAVE"),
            lambda: command(admin, "SAVE"),
            lambda: command(admin, "REPLICAOF", "127.0.0.1", "1"),
            lambda: admin.eval("return redis.call('GET', KEYS[1])", 1, "tsp:gateway:jwks:x"),
            lambda: admin.publish("x", "y"),
        ]
        for attempt in refused:
            with pytest.raises(NoPermissionError):
                attempt()
        assert owner.get("tsp:gateway:jwks:x") == b"{}"  # all still there


def command(client: redis.Redis, *args: str) -> Any:
    """One command as sent (redis-py has no typed method for some of these)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def client_of(server: PrivateRedis, component: str, data: dict[str, str]) -> redis.Redis:
    """``component``'s client on ``server``, with the URL the rendered Secret gives it."""
    url = data[f"redis-url-{component}"].replace("ts-timesheets-redis:6379", f"127.0.0.1:{server.port}")
    return redis.Redis.from_url(url, driver_info=None)


def redis_url_keys(objects: list[Obj]) -> dict[str, str]:
    """Component → the Secret key its REDIS_URL comes from."""
    keys = {}
    for dep in app_deployments(objects):
        env = env_of(main_container(dep))
        if "REDIS_URL" in env:
            keys[component(dep)] = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"]
    return keys


def test_an_external_redis_gives_each_component_its_own_url_unless_the_operator_shares_one() -> None:
    own = redis_url_keys(render(MINIMAL))
    assert own == {c: f"redis-url-{c}" for c in COMPONENTS}
    assert "sharedCredential" not in render_notes(MINIMAL)
    shared_values = {**MINIMAL, "externalRedis": {"existingSecret": "redis", "sharedCredential": True}}
    assert set(redis_url_keys(render(shared_values)).values()) == {"redis-url"}
    notes = render_notes(shared_values)
    assert "WARNING: externalRedis.sharedCredential" in notes
    assert "redis/redis-url" in notes


def test_an_external_redis_needs_the_operator_to_say_whether_its_credential_is_shared() -> None:
    """A Secret from before 0.2.0 holds one redis-url; read as redis-url-<component> it would stop every
    pod at start. Unsaid, the render fails, before the upgrade changes anything."""
    import helm_python as helm

    unsaid = {**MINIMAL, "externalRedis": {"existingSecret": "redis"}}
    with pytest.raises(helm.HelmError) as failed:
        render(unsaid)
    assert "externalRedis.sharedCredential" in str(failed.value)


def test_a_prefix_the_acl_file_cannot_hold_fails_the_render_not_the_bundled_redis() -> None:
    """config.redisKeyPrefix is free text (the schema says only "string"; the services take any
    prefix), but an ACL file's rules are separated by spaces: a prefix with a space renders a
    rule Redis cannot parse, and the bundled Redis aborts at start ("Syntax error") with every
    component waiting on it. svckit.redisacl.rules refuses such a prefix; the chart must too, at
    render time, or render rules a Redis loads."""
    import helm_python as helm

    prefix = "my app:"
    with pytest.raises(ValueError, match="no spaces"):
        redisacl.rules("gateway", prefix)  # what devstack and the docs' user_line say
    values: dict[str, Any] = {
        **SCENARIOS["values-dev.yaml"],
        "config": {**SCENARIOS["values-dev.yaml"].get("config", {}), "redisKeyPrefix": prefix},
    }
    try:
        data = generated(render(values))
    except helm.HelmError:
        return  # refused before anything changes
    with PrivateRedis(acl=data["redis-users.acl"]) as server:  # raises when Redis does not start
        assert server.process is not None
        assert server.process.poll() is None
