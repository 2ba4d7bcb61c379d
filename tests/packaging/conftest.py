"""Fixtures of the packaging tests (helpers are in support.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.packaging.support import SCENARIOS, Obj, render, rendered_scenario


@pytest.fixture(params=list(SCENARIOS), scope="session")
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(scenario: str) -> list[Obj]:
    """Every object one scenario renders (hooks included), without Helm's NOTES."""
    return rendered_scenario(scenario)


@pytest.fixture
def render_values() -> Callable[[dict[str, Any]], list[Obj]]:
    return render
