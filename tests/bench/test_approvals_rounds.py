"""An A/B of ``bench/approvals.py`` reads round by round: each round's CPU per request per server
(``cpu_rounds``) and the two builds' paired ratios. On this shared machine a round's load moves both
pairs alike (0.69-1.26 between rounds of one run), so the paired ratios and their spread, not the
medians' ratio alone, say what a run resolved."""

from __future__ import annotations

from typing import Any

import pytest

from bench import api, approvals

pytestmark = pytest.mark.unit


def rounds(cpu: list[dict[str, float]], rps: list[float]) -> list[dict[str, Any]]:
    return [
        {"requests": r * 8, "rps": r, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "non_2xx": 0,
         "socket_errors": "", "cpu_us_per_request": c}
        for c, r in zip(cpu, rps, strict=True)
    ]  # fmt: skip


def test_each_rounds_cpu_is_kept_beside_the_median() -> None:
    case = api.median_of(
        rounds(
            [{"approvals": 1000.0, "timesheets": 900.0}, {"approvals": 1300.0, "timesheets": 1100.0}],
            [400, 300],
        )
    )
    assert case["cpu_rounds"] == {"approvals": [1000.0, 1300.0], "timesheets": [900.0, 1100.0]}
    assert case["cpu_us_per_request"] == {"approvals": 1150.0, "timesheets": 1000.0}


def test_an_ab_is_paired_by_round_for_the_pair_and_for_each_service() -> None:
    new = api.median_of(
        rounds(
            [{"approvals": 900.0, "timesheets": 1000.0}, {"approvals": 1400.0, "timesheets": 1500.0}],
            [450, 300],
        )
    )
    old = api.median_of(
        rounds(
            [{"approvals": 1000.0, "timesheets": 1000.0}, {"approvals": 1500.0, "timesheets": 1500.0}],
            [400, 280],
        )
    )
    reference = api.median_of(rounds([{"reference": 1500.0}, {"reference": 1600.0}], [500, 480]))
    found = approvals.ratios(new, reference, None, old, both_before=True)
    assert found["services_vs_before_cpu_rounds"] == [0.95, 0.967]
    assert found["approvals_vs_before_cpu_rounds"] == [0.9, 0.933]
    assert found["timesheets_vs_before_cpu_rounds"] == [1.0, 1.0]
    assert "services_vs_before_cpu_rounds" not in approvals.ratios(new, reference, None, old)
