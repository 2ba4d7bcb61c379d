"""The kubelet's probes of a pod, sent from a process of their own (the pods' checks under their
limits, tests/packaging/test_pods_under_limits.py, and identity's sign-in storm).

Each probe kind is sent on its own, every ``period`` s whatever the last one took (each probe its own
thread, with its ``timeout``), at :data:`PHASES` phases of the period: ten kubelets, each starting at
another moment. Why a process of their own: the kubelet is one, and a probe's answer is timed where it
is sent. Sent from the test's process, a probe waited for the interpreter's lock behind the load the
test generates (64 clients on one event loop, or two loads at once): its time was partly the test's.
"""

from __future__ import annotations

import http.client
import itertools
import math
import multiprocessing
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

#: kubelets per probe, each at another phase of the period (a pod's kubelet starts at any moment)
PHASES = 10


@dataclass(frozen=True)
class Probe:
    """A probe as rendered: the kubelet GETs ``path`` on ``port`` every ``period`` s and counts an
    answer later than ``timeout`` s as a failure; ``failure_threshold`` in a row restart the pod
    (liveness) or take it out of its Service (readiness)."""

    kind: str
    path: str
    port: int
    timeout: float
    period: float
    failure_threshold: int

    @property
    def acts_within(self) -> float:
        """The shortest time in which a kubelet that starts probing as the trouble starts can act:
        ``failure_threshold`` probes one ``period`` apart, the last one's ``timeout``."""
        return (self.failure_threshold - 1) * self.period + self.timeout


def kubelets(answers: list[float]) -> list[list[float]]:
    """One probe kind's answers in the order sent (:func:`send_probes`), split by the kubelet that sent
    them: every :data:`PHASES`-th one is one kubelet's."""
    return [answers[phase::PHASES] for phase in range(PHASES)]


def longest_failing_run(answers: list[float]) -> int:
    """The most failures (``inf``) in a row one kubelet saw among ``answers`` (:func:`kubelets`)."""
    longest = 0
    for seen in kubelets(answers):
        run = 0
        for value in seen:
            run = run + 1 if value == math.inf else 0
            longest = max(longest, run)
    return longest


def probe_once(address: str, probe: Probe) -> float:
    """Seconds the probe took to be answered 200, as the kubelet waits for it (inf: a failure)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(address, probe.port, timeout=probe.timeout)
    try:
        connection.request("GET", probe.path, headers={"User-Agent": "kube-probe/1.30"})
        status = connection.getresponse().status
    except OSError:
        return math.inf
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    return elapsed if status == 200 and elapsed <= probe.timeout else math.inf


def send_probes(address: str, probes: list[Probe], busy: Event) -> dict[str, list[float]]:
    """Each probe sent as the kubelets send it while ``busy`` is set; each kind's answers in the order
    sent (the n-th ``n * period / PHASES`` s after the first)."""
    answers: dict[str, dict[int, float]] = {p.kind: {} for p in probes}

    def sending(probe: Probe) -> None:
        step = probe.period / PHASES
        first = time.monotonic()
        sent: list[threading.Thread] = []

        def send(n: int) -> None:
            answers[probe.kind][n] = probe_once(address, probe)

        for n in itertools.count():
            wait = first + n * step - time.monotonic()
            if busy.is_set() and wait > 0:
                time.sleep(wait)  # the kubelet's ticker
            if not busy.is_set():
                break
            thread = threading.Thread(target=send, args=(n,), daemon=True)
            thread.start()
            sent.append(thread)
        for thread in sent:
            thread.join()

    senders = [threading.Thread(target=sending, args=(probe,)) for probe in probes]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    return {kind: [seen[n] for n in sorted(seen)] for kind, seen in answers.items()}


def _kubelet(address: str, probes: list[Probe], busy: Event, results: Connection) -> None:
    results.send("probing")
    results.send(send_probes(address, probes, busy))
    results.close()


@dataclass
class Probing:
    """The probes being sent (:func:`probing`); :attr:`answers` once it ends."""

    answers: dict[str, list[float]]


@contextmanager
def probing(address: str, probes: list[Probe]) -> Iterator[Probing]:
    """The probes sent to ``address`` from a process of their own for as long as the block runs."""
    context = multiprocessing.get_context("spawn")
    busy = context.Event()
    busy.set()
    results, theirs = context.Pipe(duplex=False)
    process = context.Process(target=_kubelet, args=(address, probes, busy, theirs), daemon=True)
    process.start()
    theirs.close()
    outcome = Probing({})
    try:
        if not results.poll(60):
            raise TimeoutError("the probes' process did not start within 60 s")
        assert results.recv() == "probing"
        yield outcome
    finally:
        busy.clear()
        try:
            if results.poll(max(p.timeout for p in probes) + 30):
                outcome.answers = results.recv()
        finally:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    if not outcome.answers:
        raise RuntimeError(f"the probes' process gave no answers (exit code {process.exitcode})")
