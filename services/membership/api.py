"""Membership's HTTP routes, thin: parse, authorise (scope), call the use case, shape the answer.

Rules live in ``domain.py``, the commands in ``usecases.py``, SQL in ``store.py``, the bulk import's
streaming in ``importer.py``. Refusals are ``shared.errors`` exceptions that ``shared.http`` turns into
RFC 9457 problems; every list answers ``{"items": [...], "next_cursor": ...}`` (``shared.pagination``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import uuid
from datetime import date, datetime
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from services.membership import domain, export, usecases
from services.membership.importer import ImportFailed, TextDecoder
from services.membership.pii import Vault
from shared import regions
from shared.auth import Principal, require
from shared.clock import today_cn
from shared.errors import NotFound
from shared.http import Db, body_limit, problem_response, write
from shared.pagination import Cursor, Limit, Page, decode_cursor, page, uuid_key
from shared.problems import Problem

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

READ, WRITE = "membership:read", "membership:write"
REVEAL, AUDIT = "membership:reveal", "membership:audit"


def vault(request: Request) -> Vault:
    return request.app.state.vault


async def _write(request: Request, principal: Principal, operation: str, payload, fn, headers=None):
    """``shared.http.write`` with a retry when PostgreSQL broke a deadlock (the loser's work rolled back)."""
    for attempt in range(3):
        try:
            return await write(request, principal, operation, payload, fn, headers)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == 2:
                raise Problem(503, "busy", "Concurrent changes collided; retry the request") from None
            await asyncio.sleep(0.02 * (attempt + 1))


def _time_key(text: str) -> tuple[datetime, uuid.UUID]:
    """A cursor over (time, id): ``2021-03-01T08:00:00+00:00|<uuid>``."""
    moment, _, ident = text.partition("|")
    return datetime.fromisoformat(moment), uuid.UUID(ident)


# -- answers ---------------------------------------------------------------------
class RegionOut(BaseModel):
    code: str
    name: str
    level: Literal["region", "city", "county"]
    parent: str | None
    city_code: str | None


class RegionDetailOut(RegionOut):
    children: list[RegionOut]


class BranchOut(BaseModel):
    id: uuid.UUID
    name: str
    credit_code: str
    region_code: str
    city_code: str | None
    industry_section: str
    kind: str
    parent_id: uuid.UUID | None
    founded_on: date
    status: Literal["active", "merged", "dissolved"]
    ended_on: date | None
    merged_into: uuid.UUID | None
    transferred_to: uuid.UUID | None


class BranchDetailOut(BranchOut):
    member_count: int
    open_stations: int


class BranchEndedOut(BranchOut):
    members_moved: int


class MemberOut(BaseModel):
    id: uuid.UUID
    branch_id: uuid.UUID
    name: str
    id_number_masked: str
    phone_masked: str | None
    birth_year: int
    sex: Literal["male", "female"]
    home_region_code: str
    region_code: str
    city_code: str | None
    employment_form: str
    occupation: str | None
    skill_level: int | None
    skill_level_name: str | None
    status: Literal["active", "left", "lapsed"]
    joined_on: date
    ended_on: date | None


class TransferOut(BaseModel):
    id: uuid.UUID
    from_branch_id: uuid.UUID
    to_branch_id: uuid.UUID
    from_region_code: str
    to_region_code: str
    reason: str | None
    transferred_on: date
    recorded_at: datetime


class RevealedOut(BaseModel):
    member_id: uuid.UUID
    id_number: str
    phone: str | None
    audit_id: uuid.UUID
    revealed_at: datetime


class RevealAuditOut(BaseModel):
    id: uuid.UUID
    by: str
    reason: str
    fields: list[str]
    trace_id: str | None
    revealed_at: datetime


class LookupAuditOut(BaseModel):
    id: uuid.UUID
    by: str
    scope_region: str
    outcome: Literal["found", "not_found", "rate_limited"]
    member_id: uuid.UUID | None
    trace_id: str | None
    looked_up_at: datetime


class StationOut(BaseModel):
    id: uuid.UUID
    name: str
    branch_id: uuid.UUID
    region_code: str
    city_code: str | None
    services: list[str]
    status: Literal["open", "closed"]
    opened_on: date
    closed_on: date | None


class ImportRowsOut(BaseModel):
    total: int
    accepted: int
    rejected: int
    already_members: int


class ImportOut(BaseModel):
    id: uuid.UUID
    status: Literal["running", "completed", "failed"]
    format: Literal["csv", "ndjson"]
    encoding: str | None
    default_branch_id: uuid.UUID | None
    rows: ImportRowsOut
    bytes: int
    bytes_expected: int | None
    progress: float | None
    sha256: str | None
    duplicate_of: uuid.UUID | None
    ignored_columns: list[str]
    error: str | None
    submitted_by: str
    started_at: datetime
    finished_at: datetime | None


class ImportRowOut(BaseModel):
    row: int
    outcome: Literal["accepted", "rejected", "already_member"]
    member_id: uuid.UUID | None
    field: str | None = None
    reason: str | None = None


class ImportDetailOut(ImportOut):
    report: Page[ImportRowOut]


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _str(value) -> str | None:
    return str(value) if value is not None else None


def branch_view(row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "credit_code": row["credit_code"],
        "region_code": row["region_code"],
        "city_code": regions.city_of(row["region_code"]),
        "industry_section": row["industry_section"],
        "kind": row["kind"],
        "parent_id": _str(row["parent_id"]),
        "founded_on": row["founded_on"].isoformat(),
        "status": row["status"],
        "ended_on": _iso(row["ended_on"]),
        "merged_into": _str(row["merged_into"]),
        "transferred_to": _str(row["transferred_to"]),
    }


def member_view(row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "branch_id": str(row["branch_id"]),
        "name": row["name"],
        "id_number_masked": row["id_masked"],
        "phone_masked": row["phone_masked"],
        "birth_year": row["birth_year"],
        "sex": row["sex"],
        "home_region_code": row["home_region_code"],
        "region_code": row["region_code"],
        "city_code": regions.city_of(row["region_code"]),
        "employment_form": row["employment_form"],
        "occupation": row["occupation"],
        "skill_level": row["skill_level"],
        "skill_level_name": domain.SKILL_LEVELS.get(row["skill_level"]),
        "status": row["status"],
        "joined_on": row["joined_on"].isoformat(),
        "ended_on": _iso(row["ended_on"]),
    }


def station_view(row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "branch_id": str(row["branch_id"]),
        "region_code": row["region_code"],
        "city_code": regions.city_of(row["region_code"]),
        "services": list(row["services"]),
        "status": row["status"],
        "opened_on": row["opened_on"].isoformat(),
        "closed_on": _iso(row["closed_on"]),
    }


def region_view(r: regions.Region) -> dict[str, Any]:
    return {"code": r.code, "name": r.name, "level": r.level, "parent": r.parent, "city_code": r.city}


def import_view(row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "format": row["format"],
        "encoding": row["encoding"],
        "default_branch_id": _str(row["default_branch_id"]),
        "rows": {
            "total": row["rows_total"],
            "accepted": row["accepted"],
            "rejected": row["rejected"],
            "already_members": row["already_members"],
        },
        "bytes": row["bytes_read"],
        "bytes_expected": row["bytes_expected"],
        "progress": (
            round(min(row["bytes_read"] / row["bytes_expected"], 1.0), 4)
            if row["bytes_expected"]
            else (1.0 if row["status"] == "completed" else None)
        ),
        "sha256": row["file_sha256"].hex() if row["file_sha256"] else None,
        "duplicate_of": _str(row["duplicate_of"]),
        "ignored_columns": list(row["ignored_columns"]),
        "error": row["error"],
        "submitted_by": row["subject"],
        "started_at": row["started_at"].isoformat(),
        "finished_at": _iso(row["finished_at"]),
    }


def transfer_view(t) -> dict[str, Any]:
    return {
        "id": str(t["id"]),
        "from_branch_id": str(t["from_branch_id"]),
        "to_branch_id": str(t["to_branch_id"]),
        "from_region_code": t["from_region_code"],
        "to_region_code": t["to_region_code"],
        "reason": t["reason"],
        "transferred_on": t["transferred_on"].isoformat(),
        "recorded_at": t["created_at"].isoformat(),
    }


def reveal_audit_view(r) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "by": r["subject"],
        "reason": r["reason"],
        "fields": list(r["fields"]),
        "trace_id": r["trace_id"],
        "revealed_at": r["revealed_at"].isoformat(),
    }


