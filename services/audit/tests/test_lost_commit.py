"""Ingest answers what really happened when Postgres's connection breaks around COMMIT: accepted when
the lost COMMIT had committed (the events are on the chain), 503 ``not_stored`` when it had not (a
relay resends; the events are recorded once either way). Both ways a group is appended: in one
statement in autocommit (``append_documents``, the usual one) and in a transaction holding the lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from audit import store
from audit.app import create_app
from audit.settings import AuditSettings
from svckit.settings import load_settings

from testkit.client import SignedApi, ingest_counts
from testkit.fixtures import Caller, TcpProxy, runtime_url, serve_app

from .conftest import TIMESHEETS, wait_ready
from .test_ingest import stored


@pytest.fixture(scope="module")
async def rig(
    audit_schema: str, service_env: dict[str, str], caller: Caller
) -> AsyncIterator[tuple[TcpProxy, SignedApi]]:
    proxy = TcpProxy.for_postgres(audit_schema)
    await proxy.start()
    env = {**service_env, "DATABASE_URL": proxy.url_for(runtime_url(audit_schema, "audit"))}
    settings = load_settings(AuditSettings, env=env, audit_verify_interval_seconds=0)
    async with serve_app(create_app(settings)) as url:
        await wait_ready(url)
        client = SignedApi(url, caller)
        yield proxy, client
        await client.close()
    await proxy.cut()


@pytest.mark.parametrize("path", ["at_once", "locked"])
@pytest.mark.parametrize("when", ["after", "before"])
async def test_ingest(
    rig: tuple[TcpProxy, SignedApi],
    audit_schema: str,
    new_event: Any,
    when: Literal["before", "after"],
    path: Literal["at_once", "locked"],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, api = rig
    # the process knows the head once it appended: the next group goes in one statement
    warm = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": [new_event()]})
    assert warm.status == 200, warm.text
    if path == "locked":
        monkeypatch.setattr(store, "AT_ONCE_ATTEMPTS", 0)
    events = [new_event() for _ in range(3)]
    # the cut waits for a connection that sent this group's data (in the statement's parameters)
    marker = events[0]["resource"]["id"].encode()
    done = proxy.cut_at_commit(when, after_sending=marker, autocommit=path == "at_once")
    reply = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
    assert done.is_set()
    ids = [event["id"] for event in events]
    if when == "after":
        assert reply.status == 200, reply.text
        assert ingest_counts(reply.body) == {"accepted": 3, "duplicates": 0}
        assert len(await stored(audit_schema, ids)) == 3
    else:
        assert reply.status == 503, reply.text
        assert reply.body["outcome"] == "not_stored"
        assert await stored(audit_schema, ids) == []
        again = await api.call("POST", "/internal/events", TIMESHEETS, json={"events": events})
        assert ingest_counts(again.body) == {"accepted": 3, "duplicates": 0}
