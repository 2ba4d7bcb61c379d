"""Keep the values table of a chart's README in sync with its values.yaml.

values.yaml documents each key with a Bitnami-style comment, ``## @param <key.path> <description>``,
and groups keys with ``## @section <title>``. This script writes one table per section between the
markers ``<!-- values:start -->`` and ``<!-- values:end -->`` of the chart's README.md, with each
key's default read from the YAML itself (so a changed default cannot leave the docs behind).

    python charts/generate_readme.py            # rewrite charts/timesheets/README.md
    python charts/generate_readme.py --check    # exit 1 when the README is out of date

tests/packaging/test_readme.py runs the check and also proves every key in values.yaml is documented.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "timesheets"
START = "<!-- values:start -->"
END = "<!-- values:end -->"
PARAM = re.compile(r"^\s*## @param (\S+) (.+)$")
SECTION = re.compile(r"^\s*## @section (.+)$")
MISSING = object()


@dataclass
class Section:
    title: str
    params: list[tuple[str, str]] = field(default_factory=list)


def parse_doc_comments(values_text: str) -> list[Section]:
    """The sections and their ``(key, description)`` pairs, in file order."""
    sections: list[Section] = []
    for line in values_text.splitlines():
        if match := SECTION.match(line):
            sections.append(Section(match.group(1).strip()))
        elif match := PARAM.match(line):
            if not sections:
                sections.append(Section("Parameters"))
            sections[-1].params.append((match.group(1), match.group(2).strip()))
    return sections


def lookup(values: Any, key: str) -> Any:
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def leaf_keys(values: Any, prefix: str = "") -> list[str]:
    """Keys a user sets: scalars, lists and empty maps (non-empty maps are walked into)."""
    if isinstance(values, dict) and values:
        keys: list[str] = []
        for name, child in values.items():
            keys.extend(leaf_keys(child, f"{prefix}{name}."))
        return keys
    return [prefix.rstrip(".")]


def undocumented(values: Any, sections: list[Section]) -> list[str]:
    """Leaf keys that no ``@param`` documents (a param on a map documents everything under it)."""
    documented = {key for section in sections for key, _ in section.params}
    missing = []
    for key in leaf_keys(values):
        parts = key.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if not prefixes & documented:
            missing.append(key)
    return missing


def unknown_params(values: Any, sections: list[Section]) -> list[str]:
    return [key for section in sections for key, _ in section.params if lookup(values, key) is MISSING]


def format_default(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    return "`" + text.replace("|", "\\|") + "`"


def render_tables(values: Any, sections: list[Section]) -> str:
    out: list[str] = []
    for section in sections:
        if not section.params:
            continue
        out.append(f"### {section.title}\n")
        out.append("| Name | Description | Default |")
        out.append("| --- | --- | --- |")
        for key, description in section.params:
            default = format_default(lookup(values, key))
            escaped = description.replace("|", "\\|")
            out.append(f"| `{key}` | {escaped} | {default} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_readme(readme: str, values_text: str) -> str:
    """The README with its values tables regenerated."""
    values = yaml.safe_load(values_text)
    tables = render_tables(values, parse_doc_comments(values_text))
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README.md lacks the markers {START} … {END}")
    return f"{head}{START}\n{tables}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when README.md is out of date")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args(argv)
    values_text = (args.chart / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    sections = parse_doc_comments(values_text)
    problems = [f"undocumented value: {k}" for k in undocumented(values, sections)]
    problems += [f"@param for a key that values.yaml lacks: {k}" for k in unknown_params(values, sections)]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    readme_path = args.chart / "README.md"
    current = readme_path.read_text()
    wanted = render_readme(current, values_text)
    if args.check:
        if current != wanted:
            print(f"{readme_path} is out of date: run python charts/generate_readme.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