def lookup_audit_view(r) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "by": r["subject"],
        "scope_region": r["scope_region"],
        "outcome": r["outcome"],
        "member_id": _str(r["member_id"]),
        "trace_id": r["trace_id"],
        "looked_up_at": r["looked_up_at"].isoformat(),
    }


def report_row_view(r) -> dict[str, Any]:
    return {
        "row": r["row"],
        "outcome": r["outcome"],
        "member_id": _str(r["member_id"]),
        **({"field": r["field"], "reason": r["reason"]} if r["outcome"] != "accepted" else {}),
    }


# -- regions ---------------------------------------------------------------------
@router.get(
    "/regions",
    tags=["regions"],
    response_model=Page[RegionOut],
    summary="Ningxia's regions (GB/T 2260): the region, 5 cities, 22 counties",
)
async def list_regions(
    level: Literal["region", "city", "county"] | None = None,
    parent: str | None = Query(None, max_length=6, description="only the children of this code"),
    limit: int = Limit,
    cursor: str | None = Cursor,
) -> dict:
    after = decode_cursor(cursor, str)
    rows = sorted(
        (
            r
            for r in regions.REGIONS.values()
            if (level is None or r.level == level)
            and (parent is None or r.parent == parent)
            and (after is None or r.code > after)
        ),
        key=lambda r: r.code,
    )
    return page(rows[: limit + 1], limit, lambda r: r.code, region_view)


