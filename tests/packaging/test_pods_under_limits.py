"""The chart's pods under their rendered resource limits, at their worst case: do they stay inside?

Each Deployment's container runs as rendered (tests/packaging/release.py) and in cgroups of its
rendered ``resources`` (testkit.cgroups): the kernel OOM-kills a process of the container whose charge
would pass ``resources.limits.memory``, as on a node. Each scenario drives one component to the most
memory the platform lets a caller make it hold, and reads the kernel's figures: the peak charge
(``memory.max_usage_in_bytes``) against the limit, OOM kills. docs/runbook.md, "Resource limits: where
the figures come from", lists what was measured and the margin asserted here (:data:`MARGIN`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socketserver
import statistics
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import pytest
from svckit.identity import Identity, IdentitySigner
from svckit.settings import parse_identity_keys

from testkit.cgroups import Cgroup, cpu_millis, unavailable
from testkit.fixtures import IsolatedEnv, ServiceRedis
from testkit.kubelet import PHASES, Probe, kubelets, longest_failing_run, probing
from testkit.oidc import Browser, sign_in_tokens
from tests.packaging.pods import wait_for
from tests.packaging.release import Pods, ready_or_gone, running_release
from tests.packaging.support import APP_COMPONENTS, RELEASE, pod_spec

pytestmark = pytest.mark.e2e

#: the share of a memory limit a worst case may reach: the rest is the margin for what this machine
#: does not show (another allocator's fragmentation, a larger page cache, a busier event loop)
MARGIN = 0.15
MiB = 1 << 20
#: the largest upload the gateway's route and the timesheets service take (MAX_UPLOAD_BYTES)
UPLOAD_BYTES = 16 << 20
#: how many clients saturate a pod in a CPU scenario (which lasts :func:`scenario_seconds`)
CLIENTS = 64


@pytest.fixture(scope="module")
def release(
    isolated_env: IsolatedEnv, service_redis: ServiceRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pods]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no pod can be put under its limits here: {reason}")
    with running_release(
        isolated_env,
        service_redis,
        tmp_path_factory,
        name="limits",
        # the chart's defaults (its workers, its limits, its probes), but for the per-user rate limit
        # of the gateway (1,200 a minute): the CPU scenarios' three users must reach the services
        overrides={"gateway": {"env": {"RATE_LIMIT_PER_SUBJECT": "1000000"}}},
        operator_env={},
        limits=True,
    ) as pods:
        yield pods


def figures(group: Cgroup) -> str:
    return (
        f"peak {group.peak_bytes / MiB:.0f} MiB of {group.limit_bytes / MiB:.0f} MiB, "
        f"failcnt {group.failcnt}, OOM kills {group.oom_kills}"
    )


def assert_within(pods: Pods, component: str, peak_bytes: int | None = None) -> None:
    """No OOM kill, alive, and the peak charge (the group's now, else ``peak_bytes``: the one a
    scenario read at its end) within :data:`MARGIN` of the limit."""
    group = pods.cgroups[component]
    process = pods.processes[component]
    peak = group.peak_bytes if peak_bytes is None else peak_bytes
    assert group.oom_kills == 0, f"{component} OOM-killed: {figures(group)}\n{process.logs()[-2000:]}"
    assert process.alive(), f"{component} exited: {figures(group)}\n{process.logs()[-2000:]}"
    assert peak <= group.limit_bytes * (1 - MARGIN), (
        f"{component}: peak {peak / MiB:.0f} MiB, {figures(group)}"
    )


def batch_token(pods: Pods) -> str:
    """The seeded batch client's token (client credentials, batch:upload)."""
    assert pods.cluster is not None
    (secret,) = [v["batch-client-secret"] for v in pods.cluster.stores.values() if "batch-client-secret" in v]
    audience = pods.containers["gateway"].env["OIDC_AUDIENCE"]
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": "timesheets-batch",
            "client_secret": secret,
            "audience": audience,
            "scope": "batch:upload",
        }
    ).encode()

    async def token() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                pods.url("identity") + "/oauth/token",
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as response,
        ):
            body = await response.json()
            assert response.status == 200, body
            return str(body["access_token"])

    return asyncio.run(token())


