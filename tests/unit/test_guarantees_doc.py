"""docs/guarantees.md names, for every guarantee, tests that exist (found by parsing the test files with ast)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "guarantees.md"
TESTS = ROOT / "tests"
TEST_REF = re.compile(r"^(?P<file>[\w/]+\.py)::(?P<name>\w+)$")


def rows(text: str) -> list[tuple[str, str, list[str]]]:
    """(guarantee, stated in, [file::test, ...]) of the table's body rows."""
    out = []
    all_lines = text.splitlines()
    starts = [i for i, line in enumerate(all_lines) if line.startswith("| guarantee | stated in | tests |")]
    assert len(starts) == 1, "the table's header changed"
    lines = []
    for line in all_lines[starts[0]:]:  # the table: the lines from its header up to the first that is not a row
        if not line.startswith("|"):
            break
        lines.append(line)
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a row needs 3 cells: {line}"
        out.append((cells[0], cells[1], [t.strip() for t in cells[2].split(",") if t.strip()]))
    return out


def functions_of(path: Path) -> set[str]:
    """Test functions of a file: module level, and methods of Test* classes as Class::method."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f"{node.name}::{m.name}" for m in node.body
                      if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name.startswith("test")}
    return names


def missing_tests(table: list[tuple[str, str, list[str]]]) -> list[str]:
    problems = []
    for guarantee, _, tests in table:
        if not tests:
            problems.append(f"no test for: {guarantee}")
        for ref in tests:
            m = TEST_REF.match(ref)
            if m is None:
                problems.append(f"not file::test: {ref!r} ({guarantee})")
                continue
            path = TESTS / m["file"]
            if not path.is_file():
                problems.append(f"no such file: tests/{m['file']} ({guarantee})")
            elif m["name"] not in functions_of(path):
                problems.append(f"no test {m['name']} in tests/{m['file']} ({guarantee})")
    return problems


def test_every_listed_test_exists():
    table = rows(DOC.read_text())
    assert len(table) >= 20
    problems = missing_tests(table)
    assert not problems, "docs/guarantees.md:\n  " + "\n  ".join(problems)


def test_the_check_finds_a_missing_test_and_a_row_without_one():
    table = [("a real one", "x", ["unit/test_guarantees_doc.py::test_every_listed_test_exists"]),
             ("renamed away", "x", ["unit/test_guarantees_doc.py::test_that_does_not_exist"]),
             ("no file", "x", ["unit/nowhere.py::test_x"]),
             ("untested", "x", [])]
    problems = missing_tests(table)
    assert len(problems) == 3 and not any("a real one" in p for p in problems)
