"""``bench/api.py``'s ``reference_identity`` case measures what it says: the reference app behind the
kit's identity gate refuses an unsigned request, a signature by another key and a signed request sent
twice, and answers a signed one; the plain reference answers without any of that. The benchmark's own
check before its load (:func:`bench.api.refuses_unsigned`) tells the two apart."""

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
from svckit.identity import Identity

from bench._backing import fresh_database
from bench.api import prepare_database, refuses_unsigned, start_reference
from testkit.fixtures import new_pair_keys, pair_signer

ISSUER = "https://issuer.bench.test/"
TARGET = "/timesheets?limit=20"


def status_of(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    request = urllib.request.Request(url + TARGET, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database(f"tsp_test_reference_identity_{uuid.uuid4().hex[:8]}") as url:
        asyncio.run(prepare_database(url, ISSUER, ["alice"]))
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

        alice = Identity(ISSUER, "alice", "user", "timesheets-spa", frozenset({"read:timesheets"}), "")
        headers = pair_signer(keys, "gateway", "timesheets").headers(alice, method="GET", target=TARGET)
        status, page = status_of(gated_url, headers)
        assert status == 200
        assert page is not None
        assert len(page["items"]) == 20
        assert status_of(gated_url, headers)[0] == 401  # the same nonce again: a replay

        stranger = pair_signer(new_pair_keys("x"), "gateway", "timesheets")
        assert status_of(gated_url, stranger.headers(alice, method="GET", target=TARGET))[0] == 401
    finally:
        for process in (gated, plain):
            process.terminate()
            process.wait(10)
