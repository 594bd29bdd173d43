"""The intake's HTTP routes: thin — parse, authorise (scope), call the use case, shape the answer.

Scopes: ``intake:admin`` (the federation's operators, a region-level token: register and change sources)
and ``intake:emit`` (an upstream system: its token's ``sub`` is its registered client id).
``POST /v1/events`` speaks the CloudEvents HTTP protocol binding (binary, structured and batch modes).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.intake import domain, metrics, usecases, wire
from services.intake.settings import IntakeSettings
from shared.auth import Principal, require
from shared.clock import now_cn
from shared.http import body_limit, db_pool, write
from shared.pagination import Cursor, Limit, Page, decode_cursor, page
from shared.problems import MEDIA_TYPE, Problem

router = APIRouter(prefix="/v1")
ADMIN, EMIT = require("intake:admin"), require("intake:emit")


class SourceOut(BaseModel):
    id: uuid.UUID
    source: str
    name: str
    region_code: str
    event_types: list[str]
    client_id: str
    reply: domain.Reply
    reply_url: str | None
    status: domain.SourceStatus
    created_at: datetime
    updated_at: datetime


class EventAnswer(BaseModel):
    id: str | None
    source: str | None
    outcome: Literal["accepted", "duplicate", "rejected"]
    problem: dict[str, Any] | None = None


class BatchAnswer(BaseModel):
    results: list[EventAnswer]
    accepted: int
    duplicates: int
    rejected: int


class EventStatus(BaseModel):
    id: str = Field(description="the CloudEvent's id")
    source: str
    type: str
    status: Literal["accepted", "applied", "rejected"]
    received_at: datetime
    decided_at: datetime | None
    member_id: uuid.UUID | None = None
    problem: dict[str, Any] | None = Field(default=None, description="RFC 9457 problem of a rejection")


def source_view(row: asyncpg.Record) -> dict[str, Any]:
    return {k: row[k] for k in SourceOut.model_fields} | {"event_types": list(row["event_types"])}


# -- sources -----------------------------------------------------------------------------
@router.post("/sources", status_code=201, response_model=SourceOut, summary="Register an upstream source")
async def register_source(body: domain.SourceIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 201, source_view(await usecases.register_source(conn, body, actor, request.app.state.cipher))

    return await write(request, actor, "register-source", body.model_dump(mode="json"), run)


@router.get("/sources", response_model=Page[SourceOut], summary="Registered sources")
async def list_sources(
    request: Request, limit: int = Limit, cursor: str | None = Cursor, actor: Principal = Depends(ADMIN)
):
    rows = await usecases.list_sources(db_pool(request), actor, after=decode_cursor(cursor), limit=limit)
    return page(rows, limit, key=lambda r: r["seq"], view=source_view)


@router.get("/sources/{source_id}", response_model=SourceOut, summary="One registered source")
async def get_source(source_id: uuid.UUID, request: Request, actor: Principal = Depends(ADMIN)):
    return source_view(await usecases.get_source(db_pool(request), source_id, actor))


@router.patch("/sources/{source_id}", response_model=SourceOut, summary="Change a source's registration")
async def update_source(
    source_id: uuid.UUID, body: domain.SourcePatch, request: Request, actor: Principal = Depends(ADMIN)
):
    async def run(conn):
        return 200, source_view(await usecases.update_source(conn, source_id, body, actor, request.app.state.cipher))

    return await write(
        request, actor, f"update-source:{source_id}", body.model_dump(mode="json", exclude_unset=True), run
    )


# -- events ------------------------------------------------------------------------------
EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/cloudevents+json": {
                "schema": {"type": "object", "description": "one CloudEvent (structured mode)"}
            },
            "application/cloudevents-batch+json": {
                "schema": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "up to 500 CloudEvents (batch mode)",
                }
            },
            "application/json": {
                "schema": {"type": "object", "description": "the data of a binary-mode event (ce-* headers)"}
            },
        },
    }
}


@router.post(
    "/events",
    status_code=202,
    response_model=EventAnswer | BatchAnswer,
    openapi_extra=EVENTS_BODY,
    summary="Emit CloudEvents (HTTP binding: binary, structured or batch mode)",
    responses={
        200: {"description": "a redelivery: already accepted, nothing changed"},
        207: {"model": BatchAnswer, "description": "batch mode: each event's outcome"},
    },
)
@body_limit(1024 * 1024)
async def emit(request: Request, actor: Principal = Depends(EMIT)):
    settings: IntakeSettings = request.app.state.settings
    kind = wire.mode(request.headers)
    body = await request.body()
    # one connection for the caller's registration and the event's statement (an acquire less an event); no
    # transaction of ours: accept writes in one statement, atomic by itself (BEGIN and COMMIT would be two round
    # trips more, ~15 % of a single event's CPU in the service)
    async with db_pool(request).acquire() as conn:
        source, accepted = await usecases.accept_from_caller(
            conn,
            actor,
            lambda: parse(request, kind, body, settings),
            request.app.state.known_sources,
            batch=kind == "batch",
            channel="http",
            now=now_cn(),
            max_future=timedelta(seconds=settings.intake_max_future_s),
            keys=request.app.state.keys,
        )
    metrics.count(source.source, "http", accepted.results)
    if kind == "batch":
        return JSONResponse(
            BatchAnswer(
                results=[EventAnswer(**r.body()) for r in accepted.results],
                accepted=accepted.count("accepted"),
                duplicates=accepted.count("duplicate"),
                rejected=accepted.count("rejected"),
            ).model_dump(mode="json"),
            status_code=207,
        )
    (result,) = accepted.results
    if result.problem is not None:  # rejected
        return JSONResponse(
            {**result.problem, "instance": request.url.path},
            status_code=result.problem["status"],
            media_type=MEDIA_TYPE,
        )
    answer = EventAnswer(**result.body()).model_dump(mode="json", exclude_none=True)
    return JSONResponse(answer, status_code=202 if result.outcome == "accepted" else 200)


def parse(request: Request, kind: str, body: bytes, settings: IntakeSettings) -> list:
    """The request's events (or the refusal of each that did not parse), by the binding's mode."""
    if kind == "batch":
        if len(body) > settings.intake_max_batch_bytes:
            raise Problem(
                413,
                "batch-too-large",
                "The batch is too large",
                f"a batch is at most {settings.intake_max_batch_bytes} bytes",
            )
        return wire.parse_batch(body, settings.intake_max_batch_events, settings.intake_max_event_bytes)
    if len(body) > settings.intake_max_event_bytes:
        raise wire.event_too_large(settings.intake_max_event_bytes)
    if kind == "structured":
        return [wire.parse_structured(body)]
    return [wire.parse_binary(dict(request.headers), body)]


WEBHOOK_ORIGIN = re.compile(r"^[A-Za-z0-9*]([A-Za-z0-9.*-]{0,252}[A-Za-z0-9])?(:[0-9]{1,5})?$")


@router.options(
    "/events",
    status_code=200,
    response_class=Response,
    summary="CloudEvents webhook validation handshake (abuse protection)",
    description="A sender asks, with `WebHook-Request-Origin` (its DNS name) and optionally "
    "`WebHook-Request-Rate` (requests a minute), whether it may deliver here; the answer grants it in "
    "`WebHook-Allowed-Origin` and `WebHook-Allowed-Rate` (CloudEvents HTTP 1.1 Web Hooks, section 4). "
    "No token: the handshake is consent to receive, not authorisation; every POST still needs one.",
    responses={
        200: {"description": "delivery allowed (see the WebHook-Allowed-* headers)"},
        400: {"description": "not a validation request: no WebHook-Request-Origin naming a host (a problem)"},
    },
)
async def webhook_handshake(
    request: Request,
    origin: str | None = Header(default=None, alias="WebHook-Request-Origin", max_length=255),
    rate: str | None = Header(default=None, alias="WebHook-Request-Rate", max_length=20),
):
    if origin is None or not WEBHOOK_ORIGIN.match(origin):
        raise Problem(
            400,
            "not-a-webhook-handshake",
            "Not a webhook validation request",
            "send WebHook-Request-Origin: the sending system's DNS name (e.g. hr.example.com)",
        )
    most: int = request.app.state.settings.intake_webhook_max_rate
    asked = int(rate) if rate is not None and rate.isdigit() and int(rate) > 0 else most
    return Response(
        status_code=200,
        headers={
            "Allow": "POST, OPTIONS",
            "WebHook-Allowed-Origin": origin,
            "WebHook-Allowed-Rate": str(min(asked, most)),
        },
    )


@router.get("/events/{event_id}", response_model=EventStatus, summary="An event's answer (to its own source)")
async def event_status(
    event_id: str,
    request: Request,
    source: str = Query(min_length=1, max_length=255, description="the event's CloudEvents source"),
    actor: Principal = Depends(EMIT),
):
    return usecases.answer(await usecases.event_status(db_pool(request), source, event_id, actor))
