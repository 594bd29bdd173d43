"""Reference data, training's view of a member, and the person-times summary."""

from __future__ import annotations

import uuid
from datetime import date

from fastapi import APIRouter, Query

from services.training import usecases
from services.training.api import views
from services.training.api.deps import Reader
from shared.http import Db
from shared.regions import RegionCode

router = APIRouter()


@router.get(
    "/reference/industries",
    tags=["reference"],
    response_model=list[views.Industry],
    summary="The nine key industries (九大重点产业)",
)
async def key_industries() -> list[views.Industry]:
    return views.industries()


@router.get(
    "/members/{member_id}",
    tags=["members"],
    response_model=views.Member,
    summary="Training's view of a member (read model)",
)
async def get_member(member_id: uuid.UUID, db: Db, actor: Reader) -> views.Member:
    return views.member(await usecases.get_member(db, member_id, actor))


@router.get(
    "/summary/person-times",
    tags=["summary"],
    response_model=views.PersonTimes,
    summary="Person-times and distinct persons by region and subsidy category for a period",
)
async def person_times_summary(
    db: Db,
    actor: Reader,
    start: date = Query(..., alias="from", description="first completion date"),
    end: date = Query(..., alias="to", description="last completion date"),
    region_code: RegionCode | None = None,
    by: str = Query("city", pattern="^(city|county)$", description="group by city or by county"),
):
    """Counts the sessions completed in the period: person-times are enrolments that completed them
    (passed or failed); persons are distinct members, so one worker trained twice is 2 person-times, 1 person."""
    rows = await usecases.person_times(db, actor, start=start, end=end, region_code=region_code, by=by)
    return views.person_times(rows, start, end, region_code or actor.region, by)
