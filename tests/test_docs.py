"""The tables of names in README.md and docs/ list exactly the registries (so they cannot go stale)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fss.backbones import BACKBONES
from fss.masking import MASKINGS
from fss.models import MODELS

REPO = Path(__file__).resolve().parents[1]

#: (file, heading of the section whose first table lists the names) -> the registry
TABLES = {
    ("README.md", "## Support masking (`model.masking`)"): MASKINGS,
    ("README.md", "## Models (`model.net`)"): MODELS,
    ("README.md", "## Backbones (`model.backbone`)"): BACKBONES,
    ("docs/masking.md", "# Support masking"): MASKINGS,
}


def first_column_names(path: Path, heading: str) -> set[str]:
    """The backticked names in the first column of the first table after ``heading``."""
    text = path.read_text()
    assert heading in text, f"{path}: heading {heading!r} not found"
    section = text[text.index(heading) :]
    rows = re.search(r"(?m)^\|.*\|\n\|[- |]+\|\n((?:\|.*\|\n?)+)", section)
    assert rows, f"{path}: no table after {heading!r}"
    names: set[str] = set()
    for row in rows.group(1).splitlines():
        names |= set(re.findall(r"`([^`]+)`", row.split("|")[1]))
    return names


@pytest.mark.parametrize(("file", "heading"), sorted(TABLES))
def test_tables_list_the_registry(file: str, heading: str) -> None:
    assert first_column_names(REPO / file, heading) == set(TABLES[file, heading])