@router.get("/regions/{code}", tags=["regions"], response_model=RegionDetailOut, summary="One region with its children")
async def get_region(code: str) -> dict:
    region = regions.get(code)
    if region is None:
        raise NotFound("region", code)
    return {**region_view(region), "children": [region_view(r) for r in regions.REGIONS.values() if r.parent == code]}


# -- branches --------------------------------------------------------------------
@router.post(
    "/branches",
    status_code=201,
    tags=["branches"],
    response_model=BranchOut,
    summary="Establish a union branch (成立基层工会)",
)
async def establish_branch(body: domain.BranchIn, request: Request, principal: Principal = Depends(require(WRITE))):
    async def run(conn):
        return 201, branch_view(await usecases.establish_branch(conn, body, principal, today_cn()))

    return await _write(request, principal, "branches.establish", body.model_dump(mode="json"), run)


@router.get(
    "/branches", tags=["branches"], response_model=Page[BranchOut], summary="Branches, filtered, a page at a time"
)
async def list_branches(
    pool: Db,
    region: str | None = Query(None, description="city or county, and below"),
    industry_section: str | None = Query(None, pattern=r"^[A-T]$"),
    kind: domain.BranchKind | None = None,
    status: Literal["active", "merged", "dissolved"] | None = None,
    founded_from: date | None = None,
    founded_to: date | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(READ)),
) -> dict:
    rows = await usecases.list_branches(
        pool,
        principal,
        region=region,
        industry_section=industry_section,
        kind=kind.value if kind else None,
        status=status,
        founded_from=founded_from,
        founded_to=founded_to,
        after=decode_cursor(cursor, int),
        limit=limit + 1,
    )
    return page(rows, limit, lambda r: r["seq"], branch_view)


@router.get(
    "/branches/{branch_id}",
    tags=["branches"],
    response_model=BranchDetailOut,
    summary="One union branch, with its member count",
)
async def get_branch(branch_id: uuid.UUID, pool: Db, principal: Principal = Depends(require(READ))) -> dict:
    found = await usecases.get_branch(pool, branch_id, principal)
    return {**branch_view(found.branch), "member_count": found.member_count, "open_stations": found.open_stations}


@router.patch("/branches/{branch_id}", tags=["branches"], response_model=BranchOut, summary="Update a branch's details")
async def update_branch(
    branch_id: uuid.UUID, body: domain.BranchPatch, request: Request, principal: Principal = Depends(require(WRITE))
):
    async def run(conn):
        return 200, branch_view(await usecases.update_branch(conn, branch_id, body, principal, today_cn()))

    return await _write(
        request, principal, f"branches.update:{branch_id}", body.model_dump(mode="json", exclude_unset=True), run
    )


@router.post(
    "/branches/{branch_id}:merge",
    tags=["branches"],
    response_model=BranchEndedOut,
    summary="Merge a branch into another: its members and stations move with it",
)
async def merge_branch(
    branch_id: uuid.UUID, body: domain.MergeIn, request: Request, principal: Principal = Depends(require(WRITE))
):
    async def run(conn):
        ended = await usecases.merge_branch(conn, branch_id, body, principal, today_cn())
        return 200, {**branch_view(ended.branch), "members_moved": ended.members_moved}

    return await _write(request, principal, f"branches.merge:{branch_id}", body.model_dump(mode="json"), run)


