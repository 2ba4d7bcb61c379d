"""Logs are JSON lines with the request id; secrets never reach them."""

from __future__ import annotations

import json
import logging

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
