"""Money is integer fen (分) inside the platform and decimal strings of yuan at the HTTP API.

``"800.00"`` ↔ ``80000``. Floats are refused: a JSON number like ``800.1`` has already
lost exactness by the time it is parsed, so the API accepts only strings.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_YUAN = re.compile(r"^(0|[1-9]\d{0,13})(\.\d{1,2})?$")


def yuan_to_fen(value: str) -> int:
    if not isinstance(value, str):
        raise ValueError(
            'amount must be a decimal string of yuan, e.g. "800.00" (numbers are refused: floats are inexact)'
        )
    if not _YUAN.fullmatch(value):  # not match(): its "$" also matches before a trailing "\n" ("800.00\n")
        raise ValueError('amount must be a non-negative decimal string with at most 2 decimals, e.g. "800.00"')
    whole, _, frac = value.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def fen_to_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


# Request field: accepts "800.00" only, holds fen.
Yuan = Annotated[int, BeforeValidator(yuan_to_fen)]
# Response field: holds fen, written as "800.00".
YuanOut = Annotated[int, PlainSerializer(fen_to_yuan, return_type=str)]
