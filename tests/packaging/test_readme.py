"""The chart README's values table documents every value and matches values.yaml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import yaml

from tests.packaging.support import CHART, REPO

SCRIPT = REPO / "charts" / "generate_readme.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_readme", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_every_value_is_documented_and_every_param_exists() -> None:
    gen = generator()
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    sections = gen.parse_doc_comments(text)
    assert gen.undocumented(values, sections) == []
    assert gen.unknown_params(values, sections) == []


def test_the_checker_notices_an_undocumented_value() -> None:
    gen = generator()
    text = "## @section S\n## @param a.b documented\na:\n  b: 1\n  c: 2\n"
    values = yaml.safe_load(text)
    assert gen.undocumented(values, gen.parse_doc_comments(text)) == ["a.c"]


def test_readme_table_is_in_sync() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_readme_lists_defaults_from_values_yaml() -> None:
    readme = (CHART / "README.md").read_text()
    assert "| `gateway.workers` |" in readme
    assert "| `config.redisKeyPrefix` | REDIS_KEY_PREFIX" in readme
    assert '`"tsp:"`' in readme
