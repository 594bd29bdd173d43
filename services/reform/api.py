"""Reform coordination's HTTP routes: thin — parse, authorise (scope), call the use case, shape the answer.

Scopes: ``reform:read`` (read the ledger), ``reform:report`` (a member unit's liaison officer:
progress, completion, documents; the token carries the ``unit`` claim), ``reform:admin`` (the
coordinating office: units, years, tasks, verification, pilots, city plans; a region-level token).
Every write takes ``Idempotency-Key``.
"""

from __future__ import annotations

import io
import uuid
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from services.reform import domain, usecases
from shared import regions
from shared.auth import Principal, require
from shared.clock import now_cn, today_cn
from shared.events.reform import PilotKind, PilotMode, TaskStatus, UnitKind
from shared.http import db_pool, write
from shared.pagination import Cursor, Limit, Page, decode_cursor, page

router = APIRouter(prefix="/v1")
READ, REPORT, ADMIN = require("reform:read"), require("reform:report"), require("reform:admin")
YearPath = Path(ge=2000, le=2100)
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# -- answers ---------------------------------------------------------------------------------
class UnitOut(BaseModel):
    id: uuid.UUID
    name: str
    kind: UnitKind
    liaison_name: str | None
    liaison_phone_masked: str | None


class YearOut(BaseModel):
    year: int
    status: str
    opened_on: date
    closed_on: date | None
    units: int
    tasks: int
    completed: int


class TaskOut(BaseModel):
    id: uuid.UUID
    year: int
    number: int
    label: str
    title: str
    content: str
    measures: str
    source_clause: str
    lead_unit_id: uuid.UUID
    co_unit_ids: list[uuid.UUID]
    deadline: date
    status: TaskStatus
    percent: int
    completed_on: date | None
    last_report_at: datetime | None
    overdue: bool


class HistoryOut(BaseModel):
    at: datetime
    actor: str
    action: str
    unit_id: uuid.UUID | None
    percent: int | None
    text: str
    links: list[str]
    detail: dict[str, Any]


class DocumentOut(BaseModel):
    id: uuid.UUID
    unit_id: uuid.UUID
    title: str
    doc_number: str
    issued_on: date
    task_ids: list[uuid.UUID]
    link: str | None


class PilotOut(BaseModel):
    id: uuid.UUID
    year: int
    kind: PilotKind
    mode: PilotMode
    name: str
    region_code: str
    content: str
    responsible_unit_id: uuid.UUID | None


class CityPlanOut(BaseModel):
    id: uuid.UUID
    city_code: str
    city_name: str
    title: str
    doc_number: str | None
    issued_on: date


class UnitReport(BaseModel):
    unit_id: uuid.UUID
    unit: str
    tasks: int
    completed: int
    completion_rate: float


class OverdueTask(BaseModel):
    task_id: uuid.UUID
    number: str
    title: str
    lead_unit: str
    deadline: date
    days_overdue: int
    status: TaskStatus


class ReportDocument(BaseModel):
    unit: str
    doc_number: str
    title: str
    issued_on: date


class ReportPilot(BaseModel):
    kind: PilotKind
    mode: PilotMode
    name: str
    region_code: str


class ReportTask(BaseModel):
    number: str
    title: str
    lead_unit: str
    deadline: date
    status: TaskStatus
    percent: int


class YearReportOut(BaseModel):
    year: int
    status: str
    tasks: int
    completed: int
    completion_rate: float
    by_status: dict[str, int]
    by_unit: list[UnitReport]
    overdue: list[OverdueTask]
    documents: list[ReportDocument]
    pilots: list[ReportPilot]
    task_list: list[ReportTask]


def unit_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "name": r["name"],
        "kind": r["kind"],
        "liaison_name": r["liaison_name"],
        "liaison_phone_masked": r["liaison_phone_masked"],
    }


def year_view(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "year": r["year"],
        "status": r["status"],
        "opened_on": r["opened_on"].isoformat(),
        "closed_on": r["closed_on"].isoformat() if r["closed_on"] else None,
        "units": r["units"],
        "tasks": r["tasks"],
        "completed": r["completed"],
    }


def task_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "year": r["year"],
        "number": r["number"],
        "label": f"{r['year']}-{r['number']}",
        "title": r["title"],
        "content": r["content"],
        "measures": r["measures"],
        "source_clause": r["source_clause"],
        "lead_unit_id": str(r["lead_unit_id"]),
        "co_unit_ids": [str(u) for u in r["co_unit_ids"]],
        "deadline": r["deadline"].isoformat(),
        "status": r["status"],
        "percent": r["percent"],
        "completed_on": r["completed_on"].isoformat() if r["completed_on"] else None,
        "last_report_at": r["last_report_at"].isoformat() if r["last_report_at"] else None,
        "overdue": r["status"] != TaskStatus.completed and r["deadline"] < today_cn(),
    }


