"""A service process imports its code with the collector's service thresholds (svckit.collector).

With the interpreter's defaults, importing a service ran some 180-200 collections that freed nothing
(0.06-0.18 s of CPU of each start). Counted, not timed: the number of collections an import runs does
not depend on the machine's load.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from svckit.collector import GC_THRESHOLDS

#: collections while importing a service with GC_THRESHOLDS: ~20 (all of the youngest generation);
#: with the interpreter's defaults, 180-210
MAX_COLLECTIONS = 60

#: what an entry point runs before argparse answers ``--help``: all of the service's imports
ENTRY = """
import gc, sys
sys.argv = [{name!r}, "--help"]
try:
    import {name}.__main__
except SystemExit:
    pass
print("THRESHOLDS", gc.get_threshold(), sum(s["collections"] for s in gc.get_stats()), file=sys.stderr)
"""


def _report(result: subprocess.CompletedProcess[str]) -> tuple[tuple[int, ...], int]:
    line = next(line for line in result.stderr.splitlines() if line.startswith("THRESHOLDS"))
    thresholds, collections = line.removeprefix("THRESHOLDS ").rsplit(" ", 1)
    return tuple(int(t) for t in thresholds.strip("()").split(", ")), int(collections)


@pytest.mark.parametrize("name", ["gateway", "timesheets", "approvals", "audit", "identity"])
def test_an_entry_point_imports_its_service_with_the_service_thresholds(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", ENTRY.format(name=name)],
        # the gateway's entry point clears the directory of its multiprocess metrics files
        env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    thresholds, collections = _report(result)
    assert thresholds == GC_THRESHOLDS, result.stderr[-2000:]
    assert collections <= MAX_COLLECTIONS, result.stderr[-2000:]
