"""TLS to Redis (``rediss://``, :mod:`svckit.redistls`) against a real ``redis-server`` that speaks TLS
only: the kit's client trusts the CA named and nothing else, checks that the certificate names the
host unless told ``REDIS_TLS_VERIFY=ca``, and a URL cannot switch the checks off.

Before: ``REDIS_TLS_CA_FILE``/``REDIS_TLS_VERIFY`` did not exist; a ``rediss://`` URL was verified by
redis-py against the system store plus any ``?ssl_ca_certs=`` file (a certificate from any CA the
image trusts was accepted beside the provider's), and ``?ssl_cert_reqs=none`` in the URL turned the
verification off without a trace (both reproduced below against the same server).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from svckit.redisguard import RedisGuard
from svckit.redistls import RedisTls, resolve
from svckit.settings import RedisSettings, SettingsError, load_settings

from testkit.pgtls import KeyPair, make_ca, make_server_cert
from testkit.redistls import TlsRedis


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = make_ca("redis test CA")
        self.ca_file, _ = self.ca.write(directory, "ca")
        self.other_file, _ = make_ca("another CA").write(directory, "other")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("redis-pki"))


def tls_server(pki: Pki, names: list[str]) -> Iterator[TlsRedis]:
    server: KeyPair = make_server_cert(pki.ca, names)
    redis = TlsRedis(server, pki.ca_file).start()
    try:
        yield redis
    finally:
        redis.close()


@pytest.fixture(scope="module")
def localhost_redis(pki: Pki) -> Iterator[TlsRedis]:
    yield from tls_server(pki, ["localhost"])


@pytest.fixture(scope="module")
def misnamed_redis(pki: Pki) -> Iterator[TlsRedis]:
    """A certificate of the right CA for another name: what a man in the middle holding any
    certificate of that CA presents."""
    yield from tls_server(pki, ["cache.other.example"])


def refusal(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a process with ``env`` exits with (status 2)."""
    with pytest.raises(SettingsError) as refused:
        load_settings(RedisSettings, env)
    assert refused.value.code == 2
    return capsys.readouterr().err


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def ping(url: str, tls: RedisTls | None) -> tuple[bool | None, str]:
    """The guard's answer to a PING and the reason it logged when it had none."""
    guard = RedisGuard(url, "tls:", timeout=2.0, retry_seconds=60, tls=tls)
    handler = Recorder()
    records = handler.records
    logging.getLogger("svckit.redis").addHandler(handler)
    try:
        answer = await guard.call(lambda c: c.ping())
    finally:
        logging.getLogger("svckit.redis").removeHandler(handler)
        await guard.close()
    return answer, " ".join(str(getattr(r, "error", "")) for r in records)


async def test_the_named_ca_verifies_the_server(localhost_redis: TlsRedis, pki: Pki) -> None:
    tls = resolve(localhost_redis.url, str(pki.ca_file))
    assert tls == RedisTls(str(pki.ca_file), "full")
    guard = RedisGuard(localhost_redis.url, "tls:", timeout=2.0, retry_seconds=1, tls=tls)
    try:
        key = guard.key(uuid.uuid4().hex)
        assert await guard.call(lambda c: c.set(key, "1", ex=30)) is True
        assert await guard.call(lambda c: c.get(key)) == b"1"
        blocking = guard.dedicated(read_timeout=3.0)  # the revocation stream's XREAD BLOCK client
        try:
            assert await blocking.xadd(guard.key("stream"), {"a": "1"})
            assert await blocking.xread({guard.key("stream"): "0"}, count=1, block=100)
        finally:
            await blocking.aclose()
    finally:
        await guard.close()


async def test_another_ca_is_refused(localhost_redis: TlsRedis, pki: Pki) -> None:
    answer, reason = await ping(localhost_redis.url, resolve(localhost_redis.url, str(pki.other_file)))
    assert answer is None
    assert "CERTIFICATE_VERIFY_FAILED" in reason, reason


