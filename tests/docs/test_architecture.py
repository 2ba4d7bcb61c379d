"""docs/ARCHITECTURE.md stays true: the commands it gives name files that exist, and the request path
it describes is the order in which the edge really runs its stages."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def command_paths() -> list[str]:
    """Paths in the shell blocks and in the inline ``pytest …`` commands."""
    commands = [
        line.split("#")[0]
        for block in re.findall(r"```sh\n(.*?)```", DOC, re.S)
        for line in block.splitlines()
    ]
    commands += re.findall(r"`(pytest [^`]+)`", DOC)
    return [
        word
        for command in commands
        for word in command.split()
        if "/" in word and not word.startswith(("-", "/"))
    ]


def test_every_command_names_files_that_exist() -> None:
    paths = [path for path in command_paths() if "<" not in path and not path.startswith(".venv/")]
    assert paths, "the page gives no commands"
    missing = [path for path in paths if not list(ROOT.glob(path))]
    assert missing == []


def test_every_file_in_the_contract_table_exists() -> None:
    table = DOC[DOC.index("## Where each contract lives") : DOC.index("## Time and background work")]
    named = re.findall(r"`((?:services|tests|docs)/[^`* ]+|svckit/[^` ]+)`", table)
    assert len(named) > 5
    missing = []
    for path in named:
        path = path.removesuffix("/")
        candidates = [ROOT / path, ROOT / "services" / "kit" / path]
        if not any(list(ROOT.glob(str(c.relative_to(ROOT)))) for c in candidates):
            missing.append(path)
    assert missing == []


def test_the_request_path_is_the_order_the_edge_runs_its_stages() -> None:
    from gateway.edge import Edge

    described = re.findall(r"^\d+\. \*\*(\w[\w ]*)\*\*", DOC, re.M)
    assert described == [
        "Preflight",
        "Target",
        "Route",
        "Credentials",
        "Authenticate",
        "Possession",
        "Authorize",
        "Rate limit",
        "Body",
        "Forward",
    ]
    source = inspect.getsource(Edge._handle)
    calls = [
        "self.preflight(",
        "check_target(",
        "self.router(",
        "self.credentials(",
        "self.authenticate.",
        "self.possession(",
        "authorize(",
        "self.rate_limit(",
        "self.body.",
        "self.forward(",
    ]
    positions = [source.index(call) for call in calls]
    assert positions == sorted(positions)
