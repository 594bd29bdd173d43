"""Programmes (培训项目)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from services.training import domain, usecases
from services.training.api import views
from services.training.api.deps import Reader, Writer, run_write
from shared.events.training import ProviderKind, SubsidyCategory
from shared.http import Db
from shared.pagination import Cursor, Limit, Page, decode_cursor, page

router = APIRouter(tags=["programmes"])


@router.post("/programmes", status_code=201, response_model=views.Programme, summary="Register a programme (培训项目)")
async def register_programme(body: domain.ProgrammeIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.programme(await usecases.register_programme(conn, body, actor, today))

    return await run_write(request, actor, "programmes.register", body.model_dump(mode="json"), command, 201)


@router.get("/programmes", response_model=Page[views.Programme], summary="Programmes, filtered, cursor-paginated")
async def list_programmes(
    db: Db,
    actor: Reader,
    subsidy_category: SubsidyCategory | None = None,
    provider_kind: ProviderKind | None = None,
    occupation: domain.Text | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_programmes(
        db,
        actor,
        after=decode_cursor(cursor),
        limit=limit,
        subsidy_category=subsidy_category,
        provider_kind=provider_kind,
        occupation=occupation,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.programme)


@router.get("/programmes/{programme_id}", response_model=views.Programme, summary="One programme")
async def get_programme(programme_id: uuid.UUID, db: Db, actor: Reader):
    return views.programme(await usecases.get_programme(db, programme_id, actor))
