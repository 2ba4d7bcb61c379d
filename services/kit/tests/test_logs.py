"""Logs are JSON lines with the request id; secrets never reach them."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from svckit.context import request_id_var
from svckit.logs import JsonFormatter, scrub

pytestmark = pytest.mark.unit

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def test_scrub_removes_tokens_and_secrets() -> None:
    text = scrub(
        f"Authorization: Bearer {JWT} password=hunter2 client_secret=s3cr3t "
        "postgresql://app:pa55@db:5432/x token=abc"
    )
    for secret in (JWT, "hunter2", "s3cr3t", "pa55", "abc"):
        assert secret not in text


def test_json_line_carries_request_id() -> None:
    token = request_id_var.set("req-12345678")
    try:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "got %s", (JWT,), None)
        record.route = "/timesheets/{id}"
        line = json.loads(JsonFormatter("svc").format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "req-12345678"
    assert line["service"] == "svc"
    assert line["route"] == "/timesheets/{id}"
    assert JWT not in line["msg"]


def test_uvicorn_access_logger_looks_unhandled() -> None:
    # uvicorn builds its access line whenever the logger "has handlers" (its own or a parent's), and
    # only then finds it disabled: our services must not pay for a line nobody writes.
    from svckit.logs import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("svc")
        access = logging.getLogger("uvicorn.access")
        assert access.disabled
        assert not access.hasHandlers()
        assert logging.getLogger("uvicorn.error").hasHandlers()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


# --- secrets in the shapes Python, JSON, URLs and environments print them -----------------------

# (what is logged, the secret that must not reach the line)
LEAKS = [
    ("redis://:r3dis-only-pw@redis:6379/0", "r3dis-only-pw"),  # redis-py's form: no user name
    ("rediss://:pq@zz/x@cache:6380/0", "pq@zz/x"),  # unencoded, as a refused URL quotes it
    ("postgresql://app:pg%2Fpw-enc@db:5432/x", "pg%2Fpw-enc"),
    ("{'password': 'dict-pw-1', 'host': 'db'}", "dict-pw-1"),  # a dict's repr
    ("{'user': 'a', 'password': b'bytes-pw-2'}", "bytes-pw-2"),
    ("Settings(password='kw pw 3', port=5432)", "kw pw 3"),  # a dataclass's repr, spaces inside
    ('connect(password="it\'s-pw-4")', "it's-pw-4"),
    ('{"client_secret": "json secret 5", "client_id": "batch"}', "json secret 5"),
    ('{"password":"json-tight-6"}', "json-tight-6"),
    ('body={\\"refresh_token\\": \\"escaped-rt-7\\"}', "escaped-rt-7"),  # JSON inside a JSON string
    ("DB_RUNTIME_PASSWORD=env-pw-8 DB_POOL_MAX=10", "env-pw-8"),  # an environment variable's name
    ("BATCH_CLIENT_SECRET='env secret 9'", "env secret 9"),
    ("{'IDENTITY_SESSION_SECRET': 'sess-10'}", "sess-10"),
    ("clientSecret: camel-11", "camel-11"),
    ("{'x-api-key': 'hdr-12', 'cookie': 'session=ck-13'}", "hdr-12"),
    ("{'x-api-key': 'hdr-12', 'cookie': 'session=ck-13'}", "ck-13"),
    ("cut short: password='unclosed-14", "unclosed-14"),
    # key rings (svckit.keyring: kid:secret[,kid:secret…]): every key of the ring, not the first alone
    ("IDENTITY_SESSION_SECRET=k1:ring-first-16,k2:ring-second-17 LOG_LEVEL=INFO", "ring-second-17"),
    ("DPOP_NONCE_SECRET=new:nonce-new-18,old:nonce-old-19", "nonce-old-19"),
    ("IDENTITY_KEY_ENCRYPTION_KEY=kek-single-20", "kek-single-20"),
    ("IDENTITY_KEY_ENCRYPTION_KEY=new:kek-new-21,old:kek-old-22", "kek-old-22"),
    ("AUDIT_CHECKPOINT_KEYS=ck1:ck-first-23,ck2:ck-second-24", "ck-second-24"),
    ("IDENTITY_KEYS_GATEWAY_TO_TIMESHEETS=k1:pair-25", "pair-25"),
    ("DB_RUNTIME_OTHER_PASSWORD=other-pw-26 DB_RUNTIME_LOGIN=tsp_audit_b", "other-pw-26"),  # rotating
]

# prose and fields that merely name a secret, or end in a word that looks like one
KEPT = [
    "the password was rejected for alice",
    "password reset requested; passwords must be at least 12 characters",
    "status_code=500 error_code=42 secret_name=db-creds max_tokens=5",
    "a token is required",
    "see https://example.com:8443/docs for the secret rotation runbook",
    "the key-encryption key rotates in three steps; AUDIT_CHECKPOINT_KEYS names each key",
]


@pytest.fixture
def logged() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The kit's real logging set-up (configure_logging: the root logger → JSON lines), its stream
    kept for the test; the lines written so far, parsed."""
    from svckit.logs import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("svc", "DEBUG")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