@router.post(
    "/branches/{branch_id}:dissolve",
    tags=["branches"],
    response_model=BranchEndedOut,
    summary="Dissolve a branch: only when empty, or with a branch that takes its members",
)
async def dissolve_branch(
    branch_id: uuid.UUID, body: domain.DissolveIn, request: Request, principal: Principal = Depends(require(WRITE))
):
    async def run(conn):
        ended = await usecases.dissolve_branch(conn, branch_id, body, principal, today_cn())
        return 200, {**branch_view(ended.branch), "members_moved": ended.members_moved}

    return await _write(request, principal, f"branches.dissolve:{branch_id}", body.model_dump(mode="json"), run)


# -- members ---------------------------------------------------------------------
def _pii_safe(request: Request, payload: dict) -> dict:
    """The request as the idempotency table may hash it: ID number and phone replaced by keyed hashes,
    so a stored request hash cannot be brute-forced back to a number."""
    if "idempotency-key" not in request.headers:
        return payload  # hashed in memory only, never stored
    v = vault(request)
    out = dict(payload)
    for key in ("id_number", "phone"):
        if out.get(key):
            out[key] = v.lookup_hash(key + ":" + out[key]).hex()
    return out


@router.post(
    "/members", status_code=201, tags=["members"], response_model=MemberOut, summary="Join a union branch (入会)"
)
async def join(body: domain.MemberIn, request: Request, principal: Principal = Depends(require(WRITE))):
    async def run(conn):
        return 201, member_view(await usecases.join(conn, body, principal, today_cn(), vault=vault(request)))

    return await _write(request, principal, "members.join", _pii_safe(request, body.model_dump(mode="json")), run)


@router.post(
    "/members:lookup",
    tags=["members"],
    response_model=MemberOut,
    responses={429: {"description": "too many lookups by this caller in the last minute (Retry-After)"}},
    summary="Find a member by ID number (in the body, never in a URL); audited, rate-limited per caller",
)
async def lookup(body: domain.LookupIn, request: Request, pool: Db, principal: Principal = Depends(require(READ))):
    per_minute = request.app.state.settings.lookup_rate_per_minute
    async with pool.acquire() as conn, conn.transaction():
        found = await usecases.lookup(conn, body, principal, today_cn(), vault=vault(request), per_minute=per_minute)
    if found.outcome == "rate_limited":
        response = problem_response(
            Problem(
                429,
                "too-many-lookups",
                "Too many lookups",
                f"at most {per_minute} lookups a minute per caller; retry after {found.retry_after_s} s",
            ),
            request,
        )
        response.headers["Retry-After"] = str(found.retry_after_s)
        return response
    if found.member is None:
        raise NotFound("member")  # none with that number in the caller's scope
    return member_view(found.member)


@router.get(
    "/lookups",
    tags=["members"],
    response_model=Page[LookupAuditOut],
    summary="The audit of lookups by ID number: who, when, outcome, trace id (scope membership:audit)",
)
async def list_lookups(
    pool: Db,
    subject: str | None = Query(None, max_length=200, description="one caller"),
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(AUDIT)),
) -> dict:
    rows = await usecases.list_lookups(
        pool, principal, subject=subject, after=decode_cursor(cursor, int), limit=limit + 1
    )
    return page(rows, limit, lambda r: r["seq"], lookup_audit_view)


@router.get("/members", tags=["members"], response_model=Page[MemberOut], summary="Members, filtered, a page at a time")
async def list_members(
    pool: Db,
    region: str | None = Query(None, description="city or county, and below"),
    branch_id: uuid.UUID | None = None,
    employment_form: domain.EmploymentForm | None = None,
    status: Literal["active", "left", "lapsed"] | None = None,
    skill_level: int | None = Query(None, ge=1, le=5),
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(READ)),
) -> dict:
    rows = await usecases.list_members(
        pool,
        principal,
        region=region,
        branch_id=branch_id,
        employment_form=employment_form.value if employment_form else None,
        status=status,
        skill_level=skill_level,
        after=decode_cursor(cursor, uuid_key),
        limit=limit + 1,
    )
    return page(rows, limit, lambda r: r["id"], member_view)


