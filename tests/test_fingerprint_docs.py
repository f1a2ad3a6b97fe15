"""docs/fingerprint.md stays true to the code: its default policy table is DEFAULT_RULES."""

from __future__ import annotations

import re
from pathlib import Path

from reprotrain import fingerprint as fp

DOC = Path(__file__).resolve().parents[1] / "docs" / "fingerprint.md"


def _documented_rules() -> set[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("| field | severity | why |", 1)[1].split("\n\n", 1)[0]
    rules = set()
    for row in table.strip().splitlines()[1:]:  # skip the |---| line
        field_cell, severity_cell = [cell.strip() for cell in row.strip("|").split("|")][:2]
        patterns = re.findall(r"`([^`]+)`", field_cell) or (["*"] if field_cell == "anything else" else [])
        assert patterns, f"no field in documented row {row!r}"
        if severity_cell.startswith("refuse on another major.minor"):
            decision = "minor"
        elif severity_cell.startswith("refuse on another major"):
            decision = "major"
        else:
            decision = severity_cell.split()[0]
        rules |= {(pattern, decision) for pattern in patterns}
    return rules


def test_documented_default_policy_table_is_the_code_table():
    assert _documented_rules() == {(pattern, decision) for pattern, decision, _ in fp.DEFAULT_RULES}
