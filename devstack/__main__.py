"""``python -m devstack`` (what ``make dev`` runs): the whole platform until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

from .platform import Platform, die_with_parent


def main() -> int:
    # `make` does not forward SIGTERM to its recipe; dying with our parent covers `kill <make>`.
    die_with_parent()
    state_dir = os.environ.get("DEVSTACK_STATE_DIR")
    platform = Platform(
        os.environ,
        state_dir=Path(state_dir) if state_dir else None,
        prometheus=os.environ.get("DEV_PROMETHEUS") == "1",
    )

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        platform.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        platform.start()
        print(platform.banner(), flush=True)
        code = platform.wait()
    except RuntimeError as exc:
        print(f"devstack: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        platform.log("devstack", "stopping every service")
        platform.stop()
        platform.log("devstack", "stopped")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