EXPORT_COLUMNS = (
    "id",
    "branch_id",
    "name",
    "id_number_masked",
    "phone_masked",
    "birth_year",
    "sex",
    "home_region_code",
    "region_code",
    "city_code",
    "employment_form",
    "occupation",
    "skill_level",
    "status",
    "joined_on",
    "ended_on",
)
EXPORT_PAGE = 1000


@router.get(
    "/members:export",
    tags=["members"],
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "UTF-8 CSV with BOM, masked data, formula cells neutralised",
        }
    },
    summary="Members as CSV (masked; a cell that would run as a formula is neutralised)",
)
async def export_members(
    pool: Db,
    region: str | None = Query(None, description="city or county, and below"),
    branch_id: uuid.UUID | None = None,
    employment_form: domain.EmploymentForm | None = None,
    status: Literal["active", "left", "lapsed"] | None = None,
    skill_level: int | None = Query(None, ge=1, le=5),
    principal: Principal = Depends(require(READ)),
):
    form = employment_form.value if employment_form else None
    first = await usecases.list_members(
        pool,
        principal,
        region=region,
        branch_id=branch_id,
        employment_form=form,
        status=status,
        skill_level=skill_level,
        after=None,
        limit=EXPORT_PAGE,
    )

    async def body():
        yield export.csv_header(EXPORT_COLUMNS)
        rows = first
        while True:
            for r in rows:
                view = member_view(r)
                yield export.csv_line(view[c] for c in EXPORT_COLUMNS)
            if len(rows) < EXPORT_PAGE:
                return
            rows = await usecases.list_members(
                pool,
                principal,
                region=region,
                branch_id=branch_id,
                employment_form=form,
                status=status,
                skill_level=skill_level,
                after=rows[-1]["id"],
                limit=EXPORT_PAGE,
            )

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="members.csv"'},
    )


@router.get(
    "/members/{member_id}",
    tags=["members"],
    response_model=MemberOut,
    summary="One member (ID number and phone masked)",
)
async def get_member(member_id: uuid.UUID, pool: Db, principal: Principal = Depends(require(READ))) -> dict:
    return member_view(await usecases.get_member(pool, member_id, principal))


@router.get(
    "/members/{member_id}/transfers",
    tags=["members"],
    response_model=Page[TransferOut],
    summary="A member's transfers (转会), oldest first",
)
async def member_transfers(
    member_id: uuid.UUID,
    pool: Db,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(READ)),
) -> dict:
    rows = await usecases.transfers_of(
        pool, member_id, principal, after=decode_cursor(cursor, _time_key), limit=limit + 1
    )
    return page(rows, limit, lambda t: f"{t['created_at'].isoformat()}|{t['id']}", transfer_view)


@router.post(
    "/members/{member_id}:transfer",
    tags=["members"],
    response_model=MemberOut,
    summary="Transfer a member to another branch (转会)",
)
async def transfer(
    member_id: uuid.UUID, body: domain.TransferIn, request: Request, principal: Principal = Depends(require(WRITE))
):
    async def run(conn):
        return 200, member_view(await usecases.transfer(conn, member_id, body, principal, today_cn()))

    return await _write(request, principal, f"members.transfer:{member_id}", body.model_dump(mode="json"), run)


def _end(kind: Literal["left", "lapsed"]):
    use_case = usecases.leave if kind == "left" else usecases.lapse

    async def end(
        member_id: uuid.UUID,
        request: Request,
        body: domain.EndIn | None = None,
        principal: Principal = Depends(require(WRITE)),
    ):
        cmd = body or domain.EndIn()

        async def run(conn):
            return 200, member_view(await use_case(conn, member_id, cmd, principal, today_cn()))

        return await _write(request, principal, f"members.{kind}:{member_id}", cmd.model_dump(mode="json"), run)

    return end


router.add_api_route(
    "/members/{member_id}:leave",
    _end("left"),
    methods=["POST"],
    tags=["members"],
    response_model=MemberOut,
    summary="A member leaves the union (退会)",
)
router.add_api_route(
    "/members/{member_id}:lapse",
    _end("lapsed"),
    methods=["POST"],
    tags=["members"],
    response_model=MemberOut,
    summary="A membership lapses (dues unpaid, contact lost)",
)


