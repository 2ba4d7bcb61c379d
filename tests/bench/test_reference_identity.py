"""The benchmarks' ``reference_identity`` case measures what it says: the reference app honouring the
identity contract refuses an unsigned request, a signature by another key and a signed request sent
twice, and answers signed ones, its approvals routes calling its internal timesheets routes signed as
``service:approvals`` (a decision goes through all three gates); the plain reference answers without
any of that. The benchmark's own check before its load (:func:`bench.api.refuses_unsigned`) tells the
two apart."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench._backing import fresh_database
from bench.api import refuses_unsigned, start_reference
from bench.approvals import DECISION, entry_uuid, manager, seed
from testkit.fixtures import new_pair_keys, pair_signer

LIST = "/timesheets?limit=20"


def call(url: str, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
    request = urllib.request.Request(url + target, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database(f"tsp_test_reference_identity_{uuid.uuid4().hex[:8]}") as url:
        asyncio.run(seed(url, 64))
        yield url


def test_the_gated_reference_checks_the_identity_contract(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    keys = new_pair_keys("t")
    gated_env = {
        **keys,
        "REFERENCE_IDENTITY": "1",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"tsp-test:{uuid.uuid4().hex}:",
    }
    gated = start_reference(database, tmp_path, gated_env, "reference_identity")
    plain = start_reference(database, tmp_path)
    try:
        gated_url: str = gated.reference_url  # type: ignore[attr-defined]
        plain_url: str = plain.reference_url  # type: ignore[attr-defined]
        assert refuses_unsigned(gated_url)
        assert not refuses_unsigned(plain_url)

        # a timesheets route: the gateway → timesheets key
        to_timesheets = pair_signer(keys, "gateway", "timesheets")
        reader = manager(1)
        headers = to_timesheets.headers(reader, method="GET", target=LIST)
        assert call(gated_url, "GET", LIST, headers)[0] == 200
        assert call(gated_url, "GET", LIST, headers)[0] == 401  # the same nonce again: a replay
        stranger = pair_signer(new_pair_keys("x"), "gateway", "timesheets")
        assert call(gated_url, "GET", LIST, stranger.headers(reader, method="GET", target=LIST))[0] == 401

        # an approvals route: the gateway → approvals key; its hops signed approvals → timesheets
        to_approvals = pair_signer(keys, "gateway", "approvals")
        target = f"/approvals/{entry_uuid(3)}"
        signed = to_approvals.headers(manager(0), method="PUT", target=target, body=DECISION)
        json_headers = {**signed, "Content-Type": "application/json"}
        status, decided = call(gated_url, "PUT", target, json_headers, DECISION)
        assert status == 200, status
        assert decided["state"] == "applied"
        assert decided["entry"]["status"] == "approved"
        # the gateway → timesheets key does not open an approvals route
        wrong = to_timesheets.headers(
            manager(0), method="PUT", target=f"/approvals/{entry_uuid(4)}", body=DECISION
        )
        assert call(gated_url, "PUT", f"/approvals/{entry_uuid(4)}", wrong, DECISION)[0] == 401
    finally:
        for process in (gated, plain):
            process.terminate()
            process.wait(10)
