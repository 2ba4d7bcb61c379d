"""The benchmark's HAProxy front does the gateway's job: its generated configuration, run by a real
HAProxy, passes the checks ``bench/gateway.py`` makes before any load — and the checks catch a front
that signs with the wrong key, so a passing check means something."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import _haproxy
from bench.api import AUDIENCE, Issuer
from testkit.fixtures import free_port

pytestmark = pytest.mark.skipif(not _haproxy.haproxy_available(), reason="haproxy not installed")

SCOPES = "create:timesheets openid read:timesheets"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    yield issuer
    issuer.close()


def run_checks(issuer: Issuer, tmp_path: Path, sign_key: bytes, verify_key: bytes) -> list[str]:
    public_key = tmp_path / "issuer.pem"
    public_key.write_bytes(_haproxy.public_key_pem(issuer.key))
    with _haproxy.verifying_upstream({"k1": verify_key}) as upstream:
        setup = _haproxy.HaproxySetup(
            free_port(),
            upstream.port,
            issuer.issuer,
            AUDIENCE,
            public_key,
            "k1",
            sign_key,
            _haproxy.default_routes(),
        )
        front = _haproxy.Haproxy(setup, core=None)
        front.start()
        try:
            good = issuer.token("alice", scope=SCOPES)
            wrong_scope = issuer.token("alice", scope="read:audit")
            return _haproxy.check(front.url, upstream, good, wrong_scope, issuer.issuer)
        finally:
            front.stop()


def test_generated_configuration_passes_the_checks(issuer: Issuer, tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    assert run_checks(issuer, tmp_path, key, key) == []


def test_the_checks_catch_a_front_that_signs_with_another_key(issuer: Issuer, tmp_path: Path) -> None:
    problems = run_checks(issuer, tmp_path, secrets.token_bytes(32), secrets.token_bytes(32))
    assert len(problems) == 2, problems
    assert problems[0].startswith("good token: 401")
    assert problems[1].startswith("a POST with a body: 401")
