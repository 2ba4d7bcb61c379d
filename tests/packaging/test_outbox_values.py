"""The outbox relays' receipt check interval is a chart value (``config.outboxReceiptCheckIntervalSeconds``).

``OUTBOX_RECEIPT_CHECK_INTERVAL_SECONDS`` (svckit.settings.OutboxSettings, svckit.receipts) is how
often a relay asks the audit service whether its trail still holds the newest event it delivered:
the alert ``TimesheetsOutboxAuditReceiptMismatch`` fires no sooner than that after a restored or
rewound trail. The chart set every other relay setting's neighbours but not this one, and a
``<component>.env`` entry had to be repeated per producer. It renders into the producers' (the
services with an outbox: identity, timesheets, approvals) containers only, and the schema holds the
settings' bounds (1..3600 s).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.packaging.support import MINIMAL, deep_merge, render
from tests.packaging.test_ops_values import container_env, schema_refuses

NAME = "OUTBOX_RECEIPT_CHECK_INTERVAL_SECONDS"
PRODUCERS = ("identity", "timesheets", "approvals")
OTHERS = ("gateway", "audit")
WITH_IDENTITY = deep_merge(MINIMAL, {"identity": {"enabled": True}})


def value_in(values: dict[str, Any], component: str) -> str | None:
    for entry in container_env(render(values), component):
        if entry["name"] == NAME:
            return str(entry["value"])
    return None


@pytest.mark.parametrize("component", PRODUCERS)
def test_the_interval_renders_into_every_producer(component: str) -> None:
    assert value_in(WITH_IDENTITY, component) == "60"  # the settings' default
    tuned = deep_merge(WITH_IDENTITY, {"config": {"outboxReceiptCheckIntervalSeconds": 15}})
    assert value_in(tuned, component) == "15"


@pytest.mark.parametrize("component", OTHERS)
def test_a_service_without_an_outbox_does_not_get_it(component: str) -> None:
    assert value_in(WITH_IDENTITY, component) is None


def interval(value: object) -> dict[str, Any]:
    return deep_merge(MINIMAL, {"config": {"outboxReceiptCheckIntervalSeconds": value}})


@pytest.mark.parametrize("good", [1, 2.5, 3600])
def test_the_schema_takes_what_the_setting_takes(good: object) -> None:
    assert schema_refuses(interval(good)) == ""


@pytest.mark.parametrize("bad", [0, 3601, "60"])
def test_the_schema_holds_the_settings_bounds(bad: object) -> None:
    refused = schema_refuses(interval(bad))
    assert "outboxReceiptCheckIntervalSeconds" in refused, refused


# ``config.outboxRequestTimeoutSeconds`` (OUTBOX_REQUEST_TIMEOUT_SECONDS): how long a relay waits for
# the audit service's answer to a batch (tests/faults/test_redelivery.py: a batch given up on is
# recorded once all the same). Bounded above by the idle-in-transaction floor (15 s): the relay's
# claim transaction stays open while it waits.


def timeout_in(values: dict[str, Any], component: str) -> str | None:
    for entry in container_env(render(values), component):
        if entry["name"] == "OUTBOX_REQUEST_TIMEOUT_SECONDS":
            return str(entry["value"])
    return None


@pytest.mark.parametrize("component", PRODUCERS)
def test_the_request_timeout_renders_into_every_producer(component: str) -> None:
    assert timeout_in(WITH_IDENTITY, component) == "10"  # the settings' default
    tuned = deep_merge(WITH_IDENTITY, {"config": {"outboxRequestTimeoutSeconds": 4}})
    assert timeout_in(tuned, component) == "4"


@pytest.mark.parametrize("component", OTHERS)
def test_a_service_without_an_outbox_does_not_get_the_request_timeout(component: str) -> None:
    assert timeout_in(WITH_IDENTITY, component) is None


@pytest.mark.parametrize(
    ("value", "taken"), [(0.5, True), (14, True), (0, False), (15, False), ("10", False)]
)
def test_the_schema_holds_the_request_timeouts_bounds(value: object, taken: bool) -> None:
    refused = schema_refuses(deep_merge(MINIMAL, {"config": {"outboxRequestTimeoutSeconds": value}}))
    assert (refused == "") is taken, refused