def largest_upload() -> bytes:
    """An upload as large as the limit lets it be: 1,000 rows whose notes are written as \\uXXXX
    escapes (what a client's json.dumps writes), padded with whitespace to just under the limit."""
    rows = [
        {"user": "alice", "date": "2047-01-01", "project": "limits", "hours": 0.25, "notes": "\u20ac" * 2000}
        for _ in range(1000)
    ]
    body = json.dumps({"entries": rows}).encode()
    assert len(body) < UPLOAD_BYTES
    return body + b" " * (UPLOAD_BYTES - len(body) - 1)


async def post_concurrently(url: str, token: str, body: bytes, count: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> int:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status
            except (TimeoutError, aiohttp.ClientError):
                return 0

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_concurrent_largest_uploads_stay_within_the_gateway_and_timesheets_limits(release: Pods) -> None:
    """One batch client, as many maximum-size uploads at once as the gateway lets one caller have in
    flight (GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT per worker, times GATEWAY_WORKERS)."""
    gateway = release.containers["gateway"].env
    count = int(gateway["GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT"]) * int(gateway["GATEWAY_WORKERS"])
    token = batch_token(release)
    for component in APP_COMPONENTS:
        release.cgroups[component].reset_peak()
    started = time.monotonic()
    statuses = asyncio.run(
        post_concurrently(release.url("gateway") + "/api/timesheets/upload", token, largest_upload(), count)
    )
    elapsed = time.monotonic() - started
    report = {c: figures(release.cgroups[c]) for c in ("gateway", "timesheets")}
    print(f"{count} uploads of {UPLOAD_BYTES} bytes in {elapsed:.1f} s: {sorted(set(statuses))} {report}")
    for component in ("gateway", "timesheets"):
        assert_within(release, component)
    assert 422 in statuses, statuses  # uploads went through to timesheets and were parsed there


def test_concurrent_largest_uploads_from_several_gateway_workers_stay_within_the_timesheets_limit(
    release: Pods,
) -> None:
    """What several gateway workers (replicas: up to gateway.autoscaling.maxReplicas) let through to one
    timesheets pod at once: each worker four of the largest uploads (GATEWAY_REQUEST_BODY_BUFFER_BYTES),
    signed as the gateway signs them; here sixteen, four workers' worth."""
    timesheets = release.containers["timesheets"].env
    signer = IdentitySigner(parse_identity_keys(timesheets["IDENTITY_KEYS_GATEWAY_TO_TIMESHEETS"]))
    gateway = release.containers["gateway"].env
    per_worker = int(gateway["GATEWAY_REQUEST_BODY_BUFFER_BYTES"]) // UPLOAD_BYTES
    count = 4 * per_worker
    batch = Identity(
        gateway["OIDC_ISSUER"].split(",")[0],
        "timesheets-batch",
        kind="client",
        client_id="timesheets-batch",
        scopes=frozenset({"batch:upload"}),
    )
    body = largest_upload()
    url = release.url("timesheets") + "/timesheets/upload"

    async def send_all() -> list[int]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

            async def one() -> int:
                headers = signer.headers(batch, method="POST", target="/timesheets/upload", body=body)
                headers["Content-Type"] = "application/json"
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        return response.status
                except (aiohttp.ClientError, TimeoutError):
                    return 0

            return list(await asyncio.gather(*(one() for _ in range(count))))

    release.cgroups["timesheets"].reset_peak()
    statuses = asyncio.run(send_all())
    print(
        f"{count} signed uploads at timesheets: {Counter(statuses)} {figures(release.cgroups['timesheets'])}"
    )
    assert_within(release, "timesheets")
    # the ones taken were parsed (422: their rows overlap one day), the others refused 503 for want of
    # room (a client still writing its body when refused may see the connection end instead)
    assert 422 in statuses, statuses


def test_every_connection_a_worker_takes_stays_within_the_limits(release: Pods) -> None:
    """MAX_CONNECTIONS_PER_WORKER connections to the gateway and to the timesheets service at once,
    each with a request head begun (the server holds its buffers until the head times out)."""
    import resource

    count = int(release.containers["gateway"].env["MAX_CONNECTIONS_PER_WORKER"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2 * count + 256:
        pytest.skip(f"this process may open {hard} files, fewer than {2 * count} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * count + 256), hard))

    async def hold(component: str) -> int:
        host, port = release.addresses[component], int(release.containers[component].env["PORT"])
        writers = []
        try:
            for _ in range(count):
                _, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET /timesheets HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4000)
                writers.append(writer)
            await asyncio.sleep(1.0)
            return len(writers)
        finally:
            for writer in writers:
                writer.close()

    for component in ("gateway", "timesheets"):
        release.cgroups[component].reset_peak()

    async def both() -> list[int]:
        return list(await asyncio.gather(hold("gateway"), hold("timesheets")))

    held = asyncio.run(both())
    print(
        f"{held} connections held: "
        + ", ".join(f"{c} {figures(release.cgroups[c])}" for c in ("gateway", "timesheets"))
    )
    for component in ("gateway", "timesheets"):
        assert_within(release, component)


# --- CPU: the probes of a busy pod held to its request ----------------------------------------------


def rendered_probes(pods: Pods, component: str) -> list[Probe]:
    assert pods.cluster is not None
    deployment = pods.cluster.find("Deployment", f"{RELEASE}-timesheets-{component}")
    pod = pod_spec(deployment)
    assert pod is not None
    (container,) = [c for c in pod["containers"] if c["name"] == component]
    ports = {p["name"]: int(p["containerPort"]) for p in container["ports"]}
    probes = []
    for kind in ("livenessProbe", "readinessProbe"):
        spec = container[kind]
        port = spec["httpGet"]["port"]
        probes.append(
            Probe(
                kind,
                spec["httpGet"]["path"],
                ports[port] if isinstance(port, str) else int(port),
                float(spec["timeoutSeconds"]),
                float(spec["periodSeconds"]),
                int(spec["failureThreshold"]),
            )
        )
    return probes


@dataclass
class Seen:
    """A probe's answers (seconds, inf: a failure) while a scenario ran: the n-th was sent
    ``n * period / PHASES`` s after the first, so every ``PHASES``-th one is what one kubelet saw."""

    probe: Probe
    answers: list[float]

    def longest_failing_run(self) -> int:
        """The most failures in a row one of the kubelets saw."""
        return longest_failing_run(self.answers)

    def could_act(self) -> bool:
        """Some kubelet probed ``failure_threshold`` times: the scenario was long enough to fail."""
        return max(len(seen) for seen in kubelets(self.answers)) >= self.probe.failure_threshold


def scenario_seconds(probes: list[Probe]) -> float:
    """How long a scenario lasts: long enough for each probe's kubelets at the first half of the
    period's phases to act (:attr:`Probe.acts_within`; the first probe may be answered before the
    trouble starts, the last one must time out before it ends)."""
    return max(p.acts_within + p.period / 2 for p in probes)


T = TypeVar("T")


def probed_during(
    address: str, probes: list[Probe], scenario: Callable[[float], T]
) -> tuple[dict[str, Seen], T]:
    """``scenario(seconds)`` run while each probe (as rendered: :func:`rendered_probes`) is sent to
    ``address`` as the kubelet sends it (:mod:`testkit.kubelet`: each kind on its own, every
    ``period`` s whatever the last one took, at :data:`PHASES` phases of the period, from a process of
    their own). What the probes saw, and what the scenario gave.

    Why each kind on its own, at its period: sent one after the other every 0.2 s, a pod answering
    nothing failed a liveness probe, then a readiness probe, in turn: two liveness failures in a row in
    the 8 s the scenarios lasted, one readiness failure, never their thresholds (3 and 2): the check
    could not fail (test_the_probe_check_fails_a_pod_that_stops_answering)."""
    with probing(address, probes) as probed:
        outcome = scenario(scenario_seconds(probes))
    return {p.kind: Seen(p, probed.answers[p.kind]) for p in probes}, outcome


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def saturate(
    request: Callable[[aiohttp.ClientSession], Awaitable[int]],
    clients: int,
    seconds: float,
    sources: list[str] | None = None,
) -> tuple[Counter[int], Counter[str]]:
    """``clients`` loops sending ``request`` back to back for ``seconds``; their statuses (0: no answer)
    and the errors of those without one. ``sources``: the client addresses the loops send from in turn
    (each its own session), else this host's."""
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    addresses: list[str | None] = [*sources] if sources else [None]
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=None if a is None else (a, 0)), timeout=timeout
        )
        for a in addresses
    ]
    try:

        async def loop(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < deadline:
                try:
                    statuses[await request(session)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[0] += 1
                    errors[type(exc).__name__] += 1

        await asyncio.gather(*(loop(sessions[i % len(sessions)]) for i in range(clients)))
    finally:
        for session in sessions:
            await session.close()
    return statuses, errors


#: the least of its request a saturated pod must have used over a scenario: less, and it was starved
#: by what else ran on this machine (a node gives a pod its request), or the load did not keep it busy
LEAST_OF_REQUEST = 0.8


@dataclass
class Load:
    """What a CPU scenario gave: the probes' answers, the load's statuses, and the pod's CPU: its
    request, the seconds it used and the CFS periods (elapsed, throttled) while the scenario ran."""

    component: str
    seen: dict[str, Seen]
    statuses: Counter[int]
    #: the kinds of error of the requests that had no answer (status 0)
    errors: Counter[str]
    request_millis: int
    seconds: float
    cpu_seconds: float
    periods: tuple[int, int]
    throttled_seconds: float
    #: the memory group's peak charge over the scenario (figures of it: read at its end)
    peak_bytes: int
    memory: str

    @property
    def share_of_request(self) -> float:
        """The CPU the pod used, as a share of its request over the scenario."""
        return self.cpu_seconds / (self.request_millis / 1000 * self.seconds)

    def report(self) -> str:
        return report(
            self.component,
            self.seen,
            self.statuses,
            (self.periods[1], self.throttled_seconds),
            (f", errors {dict(self.errors)}" if self.errors else "")
            + f"; used {self.cpu_seconds:.1f} CPU s in {self.seconds:.1f} s: {self.share_of_request:.0%} of "
            f"its request ({self.request_millis}m), throttled in {self.periods[1]} of "
            f"{self.periods[0]} periods",
        )

    def assert_saturated(self) -> None:
        """The load kept the pod at its request: throttled, and it had (nearly) all of its request."""
        assert self.periods[1] > 0, "the load did not reach the quota: the scenario proves nothing"
        assert self.share_of_request >= LEAST_OF_REQUEST, f"not held at its request: {self.report()}"


def under_load(
    pods: Pods,
    component: str,
    request: Callable[[aiohttp.ClientSession], Awaitable[int]],
    clients: int,
    sources: list[str] | None = None,
) -> Load:
    """The component held to its CPU request (the most a full node's CFS shares give it) while
    ``clients`` saturate it (:func:`saturate`); what its rendered probes saw meanwhile, and the CPU it
    had (:meth:`Load.assert_saturated`: its request, nearly all of it)."""
    group = pods.cgroups[component]
    request_millis = cpu_millis(pods.containers[component].resources["requests"]["cpu"])
    group.cpu_quota(request_millis)
    group.reset_peak()
    cpu: dict[str, tuple[float, float, tuple[int, int], float]] = {}

    def scenario(seconds: float) -> tuple[Counter[int], Counter[str]]:
        """The load, and the pod's CPU figures just before and after it (the probes sent meanwhile)."""
        cpu["before"] = (time.monotonic(), group.cpu_seconds(), group.cpu_periods(), group.throttled()[1])
        try:
            return asyncio.run(saturate(request, clients, seconds, sources))
        finally:
            cpu["after"] = (time.monotonic(), group.cpu_seconds(), group.cpu_periods(), group.throttled()[1])

    try:
        seen, (statuses, errors) = probed_during(
            pods.addresses[component], rendered_probes(pods, component), scenario
        )
        (started, used, periods, throttled), (ended, used_by_end, periods_by_end, throttled_by_end) = (
            cpu["before"],
            cpu["after"],
        )
        return Load(
            component,
            seen,
            statuses,
            errors,
            request_millis,
            ended - started,
            used_by_end - used,
            (periods_by_end[0] - periods[0], periods_by_end[1] - periods[1]),
            throttled_by_end - throttled,
            group.peak_bytes,
            figures(group),
        )
    finally:
        group.cpu_quota(None)


def report(
    component: str,
    seen: dict[str, Seen],
    statuses: Counter[int],
    throttled: tuple[int, float],
    cpu: str = "",
) -> str:
    lines = [
        f"{component}: load {dict(statuses)}, throttled {throttled[0]} periods / {throttled[1]:.1f} s{cpu}"
    ]
    for kind, probed in seen.items():
        values = probed.answers
        answered = [v for v in values if v != math.inf]
        lines.append(
            f"  {kind}: {len(values)} probes ({PHASES} kubelets), failed {len(values) - len(answered)}, "
            f"p50 {statistics.median(answered) if answered else math.inf:.3f} s, "
            f"p99 {p99(values):.3f} s, most failures in a row {probed.longest_failing_run()} "
            f"(threshold {probed.probe.failure_threshold})"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tokens(release: Pods) -> list[str]:
    """The demo users' tokens (each its own rate limit at the gateway)."""

    async def signed_in() -> list[str]:
        identity = release.url("identity")
        out = []
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            for who in ("alice", "bob", "carol"):
                browser = Browser(identity, session)
                answer = await sign_in_tokens(browser, session, identity, who, scope="openid read:timesheets")
                out.append(answer["access_token"])
                session.cookie_jar.clear()
        return out

    return asyncio.run(signed_in())


def listing(pods: Pods, tokens: list[str]) -> Callable[[aiohttp.ClientSession], Awaitable[int]]:
    """The largest page of the timesheets list through the gateway, the users taking turns."""
    url = pods.url("gateway") + "/api/timesheets?limit=100"
    turn = iter(range(1 << 62))

    async def request(session: aiohttp.ClientSession) -> int:
        token = tokens[next(turn) % len(tokens)]
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            return response.status

    return request


def failing_probes(seen: dict[str, Seen]) -> list[str]:
    """The probes on which a kubelet would have acted: ``failure_threshold`` failures in a row."""
    return [
        kind
        for kind, probed in seen.items()
        if probed.longest_failing_run() >= probed.probe.failure_threshold
    ]


def assert_probes_hold(component: str, seen: dict[str, Seen]) -> None:
    for probed in seen.values():
        assert probed.could_act(), f"{component}: too short to fail {probed.probe}"
    assert not failing_probes(seen), (component, {k: (s.probe, s.answers) for k, s in seen.items()})


# --- the scenarios: two rounds of ~30 s, each scenario beside those that share no pod with it ---------
#
# Each scenario lasts what the kubelet needs to act at the chart's liveness probe (27 s), and one after
# another they took four times 28 s. Scenarios that share no pod run at once: each pod is held to its
# request by its own group's quota, and Load.assert_saturated holds that it did get (nearly) all of it
# (round one's pods ask for 350m of the two cores), so a scenario beside it took nothing from it.
# Round one: the gateway (its load's API half goes to timesheets, unquota'd) beside identity (its
# tokens are signed in beforehand: the gateway does not call it meanwhile). Round two: timesheets
# (through the gateway, unquota'd) beside the two negative cases, which use no CPU: approvals stopped,
# and a stand-in answering late. The probes come from a process of their own (testkit.kubelet):
# two loads in this process do not delay them.


def concurrently(**scenarios: Callable[[], object]) -> dict[str, object]:
    """Each scenario in a thread of its own, all at once; what each gave, or the exception it raised."""
    outcomes: dict[str, object] = {}

    def run(name: str, scenario: Callable[[], object]) -> None:
        try:
            outcomes[name] = scenario()
        except BaseException as exc:  # re-raised by the test that reads it
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in scenarios.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def outcome(outcomes: dict[str, object], name: str, kind: type[T]) -> T:
    value = outcomes[name]
    if isinstance(value, BaseException):
        raise value
    assert isinstance(value, kind), value
    return value


def spa(pods: Pods) -> Callable[[aiohttp.ClientSession], Awaitable[int]]:
    """The SPA's page: served by the gateway alone (no upstream), so the gateway is the one busy."""
    url = pods.url("gateway") + "/"

    async def request(session: aiohttp.ClientSession) -> int:
        async with session.get(url) as response:
            await response.read()
            return response.status

    return request


def gateway_saturated(pods: Pods, tokens: list[str]) -> Load:
    """Half the clients on the SPA (the gateway's own work), half on the API (forwarded)."""
    page, api = spa(pods), listing(pods, tokens)
    turn = iter(range(1 << 62))

    async def request(session: aiohttp.ClientSession) -> int:
        return await (page if next(turn) % 2 else api)(session)

    return under_load(pods, "gateway", request, CLIENTS)


def identity_saturated(pods: Pods) -> Load:
    """Token requests with a wrong client secret: each an Argon2 verification (HASHES_AT_ONCE threads).
    Each client sends from an address of its own: one address's failed client authentications are
    throttled after CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS (30), and the rest of the scenario would be
    cheap 429s, not Argon2."""
    url = pods.url("identity") + "/oauth/token"
    form = {"grant_type": "client_credentials", "client_id": "timesheets-batch", "client_secret": "wrong"}

    async def request(session: aiohttp.ClientSession) -> int:
        async with session.post(url, data=form) as response:
            await response.read()
            return response.status

    clients = 16
    sources = [f"127.0.77.{i + 1}" for i in range(clients)]
    return under_load(pods, "identity", request, clients, sources)


@dataclass
class Stopped:
    """What the probes saw of a pod whose processes were stopped, and whether it came back."""

    seen: dict[str, Seen]
    ready_again: bool


def stopped_pod(pods: Pods, component: str) -> Stopped:
    """The pod's processes stopped (SIGSTOP: the kernel still accepts the probes' connections,
    nothing answers) while its rendered probes are sent; then continued."""
    pids = pods.cgroups[component].pids()
    assert pids

    def stopped(seconds: float) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the scenario: a pod answering nothing for that long
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    seen, _ = probed_during(pods.addresses[component], rendered_probes(pods, component), stopped)
    ready = wait_for(lambda: ready_or_gone(pods.processes[component], pods.url(component)), 30, "ready again")
    return Stopped(seen, bool(ready) and pods.processes[component].alive())


#: how much later than its probe's timeout :func:`late_answers` completes the answer's head
LATE_BY = 0.3


def late_answers(probes: list[Probe]) -> dict[str, Seen]:
    """The probes sent to a stand-in that answers each 200, but :data:`LATE_BY` s after the probe's
    timeout: the status line at once, then a header every tenth of the timeout until then (no read
    waits as long as the timeout: only the whole answer is late, which the kubelet counts too)."""
    timeouts = {p.path: p.timeout for p in probes}

    class Late(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            started = time.monotonic()
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode()
            until = started + timeouts[path] + LATE_BY
            try:
                self.request.sendall(b"HTTP/1.1 200 OK\r\n")
                while time.monotonic() < until:
                    time.sleep(timeouts[path] / 10)
                    self.request.sendall(b"X-Still-Coming: 1\r\n")
                self.request.sendall(b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass  # the probe gave up

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", 0), Late) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            port = server.server_address[1]
            moved = [Probe(p.kind, p.path, port, p.timeout, p.period, p.failure_threshold) for p in probes]
            seen, _ = probed_during("127.0.0.1", moved, time.sleep)
        finally:
            server.shutdown()
    return seen


@pytest.fixture(scope="module")
def gateway_and_identity(release: Pods, tokens: list[str]) -> dict[str, object]:
    return concurrently(
        gateway=lambda: gateway_saturated(release, tokens), identity=lambda: identity_saturated(release)
    )


@pytest.fixture(scope="module")
def timesheets_and_failing_pods(release: Pods, tokens: list[str]) -> dict[str, object]:
    probes = rendered_probes(release, "approvals")
    return concurrently(
        timesheets=lambda: under_load(release, "timesheets", listing(release, tokens), CLIENTS),
        stopped=lambda: stopped_pod(release, "approvals"),
        late=lambda: late_answers(probes),
    )


def test_the_probe_check_fails_a_pod_that_stops_answering(
    timesheets_and_failing_pods: dict[str, object],
) -> None:
    """The check itself: a pod whose processes are stopped fails both its probes as the kubelet
    counts them, and is ready again once continued."""
    stopped = outcome(timesheets_and_failing_pods, "stopped", Stopped)
    print(report("approvals (stopped)", stopped.seen, Counter(), (0, 0.0)))
    assert sorted(failing_probes(stopped.seen)) == ["livenessProbe", "readinessProbe"], stopped.seen
    with pytest.raises(AssertionError):
        assert_probes_hold("approvals", stopped.seen)
    assert stopped.ready_again


def test_the_probe_check_fails_a_pod_that_answers_after_the_timeout(
    timesheets_and_failing_pods: dict[str, object],
) -> None:
    """The check itself: answers that come, 200, but LATE_BY s after the probe's timeout (each read
    well within it) fail both probes, as the kubelet counts them (its timeout is the whole answer's)."""
    seen = outcome(timesheets_and_failing_pods, "late", dict)
    print(report("approvals' probes, answered late", seen, Counter(), (0, 0.0)))
    assert sorted(failing_probes(seen)) == ["livenessProbe", "readinessProbe"], seen
    with pytest.raises(AssertionError):
        assert_probes_hold("approvals", seen)


def check_held(load: Load, pods: Pods) -> None:
    print(load.report())
    load.assert_saturated()
    assert_probes_hold(load.component, load.seen)
    print("  memory:", load.memory)
    assert_within(pods, load.component, load.peak_bytes)


def test_gateway_probes_answer_while_it_is_saturated_at_its_cpu_request(
    release: Pods, gateway_and_identity: dict[str, object]
) -> None:
    check_held(outcome(gateway_and_identity, "gateway", Load), release)


def test_timesheets_probes_answer_while_listings_saturate_it_at_its_cpu_request(
    release: Pods, timesheets_and_failing_pods: dict[str, object]
) -> None:
    check_held(outcome(timesheets_and_failing_pods, "timesheets", Load), release)


def test_identity_probes_answer_while_argon2_saturates_it_at_its_cpu_request(
    release: Pods, gateway_and_identity: dict[str, object]
) -> None:
    load = outcome(gateway_and_identity, "identity", Load)
    assert set(load.statuses) == {401}, f"not Argon2 throughout: {load.statuses}"
    check_held(load, release)
