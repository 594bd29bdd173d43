"""One cursor pagination for every list of every service.

A list takes ``limit`` (1–200, default 50) and an opaque ``cursor``; it answers
``{"items": [...], "next_cursor": "…" | null}``. The cursor is the last row's sort key,
base64url-encoded; clients send ``next_cursor`` back exactly as received. A cursor that
does not decode is a 400 ``bad-cursor`` problem, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from shared.problems import Problem

T = TypeVar("T")
MAX_LIMIT = 200

Limit = Query(50, ge=1, le=MAX_LIMIT, description="page size (1–200)")
Cursor = Query(None, max_length=512, description="next_cursor of the previous page, exactly as received")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: Callable[[str], Any] = int) -> Any:
    """The sort key a cursor carries, or None for the first page; 400 when it is not one of ours."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        value = kind(text)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad_cursor() from None
    if isinstance(value, int) and not (-(2**63) <= value < 2**63):
        raise bad_cursor()
    return value


def bad_cursor() -> Problem:
    return Problem(400, "bad-cursor", "The cursor is not valid", "send next_cursor exactly as received")


def page(
    rows: Sequence[Any], limit: int, key: Callable[[Any], Any], view: Callable[[Any], Any] = lambda r: r
) -> dict[str, Any]:
    """Rows fetched with ``LIMIT limit + 1``: the first ``limit`` as items, and a cursor when there were more."""
    more = len(rows) > limit
    kept = rows[:limit]
    return {"items": [view(r) for r in kept], "next_cursor": encode_cursor(key(kept[-1])) if more else None}


def uuid_key(text: str) -> uuid.UUID:
    return uuid.UUID(text)
