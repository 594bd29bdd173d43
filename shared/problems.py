"""RFC 9457 problem details for every error a service returns.

Routes raise :class:`Problem`; the handlers installed by ``shared.http.create_app``
turn it, request-validation errors and anything unexpected into
``application/problem+json`` with a stable machine-readable ``type``.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://changai.example/problems/"
MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """``headers`` go on the answer, not in the body (``WWW-Authenticate``, ``Retry-After``)."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail or title)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": PROBLEM_BASE + self.kind, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


# The problem schema every route documents for its error answers (shared.http adds it to the OpenAPI).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; more members may follow (e.g. ``errors`` of a validation problem).",
    "properties": {
        "type": {"type": "string", "description": "stable URI of the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}, "type": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status"],
}


def not_found(what: str, ident: Any) -> Problem:
    return Problem(404, "not-found", f"{what} not found", f"no {what} with id {ident}")


def conflict(kind: str, title: str, detail: str | None = None, **extra: Any) -> Problem:
    return Problem(409, kind, title, detail, **extra)


def invalid(field: str, reason: str) -> Problem:
    """A single-field validation failure, shaped like FastAPI's own (``errors`` list)."""
    return Problem(
        422,
        "validation-error",
        "Request is not valid",
        f"{field}: {reason}",
        errors=[{"field": field, "reason": reason}],
    )
