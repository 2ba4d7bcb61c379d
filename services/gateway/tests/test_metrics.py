"""Request metrics aggregated per worker expose exactly what observing one request at a time would."""

from __future__ import annotations

import pytest
from gateway.metrics import RequestMetrics, request_duration, requests_total
from prometheus_client import CollectorRegistry, Histogram
from svckit.metrics import LATENCY_BUCKETS

pytestmark = pytest.mark.unit

VALUES = (0.0004, 0.001, 0.0011, 0.003, 0.2, 0.2, 7.5, 20.0)


def samples(histogram: Histogram, **labels: str) -> list[tuple[str, str | None, float]]:
    return [
        (sample.name.rsplit("_", 1)[1], sample.labels.get("le"), round(sample.value, 9))
        for sample in next(iter(histogram.collect())).samples
        if all(sample.labels.get(k) == v for k, v in labels.items()) and not sample.name.endswith("_created")
    ]


def test_aggregated_histogram_equals_one_by_one() -> None:
    metrics = RequestMetrics()
    for value in VALUES:
        metrics.observe("/api/test-aggregation", "GET", 200, value)
    before = requests_total.labels("/api/test-aggregation", "GET", "200")._value.get()
    metrics.flush()
    reference = Histogram("reference_seconds", "r", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for value in VALUES:
        reference.observe(value)
    assert samples(request_duration, route="/api/test-aggregation") == samples(reference)
    after = requests_total.labels("/api/test-aggregation", "GET", "200")._value.get()
    assert after - before == len(VALUES)
    metrics.flush()  # nothing new: nothing added
    assert requests_total.labels("/api/test-aggregation", "GET", "200")._value.get() == after