async def test_only_the_named_ca_is_trusted_not_the_system_store_beside_it(
    localhost_redis: TlsRedis, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's store trusts the server's CA (``SSL_CERT_FILE``: how the store is found), the
    deployment names another CA: refused. redis-py alone (``?ssl_ca_certs=``) trusted both."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    answer, _ = await ping(localhost_redis.url, resolve(localhost_redis.url, str(pki.other_file)))
    assert answer is None
    alone = aioredis.Redis.from_url(f"{localhost_redis.url}?ssl_ca_certs={pki.other_file}")
    try:
        assert await alone.ping() is True  # what the kit no longer does
    finally:
        await alone.aclose()
    # "system" (and no file at all) is the image's store: here the server's CA
    assert (await ping(localhost_redis.url, resolve(localhost_redis.url, "system")))[0] is True
    assert (await ping(localhost_redis.url, resolve(localhost_redis.url)))[0] is True


async def test_a_certificate_for_another_name_is_refused_unless_verify_is_ca(
    misnamed_redis: TlsRedis, pki: Pki
) -> None:
    answer, reason = await ping(misnamed_redis.url, resolve(misnamed_redis.url, str(pki.ca_file)))
    assert answer is None
    assert "Hostname mismatch" in reason or "CERTIFICATE_VERIFY_FAILED" in reason, reason
    chain_only = resolve(misnamed_redis.url, str(pki.ca_file), "ca")
    assert (await ping(misnamed_redis.url, chain_only))[0] is True


async def test_a_url_cannot_switch_verification_off(
    localhost_redis: TlsRedis, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """``?ssl_cert_reqs=none`` in the URL: redis-py connects to anyone (reproduced: a server of a CA
    nobody named answers); the kit refuses the URL at start-up."""
    loose = f"{localhost_redis.url}?ssl_cert_reqs=none"
    alone = aioredis.Redis.from_url(loose)
    try:
        assert await alone.ping() is True
    finally:
        await alone.aclose()
    for query in ("ssl_cert_reqs=none", "ssl_check_hostname=false", f"ssl_ca_certs={pki.other_file}"):
        env = {"REDIS_URL": f"{localhost_redis.url}?{query}", "REDIS_TLS_CA_FILE": str(pki.ca_file)}
        line = refusal(env, capsys)
        assert f"REDIS_URL must not set {query.split('=')[0]}" in line, line


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {
                "REDIS_URL": "redis://localhost:6379/0",
                "REDIS_TLS_CA_FILE": "/etc/ssl/certs/ca-certificates.crt",
            },
            "REDIS_TLS_CA_FILE is set but REDIS_URL is not rediss://",
        ),
        (
            {"REDIS_URL": "rediss://localhost:6380/0", "REDIS_TLS_CA_FILE": "/nonexistent/ca.crt"},
            "REDIS_TLS_CA_FILE: CA file /nonexistent/ca.crt does not exist or cannot be read",
        ),
        (
            {"REDIS_URL": "rediss://localhost:6380/0", "REDIS_TLS_VERIFY": "none"},
            "REDIS_TLS_VERIFY must be full or ca, not 'none'",
        ),
    ],
)
def test_a_set_up_that_cannot_work_stops_the_process_with_one_line(
    env: dict[str, str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(env, capsys)
    assert says in line, line
    assert line.count("\n") == 1, line


def test_an_unloadable_ca_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    line = refusal({"REDIS_URL": "rediss://localhost:6380/0", "REDIS_TLS_CA_FILE": str(garbage)}, capsys)
    assert f"the CA in {garbage} cannot be loaded" in line, line


def test_plain_urls_are_as_before() -> None:
    settings = load_settings(RedisSettings, {"REDIS_URL": "redis://localhost:6379/0"})
    assert settings.redis_tls is None
    assert load_settings(RedisSettings, {"REDIS_URL": "rediss://localhost:6380/0"}).redis_tls == RedisTls(
        "system", "full"
    )
