"""Domain exceptions: what a rule says when it refuses, with no HTTP in it.

Domain functions and use cases raise these; ``shared.http`` maps them, in one place, to
RFC 9457 problems (``NotFound`` → 404, ``OutOfScope`` → 403, ``Conflict`` → 409,
``Invalid`` and ``RuleBroken`` → 422). Consumers and bulk paths catch them and record the
refusal (a per-row report, a rejected command) instead of answering HTTP.

``kind`` is the stable machine-readable name that becomes the problem's ``type``.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base: a command refused by a rule. ``extra`` fields go into the problem body."""

    kind = "domain-error"
    title = "The request was refused"

    def __init__(self, detail: str | None = None, *, kind: str | None = None, title: str | None = None, **extra: Any):
        super().__init__(detail or title or self.title)
        if kind:
            self.kind = kind
        if title:
            self.title = title
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    """The thing does not exist, or lies outside the caller's scope (a read never tells which)."""

    kind = "not-found"
    title = "Not found"

    def __init__(self, what: str, ident: Any = None, **extra: Any):
        detail = f"no {what} with id {ident}" if ident is not None else f"no such {what}"
        super().__init__(detail, title=f"{what} not found", **extra)
        self.what = what


class OutOfScope(DomainError):
    """A write names a region (or unit) outside the caller's organisation scope."""

    kind = "out-of-scope"
    title = "Region outside the caller's organisation scope"


class Conflict(DomainError):
    """The command clashes with the current state (a duplicate, a closed record)."""

    kind = "conflict"
    title = "Conflict with the current state"


class Invalid(DomainError):
    """One field's value is refused; never echoes the value."""

    kind = "validation-error"
    title = "Request is not valid"

    def __init__(self, field: str, reason: str, **extra: Any):
        super().__init__(f"{field}: {reason}", errors=[{"field": field, "reason": reason}], **extra)
        self.field = field
        self.reason = reason


class RuleBroken(DomainError):
    """A business rule refuses a well-formed command (e.g. dissolving a branch that has members)."""

    kind = "rule-broken"
    title = "A business rule refuses this"


STATUS: dict[type[DomainError], int] = {NotFound: 404, OutOfScope: 403, Conflict: 409, Invalid: 422, RuleBroken: 422}


def status_of(exc: DomainError) -> int:
    """The HTTP status a domain error maps to (the nearest class in ``STATUS``; 422 by default)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 422
