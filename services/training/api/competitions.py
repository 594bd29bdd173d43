"""Labour (劳动竞赛) and skills (职业技能大赛) competitions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request

from services.training import domain, usecases
from services.training.api import views
from services.training.api.deps import Reader, Writer, run_write
from shared.events.training import CompetitionKind, Tier
from shared.http import Db
from shared.pagination import Cursor, Limit, Page, decode_cursor, page, uuid_key
from shared.regions import RegionCode

router = APIRouter(tags=["competitions"])


@router.post(
    "/competitions",
    status_code=201,
    response_model=views.Competition,
    summary="Announce a labour (劳动竞赛) or skills (职业技能大赛) competition",
)
async def announce_competition(body: domain.CompetitionIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.competition(await usecases.announce_competition(conn, body, actor, today))

    return await run_write(request, actor, "competitions.announce", body.model_dump(mode="json"), command, 201)


@router.get("/competitions", response_model=Page[views.Competition], summary="Competitions, filtered, cursor-paginated")
async def list_competitions(
    db: Db,
    actor: Reader,
    kind: CompetitionKind | None = None,
    tier: Tier | None = None,
    industry: domain.Text | None = Query(None, max_length=100),
    status: str | None = Query(None, pattern="^(announced|held|results_published)$"),
    region_code: RegionCode | None = None,
    year: int | None = Query(None, ge=2000, le=2100),
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_competitions(
        db,
        actor,
        region_code=region_code,
        industry=industry,
        after=decode_cursor(cursor),
        limit=limit,
        kind=kind,
        tier=tier,
        status=status,
        year=year,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.competition)


@router.get("/competitions/{competition_id}", response_model=views.Competition, summary="One competition")
async def get_competition(competition_id: uuid.UUID, db: Db, actor: Reader):
    return views.competition(await usecases.get_competition(db, competition_id, actor))


@router.post(
    "/competitions/{competition_id}/participants",
    response_model=views.ParticipantsRegistered,
    summary="Register participants: named members and/or a branch's reported headcount",
)
async def register_participants(
    competition_id: uuid.UUID, body: domain.ParticipantsIn, request: Request, actor: Writer
):
    async def command(conn, actor, today):
        return views.registered(await usecases.register_participants(conn, competition_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "competitions.participants",
        {"competition_id": str(competition_id), **body.model_dump(mode="json")},
        command,
    )


@router.get(
    "/competitions/{competition_id}/participants",
    response_model=Page[views.NamedParticipant],
    summary="Named participants, by member id, cursor-paginated (the totals are on the competition)",
)
async def list_participants(
    competition_id: uuid.UUID, db: Db, actor: Reader, limit: int = Limit, cursor: str | None = Cursor
):
    rows = await usecases.list_named_participants(
        db, competition_id, actor, after=decode_cursor(cursor, uuid_key), limit=limit
    )
    return page(rows, limit, key=lambda r: r["member_id"], view=views.named_participant)


@router.get(
    "/competitions/{competition_id}/headcounts",
    response_model=Page[views.ReportedHeadcount],
    summary="Headcounts the branches reported (summed per branch), by branch id, cursor-paginated",
)
async def list_headcounts(
    competition_id: uuid.UUID, db: Db, actor: Reader, limit: int = Limit, cursor: str | None = Cursor
):
    rows = await usecases.list_reported_headcounts(
        db, competition_id, actor, after=decode_cursor(cursor, uuid_key), limit=limit
    )
    return page(rows, limit, key=lambda r: r["branch_id"], view=views.reported_headcount)


@router.post("/competitions/{competition_id}/held", response_model=views.Competition, summary="Mark a competition held")
async def hold_competition(competition_id: uuid.UUID, body: domain.HeldIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.competition(await usecases.hold_competition(conn, competition_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "competitions.held",
        {"competition_id": str(competition_id), **body.model_dump(mode="json")},
        command,
    )


@router.post(
    "/competitions/{competition_id}/results", response_model=views.Competition, summary="Publish results with winners"
)
async def publish_results(
    competition_id: uuid.UUID, body: domain.CompetitionResultsIn, request: Request, actor: Writer
):
    async def command(conn, actor, today):
        return views.competition(await usecases.publish_results(conn, competition_id, body, actor, today))

    return await run_write(
        request,
        actor,
        "competitions.results",
        {"competition_id": str(competition_id), **body.model_dump(mode="json")},
        command,
    )
