"""Training's HTTP API, a router per resource; every route is thin: parse, call a use case
(``services.training.usecases``), shape the answer as its response model (``views``).

Writes need ``training:write``, reads ``training:read``; certificate verification by serial and the
reference list of key industries are public. The one region rule is applied by the use cases.
"""

from fastapi import APIRouter

from services.training.api import (
    certificates,
    competitions,
    enrolments,
    programmes,
    reference,
    rosters,
    sessions,
    studios,
)

router = APIRouter(prefix="/v1")
for part in (reference, programmes, sessions, enrolments, rosters, certificates, competitions, studios):
    router.include_router(part.router)

__all__ = ["router"]
