"""``python -m bench [name ...]`` (what ``make bench`` runs): every benchmark module, one after another.

Benchmarks are not tests: they print figures (throughput, p50/p99, ratio to a baseline measured in
the same run) and write them under ``bench/results/``; nothing here asserts a timing.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def discover() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(HERE)])
        if not info.name.startswith("_") and info.name not in {"common"}
    )


def main(argv: list[str]) -> int:
    names = argv or discover()
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        run = getattr(module, "main", None)
        if run is None:
            continue
        print(f"\n=== bench/{name}.py ===", flush=True)
        started = time.monotonic()
        try:
            code = run()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            print(f"bench/{name}.py failed: {type(exc).__name__}: {exc}", flush=True)
            code = 1
        print(f"=== bench/{name}.py done in {time.monotonic() - started:.0f}s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