@router.post(
    "/members/{member_id}:reveal",
    tags=["members"],
    response_model=RevealedOut,
    summary="The full ID number and phone: needs scope membership:reveal; every reveal is audited",
)
async def reveal(
    member_id: uuid.UUID,
    body: domain.RevealIn,
    request: Request,
    pool: Db,
    principal: Principal = Depends(require(REVEAL)),
):
    # Not through ``write``: an idempotency record would keep the clear numbers in its stored answer.
    async with pool.acquire() as conn, conn.transaction():
        shown = await usecases.reveal(conn, member_id, body, principal, today_cn(), vault=vault(request))
    log.info(
        "member data revealed",
        extra={"member_id": str(member_id), "audit_id": str(shown.audit_id), "by": principal.subject},
    )
    return JSONResponse(
        {
            "member_id": str(member_id),
            "id_number": shown.id_number,
            "phone": shown.phone,
            "audit_id": str(shown.audit_id),
            "revealed_at": shown.revealed_at.isoformat(),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/members/{member_id}/reveals",
    tags=["members"],
    response_model=Page[RevealAuditOut],
    summary="Who revealed this member's numbers, when, why",
)
async def member_reveals(
    member_id: uuid.UUID,
    pool: Db,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(AUDIT)),
) -> dict:
    rows = await usecases.reveals_of(
        pool, member_id, principal, after=decode_cursor(cursor, _time_key), limit=limit + 1
    )
    return page(rows, limit, lambda r: f"{r['revealed_at'].isoformat()}|{r['id']}", reveal_audit_view)


# -- bulk import ------------------------------------------------------------------
_NDJSON_TYPES = (
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
)
_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/=]+):")


def _import_format(content_type: str | None, fmt: str | None) -> tuple[str, str | None]:
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    if fmt is None:
        if media in ("text/csv", "application/csv", "text/comma-separated-values"):
            fmt = "csv"
        elif media in _NDJSON_TYPES:
            fmt = "ndjson"
        else:
            raise Problem(
                415,
                "unsupported-media-type",
                "Send CSV or NDJSON",
                "Content-Type text/csv (charset utf-8 or gb18030) or application/x-ndjson, or say ?format=csv|ndjson",
            )
    if fmt == "ndjson" and charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise Problem(415, "unsupported-media-type", "NDJSON must be UTF-8")
    if fmt == "csv" and charset:
        try:
            TextDecoder(charset)  # refused here, before an import is recorded
        except ImportFailed:
            raise Problem(
                415,
                "unsupported-media-type",
                "Unsupported charset",
                "send CSV as charset=utf-8 or charset=gb18030 (or say none: it is detected)",
            ) from None
    return fmt, charset


def _content_digest(request: Request) -> bytes | None:
    header = request.headers.get("content-digest") or request.headers.get("repr-digest")
    m = _DIGEST.search(header or "")
    if not m:
        return None
    try:
        value = base64.b64decode(m.group(1), validate=True)
    except binascii.Error:
        return None
    return value if len(value) == 32 else None


@router.post(
    "/members:import",
    status_code=201,
    tags=["imports"],
    response_model=ImportOut,
    responses={200: {"model": ImportOut, "description": "the same file was already imported"}},
    summary="Bulk import members from CSV (UTF-8 / GB18030) or NDJSON, streamed",
)
@body_limit(None)  # streamed: a 450,000-member file is read row by row, never held whole
async def import_members(
    request: Request,
    pool: Db,
    branch_id: uuid.UUID | None = Query(None, description="branch of rows without a branch_id"),
    format: Literal["csv", "ndjson"] | None = Query(None, description="instead of Content-Type"),
    principal: Principal = Depends(require(WRITE)),
):
    fmt, charset = _import_format(request.headers.get("content-type"), format)
    settings = request.app.state.settings
    await usecases.import_branch(pool, branch_id, principal)
    prior = await usecases.prior_import(pool, _content_digest(request), principal)
    if prior is not None:  # the same file, already imported without a rejected row: nothing to do
        return JSONResponse(
            import_view(prior), status_code=200, headers={"Content-Location": f"/v1/imports/{prior['id']}"}
        )
    length = request.headers.get("content-length")
    import_id = await usecases.start_import(
        pool, fmt, branch_id, int(length) if length and length.isdigit() else None, principal
    )
    started = asyncio.get_running_loop().time()
    done = await usecases.import_members(
        pool,
        request.stream(),
        import_id,
        fmt,
        principal,
        today_cn(),
        vault=vault(request),
        charset=charset,
        default_branch=branch_id,
        batch_rows=settings.import_batch_rows,
        writers=settings.import_writers,
    )
    if done.database_unavailable:
        log.warning("member import stopped: database unavailable", extra={"import_id": str(import_id)})
        raise Problem(
            503,
            "database-unavailable",
            "The database is not available; upload the file again later",
            "rows already written are kept and will be reported as already members",
            import_id=str(import_id),
        )
    rec = done.record
    assert rec is not None, "recorded unless the database went away"
    log.info(
        "member import finished",
        extra={
            "import_id": str(import_id),
            "status": rec["status"],
            "rows": rec["rows_total"],
            "accepted": rec["accepted"],
            "rejected": rec["rejected"],
            "already_members": rec["already_members"],
            "seconds": round(asyncio.get_running_loop().time() - started, 3),
        },
    )
    if done.error:
        raise Problem(
            422,
            "import-failed",
            "The upload could not be read to the end",
            done.error,
            import_id=str(import_id),
            **{"import": import_view(rec)},
        )
    return JSONResponse(import_view(rec), status_code=201, headers={"Location": f"/v1/imports/{import_id}"})


