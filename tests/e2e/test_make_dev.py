"""`make dev` brings all five services up and SIGTERM to `make` stops every one of them.

It runs with two trusted issuers, the bundled provider and an Auth0 tenant
(``OIDC_ISSUER=http://localhost:9000/,https://TENANT.auth0.com/``): the provider reads its own
``IDENTITY_ISSUER``, so the list starts, and a user signed in at the bundled provider calls the API.
The tenant's keys come from a loopback URL (``GATEWAY_ISSUERS_FILE``), so nothing leaves the machine.
Each service is connected to the given database as its own runtime role, never as the owner.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil
import pytest
import redis
from redis.exceptions import NoPermissionError
from svckit.identity import PAIRS, pair_variable

from devstack import SERVICES
from devstack.backing import port_is_free
from testkit.fixtures import IsolatedEnv, free_port
from testkit.oidc import DEMO_PASSWORD, Browser, sign_in_tokens

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


TENANT = "https://TENANT.auth0.com/"


async def sign_in_and_call_the_api() -> int:
    """alice signs in at the bundled provider (code + PKCE) and lists her entries through the gateway."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser("http://localhost:9000", session)
        tokens = await sign_in_tokens(browser, session, "http://localhost:9000", "alice")
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with session.get("http://127.0.0.1:8080/api/timesheets", headers=headers) as response:
            return response.status


async def connected_roles(database_url: str) -> dict[str, set[str]]:
    """Which roles each service (application_name) is connected to the database as."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT application_name, usename FROM pg_stat_activity WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    seen: dict[str, set[str]] = {}
    for row in rows:
        seen.setdefault(row["application_name"], set()).add(row["usename"])
    return seen


def assert_redis_closed(admin_url: str) -> None:
    """The embedded Redis: the admin user (the banner's URL) may do anything, nobody else more than PING."""
    admin = redis.Redis.from_url(admin_url, driver_info=None)
    nobody = redis.Redis.from_url(f"redis://127.0.0.1:{urlsplit(admin_url).port}/0", driver_info=None)
    try:
        assert admin.execute_command("ACL", "WHOAMI") in ("admin", b"admin")  # type: ignore[no-untyped-call]
        assert nobody.ping()
        with pytest.raises(NoPermissionError):
            nobody.get("tsp:revocations:complete")
    finally:
        admin.close()
        nobody.close()


def test_make_dev_runs_and_stops_everything(isolated_env: IsolatedEnv, tmp_path: Path) -> None:
    busy = [p for spec in SERVICES for p in (spec.port, spec.metrics_port) if not port_is_free(p)]
    assert not busy, f"ports in use before the test: {busy}"
    isolated = isolated_env("make_dev")
    issuers_file = tmp_path / "issuers.yaml"
    issuers_file.write_text(
        f'issuers:\n  "{TENANT}":\n    jwks_uri: http://127.0.0.1:{free_port()}/.well-known/jwks.json\n'
    )
    env = {
        **os.environ,
        **isolated,
        "DEVSTACK_STATE_DIR": str(tmp_path / "state"),
        "OIDC_ISSUER": f"http://localhost:9000/,{TENANT}",
        "GATEWAY_ISSUERS_FILE": str(issuers_file),
        "DEMO_PASSWORD": DEMO_PASSWORD,
    }
    env.pop("IDENTITY_ISSUER", None)  # the default, http://localhost:9000/
    env.pop("REDIS_URL", None)  # the embedded Redis (Valkey), where devstack creates each component's user
    log = (tmp_path / "make-dev.log").open("wb")
    make = subprocess.Popen(
        ["make", "--no-print-directory", "dev"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        urls = {spec.name: f"http://127.0.0.1:{spec.port}" for spec in SERVICES}
        wait_until(
            lambda: make.poll() is not None or all(get(u + "/readyz") == 200 for u in urls.values()),
            timeout=240,
            what="every service to be ready",
        )
        output = (tmp_path / "make-dev.log").read_text(errors="replace")
        assert make.poll() is None, output[-4000:]
        for name, url in urls.items():
            for path in ("/healthz", "/readyz"):
                assert get(url + path) == 200, f"{name}{path}"
            assert get(url + "/metrics") == 404, f"{name}: /metrics on the public port"
        for spec in SERVICES:
            assert get(f"http://127.0.0.1:{spec.metrics_port}/metrics") == 200, f"{spec.name} metrics port"
        wait_until(
            lambda: "http://localhost:8080/" in (tmp_path / "make-dev.log").read_text(errors="replace"),
            timeout=10,
            what="the banner",
        )
        output = (tmp_path / "make-dev.log").read_text(errors="replace")
        assert "alice" in output
        admin_url = re.search(r"Redis +(redis://admin:\S+)", output)
        assert admin_url, "the banner shows the embedded Redis's admin URL"
        assert_redis_closed(admin_url.group(1))
        assert asyncio.run(sign_in_and_call_the_api()) == 200
        roles = asyncio.run(connected_roles(isolated["DATABASE_URL"]))
        prefix = isolated["DB_ROLE_PREFIX"]
        for service in ("identity", "timesheets", "approvals", "audit"):
            assert roles.get(service) == {prefix + service}, roles
        assert "gateway   |" in output  # log lines are prefixed per service
        children = psutil.Process(make.pid).children(recursive=True)
        assert len(children) >= 6
        # every pair's identity key was generated into the state dir; each process holds its own only
        generated = (tmp_path / "state" / "secrets.env").read_text()
        held: dict[str, set[str]] = {}
        redis_users: dict[str, str | None] = {}
        for child in children:
            command = child.cmdline()
            if len(command) >= 3 and command[1] == "-m" and command[2] in urls:
                environ = child.environ()
                held[command[2]] = {name for name in environ if name.startswith("IDENTITY_KEYS")}
                redis_users[command[2]] = urlsplit(environ["REDIS_URL"]).username
                assert not [name for name in environ if name.endswith("_REDIS_PASSWORD")], command[2]
        # each process connects to Redis as its own ACL user (svckit.redisacl), none as the default
        assert redis_users == {name: name for name in urls}, redis_users
        assert set(held) == set(urls), held
        for service, names in held.items():
            own = {pair_variable(s, r) for s, r in PAIRS if service in (s, r)}
            assert names == own, (service, names)
            assert all(f"{name}=" in generated for name in own)

        make.send_signal(signal.SIGTERM)  # to make only, as `kill <make>` would
        make.wait(60)
        wait_until(
            lambda: all(port_is_free(p) for spec in SERVICES for p in (spec.port, spec.metrics_port)),
            timeout=40,
            what="ports freed",
        )
        wait_until(
            lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE],
            timeout=30,
            what="every child process to exit",
        )
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
