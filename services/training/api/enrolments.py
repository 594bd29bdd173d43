"""Enrolments (报名): one or many members at a time, attendance, results, withdrawal."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request

from services.training import domain, usecases
from services.training.api import views
from services.training.api.deps import Reader, Writer, run_write
from shared.http import Db
from shared.pagination import Cursor, Limit, Page, decode_cursor, page

router = APIRouter(tags=["enrolments"])
STATUS = Query(None, pattern="^(enrolled|attended|passed|failed|withdrawn)$")


@router.post(
    "/sessions/{session_id}/enrolments",
    status_code=201,
    response_model=views.Enrolment,
    summary="Enrol one member (报名)",
)
async def enrol(session_id: uuid.UUID, body: domain.EnrolIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.enrolment(await usecases.enrol(conn, session_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "enrolments.enrol",
        {"session_id": str(session_id), **body.model_dump(mode="json")},
        command,
        201,
    )


@router.post(
    "/sessions/{session_id}/enrolments/bulk",
    response_model=views.BulkEnrolled,
    response_model_exclude_none=True,
    summary="Enrol many members; a result per member",
)
async def enrol_bulk(session_id: uuid.UUID, body: domain.BulkEnrolIn, request: Request, actor: Writer):
    """Members get places in request order until the session is full; each item says ``enrolled``
    (with its enrolment id) or ``refused`` (with a problem: not-a-member, member-not-active,
    already-enrolled, session-full). A session that no longer takes enrolments refuses the whole call."""

    async def command(conn, actor, today):
        return views.bulk_enrolled(await usecases.enrol_members(conn, session_id, body.member_ids, actor, today))

    return await run_write(
        request,
        actor,
        "enrolments.bulk",
        {"session_id": str(session_id), **body.model_dump(mode="json")},
        command,
        exclude_none=True,
    )


@router.get("/sessions/{session_id}/enrolments", response_model=Page[views.Enrolment], summary="A session's enrolments")
async def session_enrolments(
    session_id: uuid.UUID,
    db: Db,
    actor: Reader,
    status: str | None = STATUS,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_session_enrolments(
        db, session_id, actor, after=decode_cursor(cursor), limit=limit, status=status
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.enrolment)


@router.post(
    "/sessions/{session_id}/attendance",
    response_model=views.AttendanceRecorded,
    response_model_exclude_none=True,
    summary="Record attendance; a result per member",
)
async def record_attendance(session_id: uuid.UUID, body: domain.AttendanceIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.attendance(session_id, await usecases.record_attendance(conn, session_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "enrolments.attendance",
        {"session_id": str(session_id), **body.model_dump(mode="json")},
        command,
        exclude_none=True,
    )


@router.post(
    "/sessions/{session_id}/results",
    response_model=views.ResultsRecorded,
    response_model_exclude_none=True,
    summary="Record results; a result per member",
)
async def record_results(session_id: uuid.UUID, body: domain.ResultsIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.results(session_id, await usecases.record_results(conn, session_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "enrolments.results",
        {"session_id": str(session_id), **body.model_dump(mode="json")},
        command,
        exclude_none=True,
    )


@router.get("/enrolments", response_model=Page[views.Enrolment], summary="Enrolments, filtered, cursor-paginated")
async def list_enrolments(
    db: Db,
    actor: Reader,
    member_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    status: str | None = STATUS,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_enrolments(
        db, actor, after=decode_cursor(cursor), limit=limit, member_id=member_id, session_id=session_id, status=status
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.enrolment)


@router.get("/enrolments/{enrolment_id}", response_model=views.Enrolment, summary="One enrolment")
async def get_enrolment(enrolment_id: uuid.UUID, db: Db, actor: Reader):
    return views.enrolment(await usecases.get_enrolment(db, enrolment_id, actor))


@router.post("/enrolments/{enrolment_id}/attendance", response_model=views.Enrolment, summary="Record one attendance")
async def attend_one(enrolment_id: uuid.UUID, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.enrolment(await usecases.attend_one(conn, enrolment_id, actor, today))

    return await run_write(request, actor, "enrolments.attend", {"enrolment_id": str(enrolment_id)}, command)


@router.post(
    "/enrolments/{enrolment_id}/result", response_model=views.Enrolment, summary="Record one result (passed / failed)"
)
async def assess_one(enrolment_id: uuid.UUID, body: domain.ResultIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.enrolment(await usecases.assess_one(conn, enrolment_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "enrolments.assess",
        {"enrolment_id": str(enrolment_id), **body.model_dump(mode="json")},
        command,
    )


@router.post(
    "/enrolments/{enrolment_id}/withdrawal", response_model=views.Enrolment, summary="Withdraw an enrolment (退训)"
)
async def withdraw_one(enrolment_id: uuid.UUID, request: Request, actor: Writer, body: domain.WithdrawIn | None = None):
    cmd = body or domain.WithdrawIn()

    async def command(conn, actor, today):
        return views.enrolment(await usecases.withdraw_one(conn, enrolment_id, cmd, actor, today))

    return await run_write(
        request,
        actor,
        "enrolments.withdraw",
        {"enrolment_id": str(enrolment_id), **cmd.model_dump(mode="json")},
        command,
    )
