"""Membership's HTTP routes: thin; rules live in domain.py, SQL in store.py, bulk import in importer.py."""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import re
import uuid
from datetime import date
from typing import Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from services.membership import domain, export, store
from services.membership.importer import Importer, ImportFailed, TextDecoder
from services.membership.pii import Vault, home_prefecture, parse_id_number, uuid7
from shared import outbox, regions
from shared.auth import Principal, require
from shared.http import problem_response, write
from shared.identifiers import mask_phone
from shared.logging import trace_id_var
from shared.problems import Problem, invalid, not_found

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

READ, WRITE = "membership:read", "membership:write"
REVEAL, AUDIT = "membership:reveal", "membership:audit"
Limit = Query(50, ge=1, le=200, description="page size")
Cursor = Query(None, description="next_cursor of the previous page")


# -- helpers ---------------------------------------------------------------------
def vault(request: Request) -> Vault:
    return request.app.state.vault


def _cursor_out(value) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def _cursor_in(cursor: str | None, kind: type):
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return kind(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(400, "bad-cursor", "The cursor is not valid", "send next_cursor exactly as received") from None


def _page(items: list, rows: list, limit: int, key) -> dict:
    more = len(rows) > limit
    return {"items": items[:limit], "next_cursor": _cursor_out(key(rows[limit - 1])) if more else None}


def _scope_regions(principal: Principal, region: str | None) -> list[str]:
    """The region codes a list covers: ``region`` and below, inside the caller's organisation scope."""
    if region is None:
        return regions.descendants(principal.region)
    if regions.get(region) is None:
        raise invalid("region", "not a Ningxia region code (GB/T 2260)")
    principal.ensure_region(region)
    return regions.descendants(region)


def _today(value: date | None) -> date:
    return value or date.today()


async def _write(request: Request, principal: Principal, operation: str, payload, fn, headers=None):
    """``shared.http.write`` with a retry when PostgreSQL broke a deadlock (the loser's work rolled back)."""
    for attempt in range(3):
        try:
            return await write(request, principal, operation, payload, fn, headers)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == 2:
                raise Problem(503, "busy", "Concurrent changes collided; retry the request") from None
            await asyncio.sleep(0.02 * (attempt + 1))


def _referenced_branch(branches: dict, branch_id: uuid.UUID, principal: Principal, field: str):
    branch = branches.get(branch_id)
    if branch is None:
        raise invalid(field, "no such branch")
    principal.ensure_region(branch["region_code"])
    return branch


def _path_branch(branches: dict, branch_id: uuid.UUID, principal: Principal):
    branch = branches.get(branch_id)
    if branch is None or not principal.may_act_on(branch["region_code"]):
        raise not_found("branch", branch_id)
    return branch


# -- views -----------------------------------------------------------------------
def branch_view(row: asyncpg.Record) -> dict:
    return {
        "id": str(row["id"]), "name": row["name"], "credit_code": row["credit_code"],
        "region_code": row["region_code"], "city_code": regions.city_of(row["region_code"]),
        "industry_section": row["industry_section"], "kind": row["kind"],
        "parent_id": str(row["parent_id"]) if row["parent_id"] else None,
        "founded_on": row["founded_on"].isoformat(), "status": row["status"],
        "ended_on": row["ended_on"].isoformat() if row["ended_on"] else None,
        "merged_into": str(row["merged_into"]) if row["merged_into"] else None,
        "transferred_to": str(row["transferred_to"]) if row["transferred_to"] else None,
    }


def member_view(row: asyncpg.Record) -> dict:
    return {
        "id": str(row["id"]), "branch_id": str(row["branch_id"]), "name": row["name"],
        "id_number_masked": row["id_masked"], "phone_masked": row["phone_masked"],
        "birth_year": row["birth_year"], "sex": row["sex"], "home_region_code": row["home_region_code"],
        "region_code": row["region_code"], "city_code": regions.city_of(row["region_code"]),
        "employment_form": row["employment_form"], "occupation": row["occupation"],
        "skill_level": row["skill_level"], "skill_level_name": domain.SKILL_LEVELS.get(row["skill_level"]),
        "status": row["status"], "joined_on": row["joined_on"].isoformat(),
        "ended_on": row["ended_on"].isoformat() if row["ended_on"] else None,
    }


def station_view(row: asyncpg.Record) -> dict:
    return {
        "id": str(row["id"]), "name": row["name"], "branch_id": str(row["branch_id"]),
        "region_code": row["region_code"], "city_code": regions.city_of(row["region_code"]),
        "services": list(row["services"]), "status": row["status"], "opened_on": row["opened_on"].isoformat(),
        "closed_on": row["closed_on"].isoformat() if row["closed_on"] else None,
    }


def region_view(r: regions.Region) -> dict:
    return {"code": r.code, "name": r.name, "level": r.level, "parent": r.parent, "city_code": r.city}


def import_view(row: asyncpg.Record) -> dict:
    return {
        "id": str(row["id"]), "status": row["status"], "format": row["format"], "encoding": row["encoding"],
        "default_branch_id": str(row["default_branch_id"]) if row["default_branch_id"] else None,
        "rows": {"total": row["rows_total"], "accepted": row["accepted"], "rejected": row["rejected"],
                 "already_members": row["already_members"]},
        "bytes": row["bytes_read"], "bytes_expected": row["bytes_expected"],
        "progress": (round(min(row["bytes_read"] / row["bytes_expected"], 1.0), 4) if row["bytes_expected"]
                     else (1.0 if row["status"] == "completed" else None)),
        "sha256": row["file_sha256"].hex() if row["file_sha256"] else None,
        "duplicate_of": str(row["duplicate_of"]) if row["duplicate_of"] else None,
        "ignored_columns": list(row["ignored_columns"]), "error": row["error"], "submitted_by": row["subject"],
        "started_at": row["started_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }


# -- regions ---------------------------------------------------------------------
@router.get("/regions", tags=["regions"], summary="Ningxia's regions (GB/T 2260): the region, 5 cities, 22 counties")
async def list_regions(level: Literal["region", "city", "county"] | None = None,
                       parent: str | None = Query(None, description="only the children of this code")) -> dict:
    items = [region_view(r) for r in regions.REGIONS.values()
             if (level is None or r.level == level) and (parent is None or r.parent == parent)]
    return {"items": items}


@router.get("/regions/{code}", tags=["regions"], summary="One region with its children")
async def get_region(code: str) -> dict:
    region = regions.get(code)
    if region is None:
        raise not_found("region", code)
    return {**region_view(region), "children": [region_view(r) for r in regions.REGIONS.values() if r.parent == code]}


# -- branches --------------------------------------------------------------------
@router.post("/branches", status_code=201, tags=["branches"], summary="Establish a union branch (成立基层工会)")
async def establish_branch(body: domain.BranchIn, request: Request, principal: Principal = Depends(require(WRITE))):
    principal.ensure_region(body.region_code)

    async def run(conn: asyncpg.Connection):
        existing = await store.active_branch_by_credit_code(conn, body.credit_code)
        if existing:
            raise Problem(409, "branch-exists", "Employer already has an active union branch",
                          f"credit code {body.credit_code} belongs to branch {existing}", branch_id=str(existing))
        if body.parent_id:
            parent = await store.get_branch(conn, body.parent_id)
            if parent is None:
                raise invalid("parent_id", "no such branch")
            principal.ensure_region(parent["region_code"])
        event = domain.establish_branch(body)
        try:
            async with conn.transaction():  # a savepoint: the unique index may refuse it
                await store.insert_branch(conn, event)
        except asyncpg.UniqueViolationError:  # a concurrent request won the race
            raise Problem(409, "branch-exists", "Employer already has an active union branch") from None
        await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 201, branch_view(await store.get_branch(conn, event.branch_id))

    return await _write(request, principal, "branches.establish", body.model_dump(mode="json"), run)


@router.get("/branches", tags=["branches"], summary="Branches, filtered, a page at a time")
async def list_branches(request: Request, region: str | None = Query(None, description="city or county, and below"),
                        industry_section: str | None = Query(None, pattern=r"^[A-T]$"),
                        kind: domain.BranchKind | None = None,
                        status: Literal["active", "merged", "dissolved"] | None = None,
                        founded_from: date | None = None, founded_to: date | None = None,
                        limit: int = Limit, cursor: str | None = Cursor,
                        principal: Principal = Depends(require(READ))) -> dict:
    rows = await store.list_branches(
        request.app.state.db, regions=_scope_regions(principal, region), industry_section=industry_section,
        kind=kind.value if kind else None, status=status, founded_from=founded_from, founded_to=founded_to,
        after=_cursor_in(cursor, int), limit=limit + 1)
    return _page([branch_view(r) for r in rows], rows, limit, lambda r: r["seq"])


@router.get("/branches/{branch_id}", tags=["branches"], summary="One union branch, with its member count")
async def get_branch(branch_id: uuid.UUID, request: Request, principal: Principal = Depends(require(READ))):
    db = request.app.state.db
    row = await store.get_branch(db, branch_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("branch", branch_id)
    return {**branch_view(row), "member_count": await store.branch_member_count(db, branch_id),
            "open_stations": await store.open_station_count(db, branch_id)}


@router.patch("/branches/{branch_id}", tags=["branches"], summary="Update a branch's details")
async def update_branch(branch_id: uuid.UUID, body: domain.BranchPatch, request: Request,
                        principal: Principal = Depends(require(WRITE))):
    async def run(conn: asyncpg.Connection):
        branch = _path_branch(await store.lock_branches(conn, [branch_id], "UPDATE"), branch_id, principal)
        if body.region_code is not None:
            principal.ensure_region(body.region_code)
        if body.parent_id is not None:
            parent = await store.get_branch(conn, body.parent_id)
            if parent is None:
                raise invalid("parent_id", "no such branch")
            principal.ensure_region(parent["region_code"])  # a parent in another city: 403
            if await store.parent_chain_has(conn, body.parent_id, branch_id):
                raise invalid("parent_id", "would make the branch its own ancestor")
        event = domain.update_branch(branch, body)
        if event is not None:
            await store.update_branch(conn, event)
            await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 200, branch_view(await store.get_branch(conn, branch_id))

    return await _write(request, principal, f"branches.update:{branch_id}", body.model_dump(mode="json", exclude_unset=True), run)


async def _move_everything(conn: asyncpg.Connection, source, target, reason: str, on: date, subject: str) -> tuple[int, list]:
    """Move a branch's active members and open stations to another branch; returns (members moved, events)."""
    moved = await store.move_active_members(conn, source["id"], target["id"])
    await store.insert_transfers(conn, [(uuid.uuid4(), m["id"], source["id"], target["id"], reason, on, subject)
                                        for m in moved])
    events = [domain.member_moved(m["id"], m["employment_form"], source, target, reason, on) for m in moved]
    stations = await store.move_open_stations(conn, source["id"], target["id"])
    events += [domain.station_moved(s["id"], s["region_code"], source, target, reason, on) for s in stations]
    return len(moved), events


@router.post("/branches/{branch_id}:merge", tags=["branches"],
             summary="Merge a branch into another: its members and stations move with it")
async def merge_branch(branch_id: uuid.UUID, body: domain.MergeIn, request: Request,
                       principal: Principal = Depends(require(WRITE))):
    async def run(conn: asyncpg.Connection):
        locked = await store.lock_branches(conn, [branch_id, body.into_branch_id], "UPDATE")
        branch = _path_branch(locked, branch_id, principal)
        into = _referenced_branch(locked, body.into_branch_id, principal, "into_branch_id")
        domain.check_merge(branch, into)
        on = _today(body.merged_on)
        moved, events = await _move_everything(conn, branch, into, "merge", on, principal.subject)
        await store.end_branch(conn, branch_id, "merged", on, merged_into=into["id"])
        events.append(domain.branch_merged(branch, into["id"], moved, on))
        await outbox.add_many(conn, events, trace_id=trace_id_var.get())
        return 200, {**branch_view(await store.get_branch(conn, branch_id)), "members_moved": moved}

    return await _write(request, principal, f"branches.merge:{branch_id}", body.model_dump(mode="json"), run)


@router.post("/branches/{branch_id}:dissolve", tags=["branches"],
             summary="Dissolve a branch: only when empty, or with a branch that takes its members")
async def dissolve_branch(branch_id: uuid.UUID, body: domain.DissolveIn, request: Request,
                          principal: Principal = Depends(require(WRITE))):
    async def run(conn: asyncpg.Connection):
        wanted = [branch_id] + ([body.transfer_to] if body.transfer_to else [])
        locked = await store.lock_branches(conn, wanted, "UPDATE")
        branch = _path_branch(locked, branch_id, principal)
        target = _referenced_branch(locked, body.transfer_to, principal, "transfer_to") if body.transfer_to else None
        domain.check_dissolve(branch, target, await store.branch_member_count(conn, branch_id),
                              await store.open_station_count(conn, branch_id))
        on = _today(body.dissolved_on)
        moved, events = (await _move_everything(conn, branch, target, "dissolution", on, principal.subject)
                         if target else (0, []))
        await store.end_branch(conn, branch_id, "dissolved", on, transferred_to=target["id"] if target else None)
        events.append(domain.branch_dissolved(branch, target["id"] if target else None, moved, on))
        await outbox.add_many(conn, events, trace_id=trace_id_var.get())
        return 200, {**branch_view(await store.get_branch(conn, branch_id)), "members_moved": moved}

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


@router.post("/members", status_code=201, tags=["members"], summary="Join a union branch (入会)")
async def join(body: domain.MemberIn, request: Request, principal: Principal = Depends(require(WRITE))):
    v = vault(request)
    person = parse_id_number(body.id_number)
    id_hash = v.lookup_hash(person.number)
    joined_on = _today(body.joined_on)

    async def run(conn: asyncpg.Connection):
        branch = _referenced_branch(await store.lock_branches(conn, [body.branch_id]), body.branch_id, principal,
                                    "branch_id")
        domain.ensure_active(branch)
        domain.check_join_date(joined_on, branch)
        member_id = uuid7()
        fields = dict(branch_id=branch["id"], name=body.name, employment_form=body.employment_form.value,
                      occupation=body.occupation, joined_on=joined_on)

        def secrets(mid: uuid.UUID) -> dict:
            return dict(id_cipher=v.encrypt("id_number", mid, person.number), id_masked=person.masked,
                        phone_cipher=v.encrypt("phone", mid, body.phone) if body.phone else None,
                        phone_masked=mask_phone(body.phone) if body.phone else None)

        skill = body.skill_level
        row = await store.insert_member(conn, id=member_id, id_hash=id_hash, birth_year=person.birth_date.year,
                                        sex=person.sex, home_region_code=home_prefecture(person.region_code),
                                        skill_level=skill,
                                        **fields, **secrets(member_id))
        if row is None:
            existing = await store.member_by_hash(conn, id_hash, lock=True)
            if existing["status"] == "active" and not principal.may_act_on(existing["region_code"]):
                # Outside the caller's scope: that the person is a member is all it may learn.
                raise Problem(409, "already-a-member-elsewhere", "This person is already a member elsewhere",
                              "a member of a branch outside your organisation scope")
            if existing["status"] == "active":
                raise Problem(409, "already-a-member", "This person is already a member",
                              f"member {existing['id']}", member_id=str(existing["id"]),
                              branch_id=str(existing["branch_id"]))
            member_id = existing["id"]
            if skill is None or (existing["skill_level"] is not None and existing["skill_level"] < skill):
                skill = existing["skill_level"]  # a rejoin never lowers a certified level
            row = await store.rejoin_member(conn, member_id, skill_level=skill, **fields, **secrets(member_id))
        event = domain.member_joined(member_id, branch, employment_form=body.employment_form.value,
                                     occupation=body.occupation, skill_level=skill, born=person.birth_date,
                                     sex=person.sex, joined_on=joined_on)
        await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 201, member_view({**row, "region_code": branch["region_code"]})

    return await _write(request, principal, "members.join", _pii_safe(request, body.model_dump(mode="json")), run)


LOOKUP_WINDOW_S = 60


@router.post("/members:lookup", tags=["members"],
             summary="Find a member by ID number (in the body, never in a URL); audited, rate-limited per caller")
async def lookup(body: domain.LookupIn, request: Request, principal: Principal = Depends(require(READ))):
    # A lookup confirms a guessed number: each one is audited like a reveal, and a caller gets
    # ``lookup_rate_per_minute`` of them (counted in the audit table, so across replicas).
    per_minute = request.app.state.settings.lookup_rate_per_minute
    id_hash = vault(request).lookup_hash(body.id_number)
    trace_id = trace_id_var.get()
    row, retry_after = None, None
    async with request.app.state.db.acquire() as conn, conn.transaction():
        await store.lock_lookups_of(conn, principal.subject)
        counted, oldest = await store.lookups_in_window(conn, principal.subject, LOOKUP_WINDOW_S)
        if counted >= per_minute:
            retry_after = min(LOOKUP_WINDOW_S, max(1, math.ceil(
                await store.window_left_s(conn, oldest, LOOKUP_WINDOW_S))))
            outcome = "rate_limited"
        else:
            found = await store.member_by_hash(conn, id_hash)
            row = await store.get_member(conn, found["id"]) if found else None
            if row is not None and not principal.may_act_on(row["region_code"]):
                row = None
            outcome = "found" if row is not None else "not_found"
        await store.insert_lookup(conn, uuid7(), principal.subject, principal.region, outcome,
                                  row["id"] if row is not None else None, trace_id)
    if retry_after is not None:
        response = problem_response(Problem(
            429, "too-many-lookups", "Too many lookups",
            f"at most {per_minute} lookups a minute per caller; retry after {retry_after} s"), request)
        response.headers["Retry-After"] = str(retry_after)
        return response
    if row is None:
        raise Problem(404, "not-found", "member not found", "no member with that ID number in your organisation scope")
    return member_view(row)


@router.get("/lookups", tags=["members"],
            summary="The audit of lookups by ID number: who, when, outcome, trace id (scope membership:audit)")
async def list_lookups(request: Request, subject: str | None = Query(None, max_length=200, description="one caller"),
                       limit: int = Limit, cursor: str | None = Cursor,
                       principal: Principal = Depends(require(AUDIT))) -> dict:
    rows = await store.list_lookups(request.app.state.db, scope_regions=regions.descendants(principal.region),
                                    subject=subject, after=_cursor_in(cursor, int), limit=limit + 1)
    return _page([{"id": str(r["id"]), "by": r["subject"], "scope_region": r["scope_region"], "outcome": r["outcome"],
                   "member_id": str(r["member_id"]) if r["member_id"] else None, "trace_id": r["trace_id"],
                   "looked_up_at": r["looked_up_at"].isoformat()} for r in rows], rows, limit, lambda r: r["seq"])


EXPORT_COLUMNS = ("id", "branch_id", "name", "id_number_masked", "phone_masked", "birth_year", "sex",
                  "home_region_code", "region_code", "city_code", "employment_form", "occupation", "skill_level",
                  "status", "joined_on", "ended_on")


@router.get("/members:export", tags=["members"], response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}, "description": "UTF-8 CSV with BOM, masked data"}},
            summary="Members as CSV (masked; a cell that would run as a formula is neutralised)")
async def export_members(request: Request, region: str | None = Query(None, description="city or county, and below"),
                         branch_id: uuid.UUID | None = None, employment_form: domain.EmploymentForm | None = None,
                         status: Literal["active", "left", "lapsed"] | None = None,
                         skill_level: int | None = Query(None, ge=1, le=5),
                         principal: Principal = Depends(require(READ))):
    db, scope = request.app.state.db, _scope_regions(principal, region)

    async def rows():
        after = None
        while True:
            page = await store.list_members(
                db, regions=scope, branch_id=branch_id, status=status, skill_level=skill_level,
                employment_form=employment_form.value if employment_form else None, after=after, limit=1000)
            for r in page:
                view = member_view(r)
                yield [view[c] for c in EXPORT_COLUMNS]
            if len(page) < 1000:
                return
            after = page[-1]["id"]

    async def body():
        yield export.csv_header(EXPORT_COLUMNS)
        async for values in rows():
            yield export.csv_line(values)

    return StreamingResponse(body(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="members.csv"'})


@router.get("/members", tags=["members"], summary="Members, filtered, a page at a time")
async def list_members(request: Request, region: str | None = Query(None, description="city or county, and below"),
                       branch_id: uuid.UUID | None = None, employment_form: domain.EmploymentForm | None = None,
                       status: Literal["active", "left", "lapsed"] | None = None,
                       skill_level: int | None = Query(None, ge=1, le=5),
                       limit: int = Limit, cursor: str | None = Cursor,
                       principal: Principal = Depends(require(READ))) -> dict:
    rows = await store.list_members(
        request.app.state.db, regions=_scope_regions(principal, region), branch_id=branch_id,
        employment_form=employment_form.value if employment_form else None, status=status, skill_level=skill_level,
        after=_cursor_in(cursor, uuid.UUID), limit=limit + 1)
    return _page([member_view(r) for r in rows], rows, limit, lambda r: r["id"])


async def _visible_member(conn, member_id: uuid.UUID, principal: Principal) -> asyncpg.Record:
    row = await store.get_member(conn, member_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("member", member_id)
    return row


@router.get("/members/{member_id}", tags=["members"], summary="One member (ID number and phone masked)")
async def get_member(member_id: uuid.UUID, request: Request, principal: Principal = Depends(require(READ))):
    return member_view(await _visible_member(request.app.state.db, member_id, principal))


@router.get("/members/{member_id}/transfers", tags=["members"], summary="A member's transfers (转会), oldest first")
async def member_transfers(member_id: uuid.UUID, request: Request, principal: Principal = Depends(require(READ))):
    db = request.app.state.db
    await _visible_member(db, member_id, principal)
    return {"items": [{"id": str(t["id"]), "from_branch_id": str(t["from_branch_id"]),
                       "to_branch_id": str(t["to_branch_id"]), "from_region_code": t["from_region_code"],
                       "to_region_code": t["to_region_code"], "reason": t["reason"],
                       "transferred_on": t["transferred_on"].isoformat(), "recorded_at": t["created_at"].isoformat()}
                      for t in await store.transfers_of(db, member_id)]}


async def _lock_member_and_branches(conn, member_id: uuid.UUID, principal: Principal, extra: list[uuid.UUID]):
    """Branches first (the member's and ``extra``), then the member: the service's one lock order."""
    for _ in range(5):
        branch_id = await store.member_branch_id(conn, member_id)
        if branch_id is None:
            raise not_found("member", member_id)
        locked = await store.lock_branches(conn, [branch_id, *extra])
        member = await store.lock_member(conn, member_id)
        if member["branch_id"] == branch_id:
            source = locked[branch_id]
            if not principal.may_act_on(source["region_code"]):
                raise not_found("member", member_id)
            return member, source, locked
    raise Problem(503, "busy", "The member is being moved; retry the request")


@router.post("/members/{member_id}:transfer", tags=["members"], summary="Transfer a member to another branch (转会)")
async def transfer(member_id: uuid.UUID, body: domain.TransferIn, request: Request,
                   principal: Principal = Depends(require(WRITE))):
    async def run(conn: asyncpg.Connection):
        member, source, locked = await _lock_member_and_branches(conn, member_id, principal, [body.to_branch_id])
        target = _referenced_branch(locked, body.to_branch_id, principal, "to_branch_id")
        domain.check_transfer(member, source, target)
        on = _today(body.transferred_on)
        reason = body.reason
        await store.set_member_branch(conn, member_id, target["id"])
        await store.insert_transfers(conn, [(uuid.uuid4(), member_id, source["id"], target["id"], reason, on,
                                             principal.subject)])
        event = domain.member_moved(member_id, member["employment_form"], source, target, reason, on)
        await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 200, member_view(await store.get_member(conn, member_id))

    return await _write(request, principal, f"members.transfer:{member_id}", body.model_dump(mode="json"), run)


def _end(kind: str):
    async def end(member_id: uuid.UUID, request: Request, body: domain.EndIn | None = None,
                  principal: Principal = Depends(require(WRITE))):
        body = body or domain.EndIn()

        async def run(conn: asyncpg.Connection):
            member, branch, _ = await _lock_member_and_branches(conn, member_id, principal, [])
            on = _today(body.on)
            event = domain.member_ended(kind, member, branch, on)
            await store.end_member(conn, member_id, kind, on)
            await outbox.add(conn, event, trace_id=trace_id_var.get())
            return 200, member_view(await store.get_member(conn, member_id))

        return await _write(request, principal, f"members.{kind}:{member_id}", body.model_dump(mode="json"), run)
    return end


router.add_api_route("/members/{member_id}:leave", _end("left"), methods=["POST"], tags=["members"],
                     summary="A member leaves the union (退会)")
router.add_api_route("/members/{member_id}:lapse", _end("lapsed"), methods=["POST"], tags=["members"],
                     summary="A membership lapses (dues unpaid, contact lost)")


@router.post("/members/{member_id}:reveal", tags=["members"],
             summary="The full ID number and phone: needs scope membership:reveal; every reveal is audited")
async def reveal(member_id: uuid.UUID, body: domain.RevealIn, request: Request,
                 principal: Principal = Depends(require(REVEAL))):
    # Not through ``write``: an idempotency record would keep the clear numbers in its stored answer.
    v = vault(request)
    async with request.app.state.db.acquire() as conn, conn.transaction():
        await _visible_member(conn, member_id, principal)
        secrets = await store.member_secrets(conn, member_id)
        fields = ["id_number"] + (["phone"] if secrets["phone_cipher"] else [])
        audit = await store.insert_reveal(conn, uuid.uuid4(), member_id, principal.subject, body.reason, fields,
                                          trace_id_var.get())
    log.info("member data revealed", extra={"member_id": str(member_id), "audit_id": str(audit["id"]),
                                            "by": principal.subject})
    return JSONResponse({
        "member_id": str(member_id),
        "id_number": v.decrypt("id_number", member_id, secrets["id_cipher"]),
        "phone": v.decrypt("phone", member_id, secrets["phone_cipher"]) if secrets["phone_cipher"] else None,
        "audit_id": str(audit["id"]), "revealed_at": audit["revealed_at"].isoformat(),
    }, headers={"Cache-Control": "no-store"})


@router.get("/members/{member_id}/reveals", tags=["members"], summary="Who revealed this member's numbers, when, why")
async def member_reveals(member_id: uuid.UUID, request: Request, principal: Principal = Depends(require(AUDIT))):
    db = request.app.state.db
    await _visible_member(db, member_id, principal)
    return {"items": [{"id": str(r["id"]), "by": r["subject"], "reason": r["reason"], "fields": list(r["fields"]),
                       "trace_id": r["trace_id"], "revealed_at": r["revealed_at"].isoformat()}
                      for r in await store.reveals_of(db, member_id)]}


# -- bulk import ------------------------------------------------------------------
_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
                 "application/jsonlines")
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
            raise Problem(415, "unsupported-media-type", "Send CSV or NDJSON",
                          "Content-Type text/csv (charset utf-8 or gb18030) or application/x-ndjson, "
                          "or say ?format=csv|ndjson")
    if fmt == "ndjson" and charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise Problem(415, "unsupported-media-type", "NDJSON must be UTF-8")
    if fmt == "csv" and charset:
        try:
            TextDecoder(charset)  # refused here, before an import is recorded
        except ImportFailed:
            raise Problem(415, "unsupported-media-type", "Unsupported charset",
                          "send CSV as charset=utf-8 or charset=gb18030 (or say none: it is detected)") from None
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


@router.post("/members:import", status_code=201, tags=["imports"],
             summary="Bulk import members from CSV (UTF-8 / GB18030) or NDJSON, streamed")
async def import_members(request: Request,
                         branch_id: uuid.UUID | None = Query(None, description="branch of rows without a branch_id"),
                         format: Literal["csv", "ndjson"] | None = Query(None, description="instead of Content-Type"),
                         principal: Principal = Depends(require(WRITE))):
    fmt, charset = _import_format(request.headers.get("content-type"), format)
    db = request.app.state.db
    settings = request.app.state.settings
    if branch_id is not None:
        branch = await store.get_branch(db, branch_id)
        if branch is None:
            raise invalid("branch_id", "no such branch")
        principal.ensure_region(branch["region_code"])
        domain.ensure_active(branch)
    digest = _content_digest(request)
    if digest is not None:
        prior = await store.completed_import_by_sha(db, digest, principal.region)
        if prior is not None:  # the same file, already imported without a rejected row: nothing to do
            return JSONResponse(import_view(prior), status_code=200,
                                headers={"Content-Location": f"/v1/imports/{prior['id']}"})
    import_id = uuid7()
    length = request.headers.get("content-length")
    await store.create_import(db, import_id, principal.subject, principal.region, fmt, branch_id,
                              int(length) if length and length.isdigit() else None)
    started = asyncio.get_running_loop().time()
    error: str | None = None
    importer: Importer | None = None
    try:
        importer = Importer(db, vault(request), principal, import_id, fmt, charset=charset, default_branch=branch_id,
                            batch_rows=getattr(settings, "import_batch_rows", 5000),
                            writers=getattr(settings, "import_writers", 2), trace_id=trace_id_var.get())
        await importer.run(request.stream())
    except ImportFailed as exc:
        error = str(exc)
    except ClientDisconnect:
        error = "the upload was interrupted before the end of the file"
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("member import stopped: database unavailable",
                    extra={"import_id": str(import_id), "error": type(exc).__name__})
        await _finish_quietly(db, import_id, importer,
                              "the database became unavailable; the rows written so far are kept")
        raise Problem(503, "database-unavailable", "The database is not available; upload the file again later",
                      "rows already written are kept and will be reported as already members",
                      import_id=str(import_id)) from None
    except BaseException:
        await _finish_quietly(db, import_id, importer, "internal error: the rows written so far are kept; upload again")
        raise
    rec = await _finish(db, import_id, importer, "failed" if error else "completed", error)
    log.info("member import finished", extra={
        "import_id": str(import_id), "status": rec["status"], "rows": rec["rows_total"], "accepted": rec["accepted"],
        "rejected": rec["rejected"], "already_members": rec["already_members"],
        "seconds": round(asyncio.get_running_loop().time() - started, 3)})
    if error:
        raise Problem(422, "import-failed", "The upload could not be read to the end", error,
                      import_id=str(import_id), **{"import": import_view(rec)})
    return JSONResponse(import_view(rec), status_code=201, headers={"Location": f"/v1/imports/{import_id}"})


async def _finish_quietly(db, import_id: uuid.UUID, importer: Importer | None, error: str) -> None:
    """Record a failed import (never left ``running``); the original failure is the one to report."""
    try:
        await _finish(db, import_id, importer, "failed", error)
    except Exception:  # noqa: BLE001
        log.warning("could not record the failed import", extra={"import_id": str(import_id)})


async def _finish(db, import_id: uuid.UUID, importer: Importer | None, status: str, error: str | None):
    if importer is None:  # it failed before it read anything
        return await store.finish_import(db, import_id, status=status, encoding=None, rows_total=0, bytes_read=0,
                                         sha256=None, ignored_columns=[], error=error)
    return await store.finish_import(
        db, import_id, status=status, encoding=(importer.decoder.encoding if importer.decoder else "utf-8"),
        rows_total=importer.counts.rows, bytes_read=importer.counts.bytes,
        sha256=getattr(importer, "sha256", None) if status == "completed" else None,
        ignored_columns=importer.ignored_columns, error=error)


@router.get("/imports", tags=["imports"], summary="Imports in the caller's scope, newest first (progress of running ones)")
async def list_imports(request: Request, status: Literal["running", "completed", "failed"] | None = None,
                       limit: int = Limit, cursor: str | None = Cursor,
                       principal: Principal = Depends(require(READ))) -> dict:
    rows = await store.list_imports(request.app.state.db, scope_regions=regions.descendants(principal.region),
                                    status=status, after=_cursor_in(cursor, int), limit=limit + 1)
    return _page([import_view(r) for r in rows], rows, limit, lambda r: r["seq"])


@router.get("/imports/{import_id}", tags=["imports"], summary="An import's progress and its per-row report")
async def get_import(import_id: uuid.UUID, request: Request,
                     outcome: Literal["accepted", "rejected", "already_member"] | None = None,
                     limit: int = Query(100, ge=1, le=1000), cursor: str | None = Cursor,
                     principal: Principal = Depends(require(READ))) -> dict:
    db = request.app.state.db
    rec = await store.get_import(db, import_id)
    if rec is None or not (principal.may_act_on(rec["scope_region"]) or rec["subject"] == principal.subject):
        raise not_found("import", import_id)
    rows = await store.import_report(db, import_id, outcome=outcome, after_row=_cursor_in(cursor, int) or 0,
                                     limit=limit + 1)
    items = [{"row": r["row"], "outcome": r["outcome"], "member_id": str(r["member_id"]) if r["member_id"] else None,
              **({"field": r["field"], "reason": r["reason"]} if r["outcome"] != "accepted" else {})} for r in rows]
    return {**import_view(rec), "report": _page(items, rows, limit, lambda r: r["row"])}


# -- service stations -----------------------------------------------------------
@router.post("/stations", status_code=201, tags=["stations"], summary="Open an outdoor-worker service station")
async def open_station(body: domain.StationIn, request: Request, principal: Principal = Depends(require(WRITE))):
    principal.ensure_region(body.region_code)

    async def run(conn: asyncpg.Connection):
        branch = _referenced_branch(await store.lock_branches(conn, [body.branch_id]), body.branch_id, principal,
                                    "branch_id")
        station_id = uuid.uuid4()
        event = domain.station_opened(station_id, body, branch, _today(body.opened_on))
        await store.insert_station(conn, station_id, body.name, branch["id"], body.region_code, body.services,
                                   event.opened_on)
        await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 201, station_view(await store.get_station(conn, station_id))

    return await _write(request, principal, "stations.open", body.model_dump(mode="json"), run)


@router.post("/stations/{station_id}:close", tags=["stations"], summary="Close a service station")
async def close_station(station_id: uuid.UUID, request: Request, body: domain.CloseIn | None = None,
                        principal: Principal = Depends(require(WRITE))):
    body = body or domain.CloseIn()

    async def run(conn: asyncpg.Connection):
        station = await store.get_station(conn, station_id)
        if station is None or not principal.may_act_on(station["region_code"]):
            raise not_found("station", station_id)
        await store.lock_branches(conn, [station["branch_id"]])
        station = await store.get_station(conn, station_id, lock=True)
        event = domain.station_closed(station, _today(body.closed_on))
        await store.close_station(conn, station_id, event.closed_on)
        await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 200, station_view(await store.get_station(conn, station_id))

    return await _write(request, principal, f"stations.close:{station_id}", body.model_dump(mode="json"), run)


@router.get("/stations", tags=["stations"], summary="Service stations by region, a page at a time")
async def list_stations(request: Request, region: str | None = Query(None, description="city or county, and below"),
                        branch_id: uuid.UUID | None = None, status: Literal["open", "closed"] | None = None,
                        limit: int = Limit, cursor: str | None = Cursor,
                        principal: Principal = Depends(require(READ))) -> dict:
    rows = await store.list_stations(request.app.state.db, regions=_scope_regions(principal, region),
                                     branch_id=branch_id, status=status, after=_cursor_in(cursor, int),
                                     limit=limit + 1)
    return _page([station_view(r) for r in rows], rows, limit, lambda r: r["seq"])


@router.get("/stations/{station_id}", tags=["stations"], summary="One service station")
async def get_station(station_id: uuid.UUID, request: Request, principal: Principal = Depends(require(READ))):
    row = await store.get_station(request.app.state.db, station_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("station", station_id)
    return station_view(row)
