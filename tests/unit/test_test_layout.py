"""The test tree's own rule: test modules have unique file names across tests/ (the tree has no packages, so
pytest imports each by its basename; a second file of the same name stops the whole suite at collection, which a
run of one directory does not show)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_the_tree():
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if ".run" not in p.parts)
    assert not [n for n, count in names.items() if count > 1], sorted(n for n, c in names.items() if c > 1)