def history_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "at": r["at"].isoformat(),
        "actor": r["actor"],
        "action": r["action"],
        "unit_id": str(r["unit_id"]) if r["unit_id"] else None,
        "percent": r["percent"],
        "text": r["text"],
        "links": list(r["links"]),
        "detail": orjson.loads(r["detail"]) if r["detail"] else {},
    }


def document_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "unit_id": str(r["unit_id"]),
        "title": r["title"],
        "doc_number": r["doc_number"],
        "issued_on": r["issued_on"].isoformat(),
        "task_ids": [str(t) for t in r["task_ids"]],
        "link": r["link"],
    }


def pilot_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "year": r["year"],
        "kind": r["kind"],
        "mode": r["mode"],
        "name": r["name"],
        "region_code": r["region_code"],
        "content": r["content"],
        "responsible_unit_id": str(r["responsible_unit_id"]) if r["responsible_unit_id"] else None,
    }


def plan_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "city_code": r["city_code"],
        "city_name": getattr(regions.get(r["city_code"]), "name", r["city_code"]),
        "title": r["title"],
        "doc_number": r["doc_number"],
        "issued_on": r["issued_on"].isoformat(),
    }


# -- member units ------------------------------------------------------------------------------
@router.post(
    "/units",
    status_code=201,
    response_model=UnitOut,
    tags=["units"],
    summary="Register a member unit of the coordination group (the office)",
)
async def register_unit(body: domain.UnitIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        outcome = await usecases.register_unit(conn, body, actor, request.app.state.cipher)
        return 201, unit_view(outcome.record)

    return await write(request, actor, "units.register", body.model_dump(mode="json"), run)


@router.get("/units", response_model=Page[UnitOut], tags=["units"], summary="Member units, by name")
async def list_units(
    request: Request, limit: int = Limit, cursor: str | None = Cursor, actor: Principal = Depends(READ)
):
    rows = await usecases.units(db_pool(request), actor, decode_cursor(cursor, str), limit)
    return page(rows, limit, key=lambda r: r["name"], view=unit_view)


@router.get("/units/{unit_id}", response_model=UnitOut, tags=["units"], summary="One member unit")
async def get_unit(unit_id: uuid.UUID, request: Request, actor: Principal = Depends(READ)):
    return unit_view(await usecases.unit(db_pool(request), unit_id, actor))


@router.put(
    "/units/{unit_id}/liaison",
    response_model=UnitOut,
    tags=["units"],
    summary="Change the unit's liaison officer (the office, or the unit itself)",
)
async def change_liaison(
    unit_id: uuid.UUID, body: domain.LiaisonIn, request: Request, actor: Principal = Depends(REPORT)
):
    async def run(conn):
        outcome = await usecases.change_liaison(conn, unit_id, body, actor, request.app.state.cipher)
        return 200, unit_view(outcome.record)

    return await write(request, actor, f"units.liaison:{unit_id}", body.model_dump(mode="json"), run)


# -- years ---------------------------------------------------------------------------------------
@router.post(
    "/years", status_code=201, response_model=YearOut, tags=["years"], summary="Open a year's task ledger (the office)"
)
async def open_year(body: domain.YearIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 201, year_view((await usecases.open_year(conn, body, actor, today_cn())).record)

    return await write(request, actor, "years.open", body.model_dump(mode="json"), run)


@router.get("/years", response_model=Page[YearOut], tags=["years"], summary="The ledgers, by year")
async def list_years(
    request: Request, limit: int = Limit, cursor: str | None = Cursor, actor: Principal = Depends(READ)
):
    rows = await usecases.years(db_pool(request), actor, decode_cursor(cursor), limit)
    return page(rows, limit, key=lambda r: r["year"], view=lambda r: year_view(dict(r)))


@router.post(
    "/years/{year}/units",
    response_model=YearOut,
    tags=["years"],
    summary="Add member units to a year's ledger (the office)",
)
async def add_year_units(
    body: domain.YearUnitsIn, request: Request, year: int = YearPath, actor: Principal = Depends(ADMIN)
):
    async def run(conn):
        return 200, year_view((await usecases.add_year_units(conn, year, body, actor)).record)

    return await write(request, actor, f"years.units:{year}", body.model_dump(mode="json"), run)


@router.post(
    "/years/{year}:close",
    response_model=YearOut,
    tags=["years"],
    summary="Close a year: every task completed; then it takes no more changes (the office)",
)
async def close_year(request: Request, year: int = YearPath, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 200, year_view((await usecases.close_year(conn, year, actor, today_cn())).record)

    return await write(request, actor, f"years.close:{year}", {}, run)


@router.get(
    "/years/{year}/report",
    response_model=YearReportOut,
    tags=["years"],
    summary="The advancement meeting's report (推进会): tasks by status and unit, overdue, documents, pilots",
)
async def year_report(request: Request, year: int = YearPath, actor: Principal = Depends(READ)):
    return await usecases.year_report(db_pool(request), year, actor, today_cn())


@router.get(
    "/years/{year}/report.xlsx",
    tags=["years"],
    response_class=StreamingResponse,
    responses={200: {"content": {XLSX_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
    summary="The same report as a printable workbook (Chinese)",
)
async def year_report_xlsx(request: Request, year: int = YearPath, actor: Principal = Depends(READ)):
    from services.reform.report import workbook

    report = await usecases.year_report(db_pool(request), year, actor, today_cn())
    data = workbook(report)
    return StreamingResponse(
        io.BytesIO(data),
        media_type=XLSX_TYPE,
        headers={"Content-Disposition": f'attachment; filename="reform-ledger-{year}.xlsx"'},
    )


# -- tasks -----------------------------------------------------------------------------------------
@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskOut,
    tags=["tasks"],
    summary="Add a task to a year's ledger and assign it (the office)",
)
async def add_task(body: domain.TaskIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 201, task_view((await usecases.add_task(conn, body, actor)).record)

    return await write(request, actor, "tasks.add", body.model_dump(mode="json"), run)


@router.get(
    "/tasks", response_model=Page[TaskOut], tags=["tasks"], summary="Tasks (a liaison sees its unit's; the office all)"
)
async def list_tasks(
    request: Request,
    year: int | None = Query(None, ge=2000, le=2100),
    status: TaskStatus | None = None,
    unit_id: uuid.UUID | None = None,
    overdue: bool = Query(False, description="only tasks past their deadline and not completed"),
    limit: int = Limit,
    cursor: str | None = Cursor,
    actor: Principal = Depends(READ),
):
    rows = await usecases.tasks(
        db_pool(request),
        actor,
        year=year,
        status=status,
        unit_id=unit_id,
        overdue_on=today_cn() if overdue else None,
        after=decode_cursor(cursor, int),
        limit=limit,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=task_view)


@router.get("/tasks/{task_id}", response_model=TaskOut, tags=["tasks"], summary="One task")
async def get_task(task_id: uuid.UUID, request: Request, actor: Principal = Depends(READ)):
    return task_view(await usecases.task(db_pool(request), task_id, actor))


@router.get(
    "/tasks/{task_id}/history",
    response_model=Page[HistoryOut],
    tags=["tasks"],
    summary="Everything that happened to a task, in order",
)
async def task_history(
    task_id: uuid.UUID,
    request: Request,
    limit: int = Limit,
    cursor: str | None = Cursor,
    actor: Principal = Depends(READ),
):
    rows = await usecases.task_history(db_pool(request), task_id, actor, decode_cursor(cursor, int), limit)
    return page(rows, limit, key=lambda r: r["seq"], view=history_view)


@router.post(
    "/tasks/{task_id}:assign",
    response_model=TaskOut,
    tags=["tasks"],
    summary="Re-assign a task (the office); the history keeps the previous lead and deadline",
)
async def reassign(task_id: uuid.UUID, body: domain.AssignIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 200, task_view((await usecases.reassign(conn, task_id, body, actor)).record)

    return await write(request, actor, f"tasks.assign:{task_id}", body.model_dump(mode="json"), run)


@router.post(
    "/tasks/{task_id}:report-progress",
    response_model=TaskOut,
    tags=["tasks"],
    summary="Report progress (a unit of the task)",
)
async def report_progress(
    task_id: uuid.UUID, body: domain.ProgressIn, request: Request, actor: Principal = Depends(REPORT)
):
    async def run(conn):
        return 200, task_view((await usecases.report_progress(conn, task_id, body, actor, now_cn())).record)

    return await write(request, actor, f"tasks.progress:{task_id}", body.model_dump(mode="json"), run)


@router.post(
    "/tasks/{task_id}:report-completion",
    response_model=TaskOut,
    tags=["tasks"],
    summary="Report completion with evidence (the lead unit only)",
)
async def report_completion(
    task_id: uuid.UUID, body: domain.CompletionIn, request: Request, actor: Principal = Depends(REPORT)
):
    async def run(conn):
        return 200, task_view((await usecases.report_completion(conn, task_id, body, actor, now_cn())).record)

    return await write(request, actor, f"tasks.completion:{task_id}", body.model_dump(mode="json"), run)


@router.post(
    "/tasks/{task_id}:verify",
    response_model=TaskOut,
    tags=["tasks"],
    summary="Verify a reported completion: the task is completed (the office)",
)
async def verify(task_id: uuid.UUID, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 200, task_view((await usecases.verify_completion(conn, task_id, actor, today_cn())).record)

    return await write(request, actor, f"tasks.verify:{task_id}", {}, run)


@router.post(
    "/tasks/{task_id}:send-back",
    response_model=TaskOut,
    tags=["tasks"],
    summary="Send a reported completion back, with the reason (the office)",
)
async def send_back(task_id: uuid.UUID, body: domain.SendBackIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 200, task_view((await usecases.send_back(conn, task_id, body, actor)).record)

    return await write(request, actor, f"tasks.send_back:{task_id}", body.model_dump(mode="json"), run)


# -- documents, pilots, city plans -------------------------------------------------------------------
@router.post(
    "/documents",
    status_code=201,
    response_model=DocumentOut,
    tags=["documents"],
    summary="Register a policy document a member unit issued",
)
async def register_document(body: domain.DocumentIn, request: Request, actor: Principal = Depends(REPORT)):
    async def run(conn):
        return 201, document_view((await usecases.register_document(conn, body, actor)).record)

    return await write(request, actor, "documents.register", body.model_dump(mode="json"), run)


@router.get("/documents", response_model=Page[DocumentOut], tags=["documents"], summary="Policy documents")
async def list_documents(
    request: Request,
    unit_id: uuid.UUID | None = None,
    year: int | None = Query(None, ge=2000, le=2100),
    limit: int = Limit,
    cursor: str | None = Cursor,
    actor: Principal = Depends(READ),
):
    rows = await usecases.documents(
        db_pool(request), actor, unit_id=unit_id, year=year, after=decode_cursor(cursor, int), limit=limit
    )
    return page(rows, limit, key=lambda r: r["seq"], view=document_view)


@router.post(
    "/pilots", status_code=201, response_model=PilotOut, tags=["pilots"], summary="Designate a pilot (the office)"
)
async def designate_pilot(body: domain.PilotIn, request: Request, actor: Principal = Depends(ADMIN)):
    async def run(conn):
        return 201, pilot_view((await usecases.designate_pilot(conn, body, actor)).record)

    return await write(request, actor, "pilots.designate", body.model_dump(mode="json"), run)


@router.get("/pilots", response_model=Page[PilotOut], tags=["pilots"], summary="Pilots, cut to the caller's region")
async def list_pilots(
    request: Request,
    year: int | None = Query(None, ge=2000, le=2100),
    kind: PilotKind | None = None,
    region: str | None = Query(None, pattern=r"^\d{6}$"),
    limit: int = Limit,
    cursor: str | None = Cursor,
    actor: Principal = Depends(READ),
):
    rows = await usecases.pilots(
        db_pool(request),
        actor,
        year=year,
        kind=kind,
        region=region,
        after=decode_cursor(cursor, int),
        limit=limit,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=pilot_view)


@router.put(
    "/city-plans/{city_code}",
    response_model=CityPlanOut,
    responses={201: {"model": CityPlanOut, "description": "recorded now (200: it was, and is replaced)"}},
    tags=["city plans"],
    summary="Record a city's implementation plan (the office)",
)
async def record_city_plan(
    body: domain.CityPlanIn,
    request: Request,
    city_code: str = Path(pattern=r"^\d{6}$"),
    actor: Principal = Depends(ADMIN),
):
    async def run(conn):
        outcome = await usecases.record_city_plan(conn, city_code, body, actor)
        return (201 if outcome.created else 200), plan_view(outcome.record)

    return await write(request, actor, f"city_plans.record:{city_code}", body.model_dump(mode="json"), run)


@router.get(
    "/city-plans",
    response_model=Page[CityPlanOut],
    tags=["city plans"],
    summary="City implementation plans, cut to the caller's region",
)
async def list_city_plans(
    request: Request, limit: int = Limit, cursor: str | None = Cursor, actor: Principal = Depends(READ)
):
    rows = await usecases.city_plans(db_pool(request), actor, decode_cursor(cursor, str), limit)
    return page(rows, limit, key=lambda r: r["city_code"], view=plan_view)
