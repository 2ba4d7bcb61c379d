"""The SPA's text limits are the contract's, counted the same way.

The published document's ``maxLength`` (JSON Schema counts characters, code points), the services'
``max_length`` and the database's ``char_length`` checks agree; the SPA's form fields used the
browser's ``maxlength``, which counts UTF-16 code units: a project name stopped at 50 emoji where the
service takes 100, and the approver's comment at 1,000 characters where the service takes 2,000.
The SPA now states the limits once (``spa/src/lib/limits.ts``, checked there in code points) and keeps
``maxlength`` only as a backstop at twice the limit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from svckit.contracts.approvals import DecisionIn
from svckit.contracts.timesheets import EntryIn

SPA = Path(__file__).resolve().parents[2] / "spa" / "src"


def max_length(model: Any, field: str) -> int:
    schema = model.model_json_schema()["properties"][field]
    for option in (schema, *schema.get("anyOf", ())):
        if "maxLength" in option:
            return int(option["maxLength"])
    raise AssertionError(f"{model.__name__}.{field} publishes no maxLength")


def test_the_spa_states_the_contracts_limits() -> None:
    source = (SPA / "lib" / "limits.ts").read_text()
    stated = {name: int(value) for name, value in re.findall(r"export const (\w+_MAX) = (\d+);", source)}
    assert stated == {
        "PROJECT_MAX": max_length(EntryIn, "project"),
        "NOTES_MAX": max_length(EntryIn, "notes"),
        "COMMENT_MAX": max_length(DecisionIn, "comment"),
    }


def test_no_form_field_limits_its_text_in_utf16_units() -> None:
    """Every ``maxLength`` in the SPA's screens is a backstop of a stated limit, never a number."""
    for path in sorted((SPA / "ui").glob("*.tsx")):
        for attribute in re.findall(r"maxLength=\{([^}]*)\}", path.read_text()):
            assert re.fullmatch(r"backstop\(\w+_MAX\)", attribute), f"{path.name}: maxLength={{{attribute}}}"


def test_the_spa_refuses_the_bidirectional_controls_the_services_refuse() -> None:
    """``limits.ts`` lists the characters the services treat as bidirectional controls
    (``svckit.contracts.fields``), each by its Unicode name, as the services' messages name them."""
    import unicodedata

    from svckit.contracts.fields import no_bidi_controls

    source = (SPA / "lib" / "limits.ts").read_text()
    listed = {
        chr(int(code, 16)): name for code, name in re.findall(r'"\\u([0-9a-f]{4})": "([A-Z -]+)"', source)
    }
    refused = set()
    for point in range(0x10000):
        try:
            no_bidi_controls(chr(point))
        except ValueError:
            refused.add(chr(point))
    assert set(listed) == refused
    assert all(unicodedata.name(char) == name for char, name in listed.items())
