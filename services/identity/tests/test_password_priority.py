"""The Argon2 threads yield the CPU to the event loop (identity.passwords).

At its CPU request (100m) the provider's four hashing threads and the event loop share the quota as
equals: the loop had a fifth of it, and ``/readyz`` took up to 1.9 s of its 3 s timeout under a burst
of wrong client secrets (2.8 s on a busier host; the kubelet's two failures in a row take the
provider out of its Service). At the lowest priority the hashing threads get what the loop leaves.
tests/packaging/test_pods_under_limits.py holds the pod to its request under that burst.
"""

from __future__ import annotations

import os
import threading

import pytest
from identity import passwords

pytestmark = pytest.mark.unit


def test_hashing_threads_run_at_the_lowest_priority_and_the_caller_keeps_its_own() -> None:
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    stored = passwords.hash_secret("secret")
    assert passwords.verify_secret(stored, "secret")
    assert passwords._pool is not None
    threads = list(passwords._pool[1]._threads)
    assert threads
    for thread in threads:
        assert thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == passwords.HASHING_NICENESS == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
