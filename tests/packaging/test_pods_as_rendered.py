"""Does the chart's pod actually run? Its containers started from the render alone, then used.

The chart is rendered for an install against an external database and Redis (the operator's Secrets
named by reference, the bundled identity provider with its demo users; the chart generates every other
secret). The migration Job's containers, then each Deployment's, run as real processes the way the
kubelet would run them (tests/packaging/release.py, pods.py, podlaunch.py): the rendered command and
environment (Secrets/ConfigMaps resolved), as the rendered non-root uid/gid without capabilities, on a
read-only root filesystem where only the rendered volumes are mounted (the /tmp emptyDir as a tmpfs of its
sizeLimit, the gateway's issuers ConfigMap as read-only files). Nothing else is given to them;
pods.REWRITES lists the only differences from a cluster and why.

Then a real flow goes through the gateway: alice signs in at the identity provider and records an
entry, bob approves it, carol reads it in the audit trail; each pod is ready, its own metrics are
scraped, and no log shows a write refused (read-only file system, permission denied).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from testkit.fixtures import IsolatedEnv, ServiceRedis
from testkit.oidc import Browser, sign_in_tokens
from tests.packaging.pods import REWRITES, PodProcess, wait_for
from tests.packaging.release import Pods, http, running_release
from tests.packaging.support import APP_COMPONENTS

pytestmark = pytest.mark.e2e

SCOPES = {
    "alice": "openid read:timesheets create:timesheets",
    "bob": "openid read:timesheets approve:timesheets",
    "carol": "openid read:audit",
}
#: the gateway's extra variables (gateway.extraEnvVarsSecret), seen in its process's environment
EXTRA_ENV = {"UPSTREAM_READ_TIMEOUT_SECONDS": "29"}
#: what a log line must never say: a write the read-only view or the non-root user refused
REFUSED_WRITES = ("Read-only file system", "PermissionError", "Permission denied", "[Errno 13]", "[Errno 30]")


@pytest.fixture(scope="module")
def pods(
    isolated_env: IsolatedEnv, service_redis: ServiceRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pods]:
    # as in production: several workers sharing their metrics files in the /tmp emptyDir, and the
    # operator's extra variables by envFrom
    overrides = {"gateway": {"workers": 2, "extraEnvVarsSecret": "gateway-extra-env"}}
    with running_release(
        isolated_env,
        service_redis,
        tmp_path_factory,
        name="pods",
        overrides=overrides,
        operator_env={"gateway-extra-env": EXTRA_ENV},
    ) as release:
        yield release


def scrape_with(url: str, series: bytes) -> bytes | None:
    status, body = http("GET", url)
    return body if status == 200 and isinstance(body, bytes) and series in body else None


async def sign_in(identity: str) -> dict[str, str]:
    tokens = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        for who, scope in SCOPES.items():
            browser = Browser(identity, session)
            tokens[who] = (await sign_in_tokens(browser, session, identity, who, scope=scope))["access_token"]
            session.cookie_jar.clear()
    return tokens


def test_an_entry_is_recorded_approved_and_audited_through_the_gateway(pods: Pods) -> None:
    tokens = asyncio.run(sign_in(pods.url("identity")))
    api = pods.url("gateway") + "/api"
    day = dt.date(2048, 1, 1) + dt.timedelta(days=random.randrange(3000))
    entry = {"date": day.isoformat(), "project": "pods as rendered", "hours": 3, "notes": "kubelet"}
    status, created = http("POST", f"{api}/timesheets", entry, tokens["alice"])
    assert status == 201, created
    status, decided = http("PUT", f"{api}/approvals/{created['id']}", {"decision": "approved"}, tokens["bob"])
    assert status in (200, 201), decided

    def audited() -> set[str]:
        actions: set[str] = set()
        query = "limit=100"
        while query:  # every page (few: the records of this test's own database)
            status, page = http("GET", f"{api}/audit/events?{query}", token=tokens["carol"])
            assert status == 200, page
            actions |= {e["action"] for e in page["items"] if e["resource"]["id"] == created["id"]}
            query = f"limit=100&cursor={page['next_cursor']}" if page["next_cursor"] else ""
        return actions

    # both services' events, each through its outbox relay to the audit service
    actions = wait_for(lambda: {"approval.decided"} <= audited() and audited(), 30, "the trail", 0.5)
    assert any(a.startswith("timesheet") for a in actions), actions
    status, verified = http("GET", f"{api}/audit/verify", token=tokens["carol"])
    assert status == 200, verified


#: a series each pod exports once it served (the gateway's from its workers' files in the /tmp emptyDir)
OWN_SERIES = {"gateway": b"gateway_requests_total", **{c: b"http_requests_total" for c in APP_COMPONENTS[1:]}}


def test_every_pod_is_ready_and_exports_its_metrics(pods: Pods) -> None:
    for component in APP_COMPONENTS:
        assert http("GET", pods.url(component) + "/readyz")[0] == 200, component
        # the gateway writes its workers' request counts once a second (gateway.metrics.RequestMetrics)
        series = OWN_SERIES[component]
        url = pods.metrics_url(component)
        body = wait_for(lambda u=url, n=series: scrape_with(u, n), 20, f"{series!r}")
        assert b"process_start_time_seconds" in body, component


PROBE = """
import errno, os
def attempt(path, size=1):
    try:
        with open(path, "wb") as f:
            f.write(b"x" * size)
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
print({
    "/": attempt("/probe"), "/opt/app": attempt("/opt/app/probe"), "/etc": attempt("/etc/probe"),
    "/var/tmp": attempt("/var/tmp/probe"), "/etc/timesheets/gateway": attempt("/etc/timesheets/gateway/x"),
    "/tmp": attempt("/tmp/probe"), "/tmp beyond sizeLimit": attempt("/tmp/big", 65 * 2**20),
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
})
"""


def test_the_view_refuses_writes_outside_the_rendered_volumes(pods: Pods) -> None:
    """The harness itself: a probe in the gateway's container (its mounts, user, image) may write to
    the /tmp emptyDir up to its sizeLimit, nowhere else."""
    import ast
    import dataclasses

    gateway = pods.containers["gateway"]
    probe = dataclasses.replace(gateway, name="probe", argv=["python", "-c", PROBE])
    spec_of = json.loads(pods.processes["gateway"].spec_file.read_text())
    spec = probe.spec(
        Path(spec_of["root"] + "-probe"), spec_of["mounts"][:2], Path(spec_of["mounts"][-1]["source"])
    )
    process = PodProcess(probe, spec, pods.processes["gateway"].spec_file.parent).start()
    assert process.wait(60) == 0, process.logs()
    seen = ast.literal_eval(process.logs().strip().splitlines()[-1])
    assert seen == {
        "/": "EROFS",
        "/opt/app": "EROFS",
        "/etc": "EROFS",
        "/var/tmp": "EROFS",
        "/etc/timesheets/gateway": "EROFS",
        "/tmp": "ok",
        "/tmp beyond sizeLimit": "ENOSPC",
        "uid": gateway.uid,
        "gid": gateway.gid,
        "groups": [],
    }


def test_the_pods_run_as_rendered(pods: Pods) -> None:
    """The harness does what it claims: non-root, read-only root, /tmp a tmpfs of the sizeLimit."""
    for component, process in pods.processes.items():
        pid = process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uid) == {str(pods.containers[component].uid)}, (component, uid)
        mounts = {line.split()[4]: line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
        assert " ro," in mounts["/"] or " ro " in mounts["/"], mounts["/"]
        assert "tmpfs" in mounts["/tmp"], mounts["/tmp"]
        assert " rw," in mounts["/tmp"], mounts["/tmp"]
    environ = Path(f"/proc/{pods.processes['gateway'].pid}/environ").read_bytes().split(b"\0")
    assert {f"{k}={v}".encode() for k, v in EXTRA_ENV.items()} <= set(environ)
    assert b"GATEWAY_WORKERS=2" in environ


def test_no_pod_was_refused_a_write(pods: Pods) -> None:
    # the traffic of the other tests first, when run alone the start-up and the migration Job
    for process in [*pods.job, *pods.processes.values()]:
        logs = process.logs()
        refused = [line for line in logs.splitlines() if any(word in line for word in REFUSED_WRITES)]
        assert refused == [], (process.container.name, refused[:5])


def test_helm_test_passes_against_the_running_release(pods: Pods) -> None:
    """`helm test`'s pod (templates/tests/test-platform.yaml), as rendered, after the install."""
    (check,) = pods.helm_test
    assert check.start().wait(60) == 0, check.logs()
    assert "all checks passed" in check.logs(), check.logs()


def test_each_rewrite_is_listed(pods: Pods) -> None:
    for container in pods.containers.values():
        assert set(container.rewrites) <= set(REWRITES)
        differs = {k for k, v in container.env.items() if k == "BIND_HOST" and v != "::"}
        assert differs <= set(container.rewrites)
