"""Innovation studios (创新工作室), high-skill training bases (培训基地) and skill-master studios."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request

from services.training import domain, usecases
from services.training.api import views
from services.training.api.deps import Reader, Writer, run_write
from shared.events.training import StudioKind, StudioLevel
from shared.http import Db
from shared.pagination import Cursor, Limit, Page, decode_cursor, page
from shared.regions import RegionCode

router = APIRouter(tags=["studios"])


@router.post(
    "/studios",
    status_code=201,
    response_model=views.Studio,
    summary="Recognise an innovation studio, training base or skill-master studio",
)
async def recognise_studio(body: domain.StudioIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.studio(await usecases.recognise_studio(conn, body, actor, today))

    return await run_write(request, actor, "studios.recognise", body.model_dump(mode="json"), command, 201)


@router.get(
    "/studios", response_model=Page[views.Studio], summary="Studios and training bases, filtered, cursor-paginated"
)
async def list_studios(
    db: Db,
    actor: Reader,
    kind: StudioKind | None = None,
    level: StudioLevel | None = None,
    industry: domain.Text | None = Query(None, max_length=100),
    status: str | None = Query(None, pattern="^(recognised|revoked)$"),
    region_code: RegionCode | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_studios(
        db,
        actor,
        region_code=region_code,
        industry=industry,
        after=decode_cursor(cursor),
        limit=limit,
        kind=kind,
        level=level,
        status=status,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.studio)


@router.get("/studios/{studio_id}", response_model=views.Studio, summary="One studio, with its evaluations")
async def get_studio(studio_id: uuid.UUID, db: Db, actor: Reader):
    row, evaluations = await usecases.get_studio(db, studio_id, actor)
    return views.studio(row, evaluations)


@router.post("/studios/{studio_id}/evaluations", response_model=views.Studio, summary="Record an evaluation (考核评估)")
async def evaluate_studio(studio_id: uuid.UUID, body: domain.EvaluationIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.studio(await usecases.evaluate_studio(conn, studio_id, body, actor, today))

    return await run_write(
        request, actor, "studios.evaluate", {"studio_id": str(studio_id), **body.model_dump(mode="json")}, command
    )


@router.post("/studios/{studio_id}/revocation", response_model=views.Studio, summary="Revoke a studio's recognition")
async def revoke_studio(studio_id: uuid.UUID, body: domain.RevokeIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.studio(await usecases.revoke_studio(conn, studio_id, body, actor, today))

    return await run_write(
        request, actor, "studios.revoke", {"studio_id": str(studio_id), **body.model_dump(mode="json")}, command
    )
