"""The audit benchmark's A/B helpers (``bench.audit``): the two services' order swapped every other
round, and each round's ratios after/before with their median, so a ratio comes with its spread.

The figures are the batch=1 rounds of an A/B run with the fixed order (the "after" service always
first), whose ratio of medians said 1.21 by CPU per event: one round's slow machine is one ratio of
several, not the answer."""

from __future__ import annotations

import pytest

from bench.audit import group_figures, paired_ratios, round_order, summary

pytestmark = pytest.mark.unit


def rounds(*figures: tuple[int, float, float | None]) -> list[dict[str, object]]:
    return [
        {"events_per_second": rate, "cpu_us_per_event": cpu, "postgres_cpu_us_per_event": pg}
        for rate, cpu, pg in figures
    ]


def test_every_other_round_runs_the_services_in_reverse() -> None:
    services = ["after", "before"]
    assert [round_order(services, n)[0] for n in range(4)] == ["after", "before", "after", "before"]
    assert round_order(services, 1) == ["before", "after"]
    assert services == ["after", "before"]  # the caller's list is left as it was
    assert round_order(["after"], 1) == ["after"]  # without a baseline: the one service


def test_each_round_paired_and_the_median_of_the_ratios() -> None:
    after = rounds((2000, 121.0, 80.0), (1800, 130.0, 90.0), (2100, 118.0, 79.0))
    before = rounds((2020, 100.0, 80.0), (1790, 131.0, 90.0), (2100, 114.6, 79.0))
    compared = paired_ratios(after, before, [True, False, True])
    assert compared["after_first"] == [True, False, True]
    assert compared["events_per_second_ratios"] == [0.99, 1.006, 1.0]
    assert compared["events_per_second_ratio"] == 1.0
    assert compared["cpu_us_per_event_ratios"] == [1.21, 0.992, 1.03]
    assert compared["cpu_us_per_event_ratio"] == 1.03  # not the 1.21 of the one round
    assert compared["postgres_cpu_us_per_event_ratio"] == 1.0


def test_rounds_without_a_figure_are_left_out() -> None:
    # Postgres's CPU is measured only when the benchmark started it (None with DATABASE_URL)
    after = rounds((1000, 50.0, None), (1000, 60.0, None))
    before = rounds((1000, 50.0, None), (0, 0.0, None))
    compared = paired_ratios(after, before, [True, False])
    assert compared["cpu_us_per_event_ratios"] == [1.0]  # the round with nothing measured left out
    assert compared["postgres_cpu_us_per_event_ratios"] == []
    assert compared["postgres_cpu_us_per_event_ratio"] is None


def test_a_case_keeps_each_rounds_cpu_per_event() -> None:
    found = [
        {"batch": 1, "events_per_second": 1900, "cpu_us_per_event": 120.5, "postgres_cpu_us_per_event": 70.0},
        {"batch": 1, "events_per_second": 2100, "cpu_us_per_event": 110.5, "postgres_cpu_us_per_event": 75.0},
        {"batch": 1, "events_per_second": 2000, "cpu_us_per_event": 115.5, "postgres_cpu_us_per_event": 72.0},
    ]
    case = summary(found)
    assert case["events_per_second"] == 2000  # the medians, as before
    assert case["cpu_us_per_event"] == 115.5
    assert case["events_per_second_rounds"] == [1900, 2100, 2000]
    assert case["cpu_us_per_event_rounds"] == [120.5, 110.5, 115.5]
    assert case["postgres_cpu_us_per_event_rounds"] == [70.0, 75.0, 72.0]
    unmeasured = summary([{**run, "postgres_cpu_us_per_event": None} for run in found])
    assert "postgres_cpu_us_per_event_rounds" not in unmeasured


def test_an_even_number_of_rounds_keeps_the_case_as_it_was() -> None:
    # the median of two equal integers is a float: a 6-round A/B printed "batch=1.0 x8.0"
    found = [{"batch": 1, "senders": 8, "events_per_second": rate} for rate in (1900, 2000, 2100, 2200)]
    case = summary(found)
    assert (case["batch"], case["senders"]) == (1, 8)
    assert type(case["batch"]) is int
    assert case["events_per_second"] == 2050.0  # a figure that varies: its median as before


def test_a_case_says_how_many_events_each_transaction_carried() -> None:
    # 8 senders of single events: 6,000 requests in 1,700 appends is groups of ~3.5
    single = group_figures({"batch": 1, "requests": 6000}, 1700)
    assert single == {"transactions": 1700, "events_per_transaction": 3.53, "requests_per_transaction": 3.53}
    batches = group_figures({"batch": 50, "requests": 400}, 380)
    assert (batches["events_per_transaction"], batches["requests_per_transaction"]) == (52.63, 1.05)
    assert group_figures({"batch": 1, "requests": 0}, 0)["events_per_transaction"] is None
    found = [{"batch": 1, "events_per_second": 1900, "cpu_us_per_event": 1.0, **single}] * 2
    assert summary(found)["events_per_transaction_rounds"] == [3.53, 3.53]
    assert "events_per_transaction_rounds" not in summary([{"batch": 1, "events_per_second": 1}])
