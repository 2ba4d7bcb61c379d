"""A process whose wall clock is off, for real: libfaketime (Debian's ``libfaketime``, installed by
``make system-deps``) preloaded into a service started by the tests.

Why: "NTP broke on one node" cannot be tested with an injected :class:`svckit.clock.Clock` — the
point is what the *other* processes make of one process's clock, over the wire (signed identity
timestamps, token ``iat`` / ``exp``). With ``LD_PRELOAD=libfaketime.so.1 FAKETIME=+120s`` every
``clock_gettime(CLOCK_REALTIME)`` of that process (Python's :func:`time.time`, asyncpg's, the
libraries') is 120 s ahead; ``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves the monotonic clock alone, so
asyncio's timers run as usual.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: where Debian puts it (the multiarch directory of this machine first)
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)


def library() -> str | None:
    """The path of ``libfaketime.so.1``, or None when it is not installed."""
    return next((path for path in CANDIDATES if Path(path).exists()), None)


def require() -> str:
    """The library, or the test is skipped — failed under CI, which installs it (``make system-deps``)."""
    path = library()
    if path is None:
        message = "libfaketime is not installed (make system-deps installs Debian's libfaketime)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def skewed_env(seconds: int) -> dict[str, str]:
    """The environment that starts a process with its wall clock ``seconds`` off (ahead when positive)."""
    return {
        "LD_PRELOAD": require(),
        "FAKETIME": f"{seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def measured_offset(seconds: int) -> float:
    """How far :func:`skewed_env` really moves a Python process's :func:`time.time` (checked by the tests
    that use it: a library that silently did nothing would make them pass for the wrong reason)."""
    code = "import time; a = time.monotonic(); print(time.time()); print(time.monotonic() - a)"
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **skewed_env(seconds)},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    after = time.time()
    return float(out[0]) - (before + after) / 2