@pytest.mark.parametrize(("text", "secret"), LEAKS)
def test_secrets_never_reach_a_line(
    logged: Callable[[], list[dict[str, Any]]], text: str, secret: str
) -> None:
    log = logging.getLogger("svckit.test")
    log.warning("failed with %s", text)
    log.info("configuration", extra={"detail": text, "settings": {"nested": [text]}, "object": Shown(text)})
    try:
        try:
            raise ConnectionError(text)
        except ConnectionError as exc:
            raise RuntimeError(f"could not connect: {text!r}") from exc
    except RuntimeError:
        log.exception("start-up failed")
    lines = logged()
    assert len(lines) == 3
    written = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
    for shown in {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}:
        assert shown not in written, (text, lines)
    assert "ConnectionError" in lines[2]["exc"]  # the traceback is there, the secret is not


def test_prose_about_secrets_is_kept(logged: Callable[[], list[dict[str, Any]]]) -> None:
    log = logging.getLogger("svckit.test")
    for text in KEPT:
        log.info(text)
    assert [line["msg"] for line in logged()] == KEPT


def test_a_dict_field_named_like_a_secret_is_redacted_whatever_its_value(
    logged: Callable[[], list[dict[str, Any]]],
) -> None:
    logging.getLogger("svckit.test").info(
        "x",
        extra={
            "settings": {"redis_password": 1234, "port": 6379, "code": "invalid_grant"},
            "client_secret": "top-level-15",
            "status_code": 500,
            "jws": {"protected": "eyJhbGciOiJFZERTQSJ9", "signature": "c2ln"},  # a checkpoint: public
        },
    )
    (line,) = logged()
    assert line["settings"] == {"redis_password": "[redacted]", "port": 6379, "code": "invalid_grant"}
    assert line["client_secret"] == "[redacted]"
    assert line["status_code"] == 500
    assert line["jws"] == {"protected": "eyJhbGciOiJFZERTQSJ9", "signature": "c2ln"}


class Shown:
    """An object whose str() holds ``text`` (logged as an extra: JSON has no encoding for it)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return f"Shown({self.text})"


@pytest.mark.parametrize(
    "text",
    [
        "a-" * 100_000,
        "a://" * 50_000,
        "password='" + "x" * 200_000,
        "x:" * 100_000,
        "a_" * 100_000,
        "secret=k:v" + ",k:v" * 50_000,  # a key ring's entries, each taken once
        "secret=k:v" + ",k" * 100_000,
        "identity_keys_" * 20_000,
    ],
)
def test_scrubbing_takes_linear_time(text: str) -> None:
    """A long run the patterns could start in at every character (a base64 blob, a dump) is scrubbed
    in one pass: unbounded prefixes made "a-" * 100000 take minutes."""
    started = time.perf_counter()
    scrub(text)
    assert time.perf_counter() - started < 2.0
