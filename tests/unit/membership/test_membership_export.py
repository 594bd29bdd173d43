"""CSV export: a cell that a spreadsheet would run as a formula is shown as text."""
import csv
import io

import pytest

from services.membership.export import csv_cell, csv_header, csv_line


@pytest.mark.parametrize("value, shown", [
    ("=1+2", "'=1+2"), ("+86 139", "'+86 139"), ("-5", "'-5"), ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("\tcmd", "'\tcmd"), ("\rcmd", "'\rcmd"), ("马春燕", "马春燕"), ("a=b", "a=b"), (None, ""), (3, "3"),
])
def test_formula_starts_are_neutralised(value, shown):
    assert csv_cell(value) == shown


def test_lines_parse_back_with_the_neutralised_cells():
    text = csv_header(["name", "n"]) + csv_line(['=cmd|" /C calc"!A0', 1]) + csv_line(["王, 五", None])
    assert text.startswith("\ufeff")
    assert list(csv.reader(io.StringIO(text.lstrip("\ufeff")))) == [
        ["name", "n"], ["'=cmd|\" /C calc\"!A0", "1"], ["王, 五", ""]]
