"""Schemathesis hooks for tests/contracts/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

Every request gets a valid access token: the machine client's (client credentials, ``batch:upload``)
for the batch upload, which only machine clients may use, and the person's (every other scope)
for everything else. Tokens come from the environment the test sets.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

PERSON = os.environ["TSP_FUZZ_PERSON_TOKEN"]
MACHINE = os.environ["TSP_FUZZ_MACHINE_TOKEN"]
MACHINE_PATHS = frozenset({"/api/timesheets/upload"})


@schemathesis.auth(refresh_interval=None)
class Tokens:
    def get(self, case: Any, ctx: Any) -> str:
        return MACHINE if case.operation.path in MACHINE_PATHS else PERSON

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
