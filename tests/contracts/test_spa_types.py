"""The SPA's API types (spa/src/api/schema.d.ts) are generated from the published OpenAPI document
by openapi-typescript (``npm run gen:api --prefix spa``); this regenerates them into a temporary file
and fails when the committed ones are stale."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPA = REPO / "spa"
COMMITTED = SPA / "src" / "api" / "schema.d.ts"


def ensure_node_modules() -> None:
    """``make test`` may run before ``make spa``: install the locked packages as ``make spa`` does."""
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is needed: Node.js 20 and npm (see README)"
    if not (SPA / "node_modules" / "openapi-typescript").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(SPA)], check=True, timeout=600
        )


def test_committed_api_types_match_the_published_document(tmp_path: Path) -> None:
    ensure_node_modules()
    fresh = tmp_path / "schema.d.ts"
    result = subprocess.run(
        ["node", str(SPA / "scripts" / "gen-api.mjs"), "--out", str(fresh)],
        cwd=SPA,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected, committed = fresh.read_text(), COMMITTED.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            "spa/src/api/schema.d.ts (committed)",
            "generated now",
            n=1,
        )
    )
    assert not diff, f"the SPA's API types are stale: run `npm run gen:api --prefix spa`\n{diff[:4000]}"
