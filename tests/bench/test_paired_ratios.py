"""The gateway benchmark's A/B figures that take the machine's drift out (``bench.gateway.paired_ratios``).

The rounds below are the 12:40 UTC 2026-12-05 run's, the gateway against its code at 6abab29: the
ratio of medians said 1.159 by CPU per request, yet the upstream (the same work for both sides) ran
at the same pace as each side in every round — the machine's speed, not the code, moved between them.
"""

from __future__ import annotations

import pytest

from bench.gateway import paired_ratios

pytestmark = pytest.mark.unit


def rounds(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"cpu_us_per_request": cpu, "upstream_cpu_us_per_request": up} for cpu, up in pairs]


def test_a_round_of_a_slow_machine_is_taken_out_by_the_upstream() -> None:
    after = rounds((112.4, 68.3), (93.2, 54.0), (100.0, 58.2), (76.5, 44.0), (192.8, 104.4))
    before = rounds((142.3, 83.9), (96.2, 56.8), (86.3, 49.2), (72.8, 42.2), (77.7, 44.0))
    compared = paired_ratios(after, before)
    assert compared["paired"] == pytest.approx(1.051, abs=0.001)  # (76.5 / 72.8) the middle round pair
    assert compared["per_upstream"] is not None
    assert 0.97 < compared["per_upstream"] < 1.03


def test_a_real_change_stays_visible() -> None:
    before = rounds((100.0, 50.0), (80.0, 40.0), (120.0, 60.0))
    after = rounds((120.0, 50.0), (96.0, 40.0), (144.0, 60.0))  # 20 % more CPU, the same upstream
    assert paired_ratios(after, before) == {"paired": 1.2, "per_upstream": 1.2}


def test_rounds_without_figures_are_left_out() -> None:
    assert paired_ratios(rounds(), rounds()) == {"paired": None, "per_upstream": None}
    after = [{"cpu_us_per_request": 90.0}]
    before = [{"cpu_us_per_request": 100.0}]
    assert paired_ratios(after, before) == {"paired": 0.9, "per_upstream": None}