@router.get(
    "/imports",
    tags=["imports"],
    response_model=Page[ImportOut],
    summary="Imports in the caller's scope, newest first (progress of running ones)",
)
async def list_imports(
    pool: Db,
    status: Literal["running", "completed", "failed"] | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(READ)),
) -> dict:
    rows = await usecases.list_imports(
        pool, principal, status=status, after=decode_cursor(cursor, int), limit=limit + 1
    )
    return page(rows, limit, lambda r: r["seq"], import_view)


@router.get(
    "/imports/{import_id}",
    tags=["imports"],
    response_model=ImportDetailOut,
    summary="An import's progress and its per-row report",
)
async def get_import(
    import_id: uuid.UUID,
    pool: Db,
    outcome: Literal["accepted", "rejected", "already_member"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(READ)),
) -> dict:
    rec, rows = await usecases.import_report(
        pool,
        import_id,
        principal,
        outcome=outcome,
        after_row=decode_cursor(cursor, int) or 0,
        limit=limit + 1,
    )
    return {**import_view(rec), "report": page(rows, limit, lambda r: r["row"], report_row_view)}


# -- service stations -----------------------------------------------------------
@router.post(
    "/stations",
    status_code=201,
    tags=["stations"],
    response_model=StationOut,
    summary="Open an outdoor-worker service station",
)
async def open_station(body: domain.StationIn, request: Request, principal: Principal = Depends(require(WRITE))):
    async def run(conn):
        return 201, station_view(await usecases.open_station(conn, body, principal, today_cn()))

    return await _write(request, principal, "stations.open", body.model_dump(mode="json"), run)


@router.post(
    "/stations/{station_id}:close", tags=["stations"], response_model=StationOut, summary="Close a service station"
)
async def close_station(
    station_id: uuid.UUID,
    request: Request,
    body: domain.CloseIn | None = None,
    principal: Principal = Depends(require(WRITE)),
):
    cmd = body or domain.CloseIn()

    async def run(conn):
        return 200, station_view(await usecases.close_station(conn, station_id, cmd, principal, today_cn()))

    return await _write(request, principal, f"stations.close:{station_id}", cmd.model_dump(mode="json"), run)


@router.get(
    "/stations",
    tags=["stations"],
    response_model=Page[StationOut],
    summary="Service stations by region, a page at a time",
)
async def list_stations(
    pool: Db,
    region: str | None = Query(None, description="city or county, and below"),
    branch_id: uuid.UUID | None = None,
    status: Literal["open", "closed"] | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(require(READ)),
) -> dict:
    rows = await usecases.list_stations(
        pool,
        principal,
        region=region,
        branch_id=branch_id,
        status=status,
        after=decode_cursor(cursor, int),
        limit=limit + 1,
    )
    return page(rows, limit, lambda r: r["seq"], station_view)


@router.get("/stations/{station_id}", tags=["stations"], response_model=StationOut, summary="One service station")
async def get_station(station_id: uuid.UUID, pool: Db, principal: Principal = Depends(require(READ))) -> dict:
    return station_view(await usecases.get_station(pool, station_id, principal))
