"""Access lines: valid JSON in the kit's shape, whatever the subject holds; batched, never lost at stop."""

from __future__ import annotations

import io
import json
import logging

import pytest
from gateway.accesslog import MAX_LINES, AccessLog

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def info_level() -> None:
    logging.getLogger().setLevel("INFO")


@pytest.mark.parametrize("subject", ["bench-user", 'we"ird\\x', "ünïcode", "tab\there", "", "{}[]:,"])
def test_lines_are_json_with_the_kit_fields(subject: str) -> None:
    stream = io.StringIO()
    log = AccessLog("gateway", stream)
    log.record(
        method="DELETE",
        route="/api/timesheets/{id}",
        status=204,
        seconds=0.01234,
        request_id="0123456789abcdef",
        subject=subject,
        client_id="timesheets-spa",
    )
    assert stream.getvalue() == ""  # buffered
    log.flush()
    line = json.loads(stream.getvalue())
    assert line["level"] == "info"
    assert line["service"] == "gateway"
    assert line["logger"] == "access"
    assert line["msg"] == "DELETE /api/timesheets/{id} 204"
    assert line["request_id"] == "0123456789abcdef"
    assert (line["route"], line["status"], line["duration_ms"]) == ("/api/timesheets/{id}", 204, 12.34)
    assert line.get("subject", "") == subject
    assert line["ts"].endswith("Z")


async def test_batches_flush_when_full_and_at_stop() -> None:
    stream = io.StringIO()
    log = AccessLog("gateway", stream)
    log.start()
    for i in range(MAX_LINES + 3):
        log.record(
            method="GET",
            route="/api/timesheets",
            status=200,
            seconds=0.001,
            request_id=f"req-{i:08d}",
            subject="a",
            client_id="",
        )
    assert len(stream.getvalue().splitlines()) == MAX_LINES
    await log.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == MAX_LINES + 3
    assert [json.loads(line)["request_id"] for line in lines][-1] == f"req-{MAX_LINES + 2:08d}"
