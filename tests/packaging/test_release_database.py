"""The release the packaging tests run as processes (release.running_release) reaches the session's
Postgres where that server listens: its name, its port.

CI's ``DATABASE_URL`` names port 5432, the chart's default ``externalDatabase.port``, so the pods'
tests pass there whether the port is handed on or not. ``make test`` without ``DATABASE_URL`` (a
fresh machine) runs against the embedded Postgres, on a loopback port of its own: the runtime roles'
URLs the chart built still named 5432 (another server, or none), and the embedded server's first URL,
a Unix socket's, had no port at all (``migrate-identity exited 2``). This checks the wiring against a
URL on another port, without starting anything.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.packaging.release import database_wiring
from tests.packaging.support import MINIMAL, Obj, deep_merge, render

SESSION = "postgresql://postgres@127.0.0.1:5434/tsp_session_db"


def database_urls(objects: list[Obj]) -> dict[str, str]:
    """Every ``postgresql://`` URL in the Secrets (secret/key → URL)."""
    urls: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] != "Secret":
            continue
        data: dict[str, Any] = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        for key, value in data.items():
            if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
                urls[f"{obj['metadata']['name']}/{key}"] = value
    return urls


def test_every_database_url_of_the_pods_names_the_sessions_server() -> None:
    wiring = database_wiring(SESSION)
    urls = database_urls([*render(deep_merge(MINIMAL, wiring.values)), wiring.operator_secret])
    # the owner's (the migration Job's) and each service's runtime role's
    assert len(urls) >= 5, urls
    for key, url in urls.items():
        parts = urlsplit(url)
        where = (key, parts.hostname, parts.port, parts.path)  # not the URL: it holds a password
        assert parts.hostname in wiring.hosts, where
        reached = (wiring.hosts[parts.hostname], parts.port, parts.path)
        assert reached == ("127.0.0.1", 5434, "/tsp_session_db"), where


def test_a_socket_url_cannot_be_handed_to_the_pods() -> None:
    with pytest.raises(ValueError, match="not a socket"):
        database_wiring("postgresql://postgres:@/postgres?host=/tmp/pg")
