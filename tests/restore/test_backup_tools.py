"""testkit.backup picks the client tools of the server's major version without asking again for every
dump and restore: the server's version once per server, each binary's ``--version`` once per binary."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from testkit import backup
from testkit.fixtures import IsolatedEnv


def test_the_versions_are_asked_once_and_the_right_major_still_chosen(
    isolated_env: IsolatedEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two databases of one server, dumped and restored twice each: only the first choice of a tool
    runs ``psql`` and ``--version``; every choice is a ``pg_dump`` of the server's major version."""
    urls = [isolated_env(name)["DATABASE_URL"] for name in ("tools_a", "tools_b")]
    run = subprocess.run
    asked: list[list[str]] = []

    def counting(args: list[str], *rest: Any, **kwargs: Any) -> Any:
        if "--version" in args or "SHOW server_version_num" in args:
            asked.append(args)
        return run(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)  # testkit.backup calls it as subprocess.run
    for url in urls * 2:
        path = backup.dump_schema(url, "public", tmp_path / "public.dump")
        backup.restore_schema(url, path)
    first = len(asked)
    for url in urls:
        backup.restore_schema(url, backup.dump_schema(url, "public", tmp_path / "again.dump"))
    assert len(asked) == first <= 1 + len(backup._client_dirs())
    server = run(
        ["psql", "-Atc", "SHOW server_version_num", urls[0]], capture_output=True, text=True, check=True
    ).stdout
    chosen = run([backup._tool("pg_dump", urls[1]), "--version"], capture_output=True, text=True, check=True)
    assert backup._major(chosen.stdout) == backup._major(server.strip())
