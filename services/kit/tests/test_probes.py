"""The kubelet's probes on the metrics listener (svckit.probes): answered beside the event loop, from
what the workers' loops publish, and still failing when the pod is really stuck or really not ready.

The probes answered by a busy loop timed out under a storm at the pod's CPU request (the identity
provider's sign-in storm: services/identity/tests/test_signin_burst.py asserts they now hold); these
tests hold that the new answers do not lie: a loop that stops beating fails liveness, a dependency
that is down fails readiness."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from svckit.watchdog import BEAT_SECONDS

from testkit.fixtures import REPO_ROOT, ServiceProcess, free_port
from testkit.workers import worker_pids

T = TypeVar("T")
#: the sample app's liveness bound on a silent loop (a service's is probes.LIVENESS_SILENCE_SECONDS,
#: 10 s): long beside the 0.25 s beat of a loop that runs, even on a loaded host, short for the suite
SILENCE = 3.0


def probe(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, object]]:
    """The status and JSON body of ``path`` on the metrics listener at ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if exc.code == 503 else {"body": body.decode()}


def until(condition: str, check: Callable[[], T | None], seconds: float) -> T:
    """Wait for ``check()`` to give something true, at most ``seconds``; what it gave."""
    deadline = time.monotonic() + seconds
    while True:
        seen = check()
        if seen or time.monotonic() > deadline:
            assert seen, f"not {condition} within {seconds} s"
            return seen
        time.sleep(0.1)


@contextlib.contextmanager
def sample(workers: int, **environ: str) -> Iterator[tuple[int, int, int]]:
    """The sample app (testkit.sampleapp) with ``workers`` workers and the kit's metrics listener:
    (its port, its metrics port, its pid), once its liveness probe passes."""
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "SAMPLEAPP_METRICS_PORT": str(metrics),
        "SAMPLEAPP_LIVENESS_SILENCE_SECONDS": str(SILENCE),
        **environ,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.sampleapp", str(port), str(workers)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )

    def live() -> bool:
        try:
            return probe(metrics, "/healthz")[0] == 200
        except OSError:
            return False

    try:
        until("live", live, 30)
        yield port, metrics, process.pid
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def block(port: int, seconds: float, how: str = "sleep", release: Path | None = None) -> threading.Thread:
    """``GET /block`` in a thread: the worker's event loop stops for ``seconds``, or until the file
    ``release`` exists (the test has seen what it waited for)."""
    query = urllib.parse.urlencode(
        {"s": seconds, "how": how, **({"release": str(release)} if release else {})}
    )

    def send() -> None:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/block?{query}", timeout=seconds + 30).read()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["sleep", "spin"])
def test_liveness_fails_while_the_only_workers_loop_is_stuck_and_passes_again_after(
    how: str, tmp_path: Path
) -> None:
    """One worker whose event loop is blocked (a blocking C call, or Python that never yields): the
    metrics listener still answers — a thread — but liveness turns 503 once the loop has not beaten
    for the bound (``LIVENESS_SILENCE_SECONDS``; :data:`SILENCE` here), and 200 again once it runs
    (fails if liveness were answered by the listener whatever the loop does)."""
    stuck_for = SILENCE + 6
    with sample(1) as (port, metrics, _):
        status, body = probe(metrics, "/healthz")
        assert status == 200, body
        started = time.monotonic()
        release = tmp_path / "release"
        blocked = block(port, stuck_for, how, release)

        def failing() -> dict[str, object] | None:
            status, body = probe(metrics, "/healthz", timeout=5)
            return body if status == 503 else None

        body = until("failing", failing, stuck_for)
        assert body["status"] == "stuck", body
        # not before the bound (from the loop's last beat, up to a beat before the block): a loop late
        # by less is busy, not stuck
        assert time.monotonic() - started >= SILENCE - 2 * BEAT_SECONDS
        release.touch()  # seen failing: the loop runs again now, not at the end of stuck_for
        blocked.join()
        until("live again", lambda: probe(metrics, "/healthz")[0] == 200, 10)


def test_with_several_workers_liveness_fails_only_once_none_beats() -> None:
    """Two workers under the supervisor, whose metrics listener answers the probes from their
    heartbeats: both stopped (SIGSTOP; the supervisor still runs, its watchdog's bound set beyond
    the test) fail liveness once the bound has passed; one of them continued, liveness passes, and
    keeps passing past the bound while the other stays stopped (a stuck worker among several is the
    watchdog's to kill, not the kubelet's: the pod is not restarted for it)."""
    with sample(2, WORKER_STUCK_SECONDS="300") as (_, metrics, pid):
        workers = sorted(worker_pids(pid))
        assert len(workers) == 2, workers
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
        try:
            started = time.monotonic()

            def failing() -> dict[str, object] | None:
                status, body = probe(metrics, "/healthz", timeout=5)
                return body if status == 503 else None

            assert until("failing", failing, SILENCE + 6)["status"] == "stuck"
            assert time.monotonic() - started >= SILENCE - 2 * BEAT_SECONDS
            os.kill(workers[1], signal.SIGCONT)  # one of the two beats again: live
            until("live again", lambda: probe(metrics, "/healthz")[0] == 200, 10)
            # and stays so for longer than the bound, the other still stopped
            deadline = time.monotonic() + SILENCE + 2
            while time.monotonic() < deadline:
                status, body = probe(metrics, "/healthz", timeout=5)
                assert status == 200, body
                time.sleep(0.5)
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGCONT)


def test_readiness_follows_the_workers_checks(service_env: dict[str, str]) -> None:
    """A real service whose database is down (nothing listens where DATABASE_URL points): the
    readiness probe on the metrics listener fails, naming the worker's checks as failed, while
    liveness passes (the loop runs); with its database up, both pass."""
    with ServiceProcess("audit", service_env).start(wait_path="/readyz") as service:
        port = service.metrics_port
        until("ready", lambda: probe(port, "/readyz")[0] == 200, 10)
        assert probe(port, "/healthz")[0] == 200
    down = {**service_env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/test"}
    with ServiceProcess("audit", down).start(wait_path="/healthz") as service:
        port = service.metrics_port
        # the public /readyz says so too: the same checks
        with pytest.raises(urllib.error.HTTPError) as public:
            urllib.request.urlopen(service.url + "/readyz", timeout=5)
        assert public.value.code == 503

        def published() -> dict[str, object] | None:
            status, body = probe(port, "/readyz")
            assert status == 503, body
            return body if body["workers"] != ["not yet"] else None

        body = until("published", published, 10)
        assert body == {"status": "not ready", "workers": ["failed"]}, body
        assert probe(port, "/healthz")[0] == 200
