"""Sessions (培训班): scheduling and the session's transitions."""

from __future__ import annotations

import uuid
from datetime import date

from fastapi import APIRouter, Query, Request

from services.training import domain, usecases
from services.training.api import views
from services.training.api.deps import Reader, Writer, run_write
from shared.events.training import SubsidyCategory
from shared.http import Db
from shared.pagination import Cursor, Limit, Page, decode_cursor, page
from shared.regions import RegionCode

router = APIRouter(tags=["sessions"])


@router.post("/sessions", status_code=201, response_model=views.Session, summary="Schedule a session (培训班)")
async def schedule_session(body: domain.SessionIn, request: Request, actor: Writer):
    """The organiser is a branch (its id; its name and region come from membership) or an enterprise
    (credit code, name, region). The organiser branch's region and the session's region must both be
    in the caller's scope."""

    async def command(conn, actor, today):
        return views.session(await usecases.schedule_session(conn, body, actor, today))

    return await run_write(request, actor, "sessions.schedule", body.model_dump(mode="json"), command, 201)


@router.get("/sessions", response_model=Page[views.Session], summary="Sessions, filtered, cursor-paginated")
async def list_sessions(
    db: Db,
    actor: Reader,
    programme_id: uuid.UUID | None = None,
    status: str | None = Query(None, pattern="^(scheduled|in_progress|completed|cancelled)$"),
    region_code: RegionCode | None = None,
    subsidy_category: SubsidyCategory | None = None,
    organiser_id: domain.Text | None = Query(None, max_length=64),
    starts_from: date | None = Query(None, description="sessions starting on or after"),
    starts_to: date | None = Query(None, description="sessions starting on or before"),
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_sessions(
        db,
        actor,
        region_code=region_code,
        after=decode_cursor(cursor),
        limit=limit,
        programme_id=programme_id,
        status=status,
        subsidy_category=subsidy_category,
        organiser_id=organiser_id,
        starts_from=starts_from,
        starts_to=starts_to,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.session)


@router.get("/sessions/{session_id}", response_model=views.Session, summary="One session")
async def get_session(session_id: uuid.UUID, db: Db, actor: Reader):
    return views.session(await usecases.get_session(db, session_id, actor))


@router.post("/sessions/{session_id}/start", response_model=views.Session, summary="Start a session (开班)")
async def start_session(session_id: uuid.UUID, request: Request, actor: Writer, body: domain.StartIn | None = None):
    cmd = body or domain.StartIn()

    async def command(conn, actor, today):
        return views.session(await usecases.start_session(conn, session_id, cmd, actor, today))

    return await run_write(
        request, actor, "sessions.start", {"session_id": str(session_id), **cmd.model_dump(mode="json")}, command
    )


@router.post("/sessions/{session_id}/complete", response_model=views.Session, summary="Complete a session (结业)")
async def complete_session(
    session_id: uuid.UUID, request: Request, actor: Writer, body: domain.CompleteIn | None = None
):
    """Closes the enrolments and emits ``changai.training.session.completed.v1`` with the person-times
    and the subsidy-eligible members (active members who passed). Attendees must all have a result;
    enrolments that never attended are closed as withdrawn (absent)."""
    cmd = body or domain.CompleteIn()

    async def command(conn, actor, today):
        return views.completed(await usecases.complete_session(conn, session_id, cmd, actor, today))

    return await run_write(
        request, actor, "sessions.complete", {"session_id": str(session_id), **cmd.model_dump(mode="json")}, command
    )


@router.post("/sessions/{session_id}/cancel", response_model=views.Session, summary="Cancel a session")
async def cancel_session(session_id: uuid.UUID, body: domain.CancelIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.session(await usecases.cancel_session(conn, session_id, body, actor, today))

    return await run_write(
        request, actor, "sessions.cancel", {"session_id": str(session_id), **body.model_dump(mode="json")}, command
    )
