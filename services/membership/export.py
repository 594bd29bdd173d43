"""CSV exports of membership data, safe to open in a spreadsheet.

Names and other free text are stored as given, but a cell that starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return would run as a formula in Excel or WPS (CSV injection, OWASP):
on export such a cell gets a leading apostrophe, which the spreadsheet shows as text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"  # Excel in China reads a CSV without it as GB18030


def csv_cell(value: object) -> str:
    """One value as a CSV cell that a spreadsheet shows and never evaluates."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_line(values: Iterable[object]) -> str:
    """One CSV line (CRLF, as spreadsheets write them), every cell neutralised."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([csv_cell(v) for v in values])
    return out.getvalue()


def csv_header(names: Iterable[str]) -> str:
    return BOM + csv_line(names)
