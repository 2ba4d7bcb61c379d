"""The README states the two commands first and its configuration table matches the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack.configdoc import table

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def test_two_commands_come_first() -> None:
    text = README.read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first_block is not None
    assert text.index("```sh") < text.index("## ")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make dev", "make test"]


def test_configuration_table_is_in_sync() -> None:
    text = README.read_text()
    block = re.search(r"<!-- config-table:start[^>]*-->\n(.*?)\n<!-- config-table:end -->", text, re.S)
    assert block is not None
    assert block.group(1) == table(), "run `python -m devstack.configdoc` and paste it into the README"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
