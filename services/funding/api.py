"""Funding's HTTP routes: parse, authorise (scope), call the use case, shape the answer.

Amounts are decimal yuan strings both ways ("800.00"); every write runs through
``shared.http.write`` (one transaction, ``Idempotency-Key`` honoured). Who may do what:

* ``funding:read`` reads, ``funding:write`` writes grants, payments, payees and claim retries —
  within the token's region (out of scope: 404 on read or on a write addressed by id, 403 on a
  write naming a region; lists cut to the scope);
* region-wide settings (funds and their top-ups and closing, subsidy rules and routes) need a
  region-level token (640000) with ``funding:admin``.

Every list answers ``{"items": [...], "next_cursor": ...}`` (``limit``, opaque ``cursor``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from services.funding import domain, usecases
from services.funding.store import figures_of
from shared.auth import Principal, require
from shared.clock import today_cn
from shared.events.funding import BeneficiaryKind, SourceKind
from shared.events.training import SubsidyCategory
from shared.http import Db, write
from shared.money import fen_to_yuan
from shared.pagination import Cursor, Limit, Page, decode_cursor, page
from shared.regions import RegionCode

router = APIRouter(prefix="/v1")
READ = require("funding:read")
WRITE = require("funding:write")
ADMIN = require(domain.ADMIN_SCOPE)

YuanText = Annotated[str, Field(pattern=r"^-?\d+\.\d{2}$", examples=["800.00"], description="decimal yuan")]
BIGINT = 2**63 - 1
RegionQuery = Query(None, description="narrow to this region and below (within the token's scope)")


# -- response models -----------------------------------------------------------------------
class Fund(BaseModel):
    id: uuid.UUID
    name: str
    source_kind: SourceKind
    fiscal_year: int
    status: str
    opened_on: date
    closed_on: date | None
    account_id: int
    grants: int
    total: YuanText
    appropriated: YuanText
    returned: YuanText
    allocated: YuanText
    committed: YuanText
    disbursed: YuanText
    available: YuanText


class Party(BaseModel):
    kind: str
    id: str
    name: str | None


class Grant(BaseModel):
    id: uuid.UUID
    fund_id: uuid.UUID
    source_kind: SourceKind
    fiscal_year: int
    beneficiary: Party
    purpose: str
    region_code: str
    amount: YuanText
    paid: YuanText
    released: YuanText
    remaining: YuanText
    status: str
    approved_on: date
    closed_on: date | None
    account_id: int
    claim_id: uuid.UUID | None


class RevokedGrant(Grant):
    released_now: YuanText


class Disbursement(BaseModel):
    id: uuid.UUID
    grant_id: uuid.UUID
    amount: YuanText
    paid_on: date
    memo: str | None
    entry_id: int
    grant_remaining: YuanText | None = None
    grant_status: str | None = None


class Beneficiary(BaseModel):
    kind: BeneficiaryKind
    id: str
    name: str
    region_code: str
    account_id: int
    grants: int
    granted: YuanText
    outstanding: YuanText
    disbursed: YuanText


class SubsidyRule(BaseModel):
    category: SubsidyCategory
    effective_from: date
    rate: YuanText
    note: str | None
    origin: str


class RuleDeleted(BaseModel):
    deleted: bool
    category: SubsidyCategory
    effective_from: date


class SubsidyRoute(BaseModel):
    category: SubsidyCategory
    year: int | None
    fund_id: uuid.UUID
    fund_name: str
    source_kind: SourceKind
    fiscal_year: int
    fund_status: str


class Claim(BaseModel):
    id: uuid.UUID
    session_id: uuid.UUID
    programme_id: uuid.UUID | None
    programme_name: str | None
    session_number: int | None
    organiser: Party
    category: SubsidyCategory
    region_code: str
    city_code: str | None
    persons: int
    completed_on: date
    rate: YuanText | None
    amount: YuanText | None
    status: str
    reason: str | None
    detail: str | None
    fund_id: uuid.UUID | None
    grant_id: uuid.UUID | None
    disbursement_id: uuid.UUID | None
    attempts: int
    created_at: datetime
    updated_at: datetime


class Totals(BaseModel):
    funds: int
    total: YuanText
    allocated: YuanText
    committed: YuanText
    disbursed: YuanText
    remaining: YuanText


class FundReport(Page[Fund]):
    totals: Totals = Field(description="over every fund the filters select, not only this page")


class SourceFigures(BaseModel):
    source_kind: SourceKind
    fiscal_year: int
    funds: int
    total: YuanText
    allocated: YuanText
    committed: YuanText
    disbursed: YuanText
    remaining: YuanText


class Account(BaseModel):
    id: int
    kind: str
    name: str
    balance: YuanText
    source_kind: str | None
    fund_id: uuid.UUID | None
    grant_id: uuid.UUID | None
    beneficiary: Party | None


class Counterpart(BaseModel):
    account_id: int
    amount: YuanText


class JournalLine(BaseModel):
    line_id: int
    entry_id: int
    kind: str
    effective_on: date
    amount: YuanText
    balance_after: YuanText
    memo: str | None
    fund_id: uuid.UUID
    grant_id: uuid.UUID | None
    reference: uuid.UUID | None
    counterparts: list[Counterpart]
    recorded_at: datetime


class Journal(Page[JournalLine]):
    account: Account


class LedgerCheck(BaseModel):
    ok: bool
    violations: list[str]
    funds: int
    grants: int
    paid_claims: int
    entries: int
    lines: int
    accounts: int


# -- views: a stored row as its response model ----------------------------------------------
def _y(fen: int | None) -> str | None:
    return None if fen is None else fen_to_yuan(int(fen))


def fund_view(row: asyncpg.Record) -> Fund:
    f = figures_of(row)
    return Fund(
        id=row["id"],
        name=row["name"],
        source_kind=row["source_kind"],
        fiscal_year=row["fiscal_year"],
        status=row["status"],
        opened_on=row["opened_on"],
        closed_on=row["closed_on"],
        account_id=row["account_id"],
        grants=row["grants"],
        total=_y(f.total_fen),
        appropriated=_y(row["appropriated_fen"]),
        returned=_y(row["returned_fen"]),
        allocated=_y(f.allocated_fen),
        committed=_y(f.committed_fen),
        disbursed=_y(f.disbursed_fen),
        available=_y(f.available_fen),
    )


def grant_view(row: asyncpg.Record) -> Grant:
    return Grant(
        id=row["id"],
        fund_id=row["fund_id"],
        source_kind=row["source_kind"],
        fiscal_year=row["fiscal_year"],
        beneficiary=Party(kind=row["beneficiary_kind"], id=row["beneficiary_id"], name=row["beneficiary_name"]),
        purpose=row["purpose"],
        region_code=row["region_code"],
        amount=_y(row["amount_fen"]),
        paid=_y(row["paid_fen"]),
        released=_y(row["released_fen"]),
        remaining=_y(row["remaining_fen"]),
        status=row["status"],
        approved_on=row["approved_on"],
        closed_on=row["closed_on"],
        account_id=row["account_id"],
        claim_id=row["claim_id"],
    )


def disbursement_view(row: asyncpg.Record, grant: asyncpg.Record | None = None) -> Disbursement:
    return Disbursement(
        id=row["id"],
        grant_id=row["grant_id"],
        amount=_y(row["amount_fen"]),
        paid_on=row["paid_on"],
        memo=row["memo"],
        entry_id=row["entry_id"],
        grant_remaining=_y(grant["remaining_fen"]) if grant is not None else None,
        grant_status=grant["status"] if grant is not None else None,
    )


def beneficiary_view(row: asyncpg.Record) -> Beneficiary:
    return Beneficiary(
        kind=row["kind"],
        id=row["id"],
        name=row["name"],
        region_code=row["region_code"],
        account_id=row["account_id"],
        grants=row["grants"],
        granted=_y(row["granted_fen"]),
        outstanding=_y(row["outstanding_fen"]),
        disbursed=_y(row["disbursed_fen"]),
    )


def rule_view(row: asyncpg.Record) -> SubsidyRule:
    return SubsidyRule(
        category=row["category"],
        effective_from=row["effective_from"],
        rate=_y(row["rate_fen"]),
        note=row["note"],
        origin=row["origin"],
    )


def route_view(row: asyncpg.Record) -> SubsidyRoute:
    return SubsidyRoute(
        category=row["category"],
        year=row["year"],
        fund_id=row["fund_id"],
        fund_name=row["fund_name"],
        source_kind=row["source_kind"],
        fiscal_year=row["fiscal_year"],
        fund_status=row["fund_status"],
    )


def claim_view(row: Any) -> Claim:
    return Claim(
        id=row["id"],
        session_id=row["session_id"],
        programme_id=row["programme_id"],
        programme_name=row["programme_name"],
        session_number=row["session_number"],
        organiser=Party(kind=row["organiser_kind"], id=row["organiser_id"], name=row["organiser_name"]),
        category=row["category"],
        region_code=row["region_code"],
        city_code=row["city_code"],
        persons=row["persons"],
        completed_on=row["completed_on"],
        rate=_y(row["rate_fen"]),
        amount=_y(row["amount_fen"]),
        status=row["status"],
        reason=row["reason"],
        detail=row["detail"],
        fund_id=row["fund_id"],
        grant_id=row["grant_id"],
        disbursement_id=row["disbursement_id"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


# -- cursors ------------------------------------------------------------------------------------
def _time_id(text: str) -> tuple[datetime, uuid.UUID]:
    at, _, ident = text.partition("|")
    return datetime.fromisoformat(at), uuid.UUID(ident)


def _time_id_of(row: asyncpg.Record) -> str:
    return f"{row['created_at'].isoformat()}|{row['id']}"


def _pair(text: str) -> tuple[str, str]:
    first, sep, second = text.partition("|")
    if not sep:
        raise ValueError("not a pair")
    return first, second


def _in_memory(
    rows: list[Any], limit: int, cursor: str | None, key: Callable[[Any], str], view: Callable[[Any], Any]
) -> dict[str, Any]:
    """A page of a short list read whole (rules, routes, sources): sorted by ``key``, after the cursor's."""
    after = decode_cursor(cursor, str)
    ordered = sorted(rows, key=key)
    return page([r for r in ordered if after is None or key(r) > after][: limit + 1], limit, key, view)


# -- funds (region-wide) ---------------------------------------------------------------------
@router.post(
    "/funds",
    status_code=201,
    response_model=Fund,
    tags=["funds"],
    summary="Open a fund (资金来源) — funding:admin, region-level token",
)
async def open_fund(body: domain.FundIn, request: Request, principal: Principal = Depends(ADMIN)):
    async def run(conn):
        fund_id = await usecases.open_fund(conn, body, principal, today_cn())
        return 201, _json(fund_view(await usecases.get_fund(conn, fund_id, principal)))

    return await write(request, principal, "funds.open", body.model_dump(mode="json"), run)


@router.get(
    "/funds", response_model=Page[Fund], tags=["funds"], summary="Funds, with available / committed / disbursed"
)
async def list_funds(
    pool: Db,
    source_kind: SourceKind | None = None,
    fiscal_year: int | None = Query(None, ge=2000, le=2100),
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(READ),
):
    rows = await usecases.list_funds(
        pool,
        principal,
        source_kind=source_kind.value if source_kind else None,
        fiscal_year=fiscal_year,
        after=decode_cursor(cursor, _time_id),
        limit=limit,
    )
    return page(rows, limit, _time_id_of, fund_view)


@router.get("/funds/{fund_id}", response_model=Fund, tags=["funds"], summary="One fund")
async def get_fund(fund_id: uuid.UUID, pool: Db, principal: Principal = Depends(READ)):
    return fund_view(await usecases.get_fund(pool, fund_id, principal))


@router.post(
    "/funds/{fund_id}/top-ups",
    response_model=Fund,
    tags=["funds"],
    summary="Top up a fund — funding:admin, region-level token",
)
async def top_up(fund_id: uuid.UUID, body: domain.TopUpIn, request: Request, principal: Principal = Depends(ADMIN)):
    async def run(conn):
        await usecases.top_up(conn, fund_id, body, principal, today_cn())
        return 200, _json(fund_view(await usecases.get_fund(conn, fund_id, principal)))

    return await write(
        request, principal, "funds.top_up", {"fund_id": str(fund_id), **body.model_dump(mode="json")}, run
    )


@router.post(
    "/funds/{fund_id}/close",
    response_model=Fund,
    tags=["funds"],
    summary="Close a fund: unspent money returns to its source — funding:admin, region-level token",
)
async def close_fund(
    fund_id: uuid.UUID, request: Request, body: domain.CloseIn | None = None, principal: Principal = Depends(ADMIN)
):
    body = body or domain.CloseIn()

    async def run(conn):
        await usecases.close_fund(conn, fund_id, body, principal, today_cn())
        return 200, _json(fund_view(await usecases.get_fund(conn, fund_id, principal)))

    return await write(
        request, principal, "funds.close", {"fund_id": str(fund_id), **body.model_dump(mode="json")}, run
    )


# -- grants ----------------------------------------------------------------------------------
@router.post(
    "/grants",
    status_code=201,
    response_model=Grant,
    tags=["grants"],
    summary="Approve a grant (资金安排) from a fund, within the token's region",
)
async def approve_grant(body: domain.GrantIn, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        grant_id = await usecases.approve_grant(conn, body, principal, today_cn())
        return 201, _json(grant_view(await usecases.get_grant(conn, grant_id, principal)))

    return await write(request, principal, "grants.approve", body.model_dump(mode="json"), run)


@router.get(
    "/grants",
    response_model=Page[Grant],
    tags=["grants"],
    summary="Grants within the token's region, by fund, beneficiary, status or region",
)
async def list_grants(
    pool: Db,
    fund_id: uuid.UUID | None = None,
    beneficiary_kind: BeneficiaryKind | None = None,
    beneficiary_id: str | None = Query(None, max_length=100, pattern=domain.PRINTABLE),
    status: str | None = Query(None, pattern="^(open|closed|revoked)$"),
    region: RegionCode | None = RegionQuery,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(READ),
):
    rows = await usecases.list_grants(
        pool,
        principal,
        fund_id=fund_id,
        beneficiary_kind=beneficiary_kind.value if beneficiary_kind else None,
        beneficiary_id=beneficiary_id,
        status=status,
        region=region,
        after=decode_cursor(cursor, _time_id),
        limit=limit,
    )
    return page(rows, limit, _time_id_of, grant_view)


@router.get("/grants/{grant_id}", response_model=Grant, tags=["grants"], summary="One grant")
async def get_grant(grant_id: uuid.UUID, pool: Db, principal: Principal = Depends(READ)):
    return grant_view(await usecases.get_grant(pool, grant_id, principal))


@router.post(
    "/grants/{grant_id}/revoke",
    response_model=RevokedGrant,
    tags=["grants"],
    summary="Revoke the unpaid rest of a grant",
)
async def revoke_grant(
    grant_id: uuid.UUID, request: Request, body: domain.RevokeIn | None = None, principal: Principal = Depends(WRITE)
):
    body = body or domain.RevokeIn()

    async def run(conn):
        released = await usecases.revoke_grant(conn, grant_id, body, principal, today_cn())
        grant = grant_view(await usecases.get_grant(conn, grant_id, principal))
        return 200, _json(RevokedGrant(**grant.model_dump(), released_now=_y(released)))

    return await write(
        request, principal, "grants.revoke", {"grant_id": str(grant_id), **body.model_dump(mode="json")}, run
    )


@router.post(
    "/grants/{grant_id}/disbursements",
    status_code=201,
    response_model=Disbursement,
    tags=["grants"],
    summary="Pay part or all of a grant (拨付)",
)
async def disburse(
    grant_id: uuid.UUID, body: domain.DisbursementIn, request: Request, principal: Principal = Depends(WRITE)
):
    async def run(conn):
        paid = await usecases.disburse(conn, grant_id, body, principal, today_cn())
        return 201, _json(
            Disbursement(
                id=paid.id,
                grant_id=paid.grant_id,
                amount=_y(paid.amount_fen),
                paid_on=paid.paid_on,
                memo=paid.memo,
                entry_id=paid.entry_id,
                grant_remaining=_y(paid.grant_remaining_fen),
                grant_status=paid.grant_status,
            )
        )

    return await write(
        request, principal, "grants.disburse", {"grant_id": str(grant_id), **body.model_dump(mode="json")}, run
    )


@router.get(
    "/grants/{grant_id}/disbursements",
    response_model=Page[Disbursement],
    tags=["grants"],
    summary="Payments under a grant, in the order they were booked",
)
async def list_disbursements(
    grant_id: uuid.UUID, pool: Db, limit: int = Limit, cursor: str | None = Cursor, principal: Principal = Depends(READ)
):
    rows = await usecases.list_disbursements(pool, grant_id, principal, after=decode_cursor(cursor, int), limit=limit)
    return page(rows, limit, lambda r: r["entry_id"], disbursement_view)


# -- beneficiaries (payees) ------------------------------------------------------------------------
BeneficiaryId = Annotated[str, Path(min_length=1, max_length=100, pattern=domain.PRINTABLE)]


@router.put(
    "/beneficiaries/{kind}/{beneficiary_id}",
    response_model=Beneficiary,
    responses={201: {"model": Beneficiary, "description": "registered now (200: it was, and is updated)"}},
    tags=["beneficiaries"],
    summary="Register a payee within the token's region (training organisers must be, to be paid subsidies)",
)
async def put_beneficiary(
    kind: BeneficiaryKind,
    beneficiary_id: BeneficiaryId,
    body: domain.BeneficiaryIn,
    request: Request,
    principal: Principal = Depends(WRITE),
):
    async def run(conn):
        row, created = await usecases.put_beneficiary(conn, kind.value, beneficiary_id, body, principal)
        return (201 if created else 200), _json(beneficiary_view(row))

    return await write(
        request,
        principal,
        "beneficiaries.put",
        {"kind": kind.value, "id": beneficiary_id, **body.model_dump(mode="json")},
        run,
    )


@router.get(
    "/beneficiaries/{kind}/{beneficiary_id}",
    response_model=Beneficiary,
    tags=["beneficiaries"],
    summary="One beneficiary and its money",
)
async def get_beneficiary(
    kind: BeneficiaryKind, beneficiary_id: BeneficiaryId, pool: Db, principal: Principal = Depends(READ)
):
    return beneficiary_view(await usecases.get_beneficiary(pool, kind.value, beneficiary_id, principal))


# -- subsidy rules, routes and claims ---------------------------------------------------------------
def _rule_key(row: asyncpg.Record) -> str:
    return f"{row['category']}|{row['effective_from'].isoformat()}"


@router.get(
    "/subsidy-rules",
    response_model=Page[SubsidyRule],
    tags=["subsidies"],
    summary="Subsidy standards (补贴标准), or those in force on a date",
)
async def list_rules(
    pool: Db,
    category: SubsidyCategory | None = None,
    on: date | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
    _: Principal = Depends(READ),
):
    rows = await usecases.list_rules(pool, category=category.value if category else None, on=on)
    return _in_memory(rows, limit, cursor, _rule_key, rule_view)


@router.put(
    "/subsidy-rules/{category}/{effective_from}",
    response_model=SubsidyRule,
    responses={201: {"model": SubsidyRule, "description": "set now (200: it was, and is changed)"}},
    tags=["subsidies"],
    summary="Set the per-person subsidy of a category from a date — funding:admin, region-level token",
)
async def put_rule(
    category: SubsidyCategory,
    effective_from: date,
    body: domain.RuleIn,
    request: Request,
    principal: Principal = Depends(ADMIN),
):
    async def run(conn):
        row, created = await usecases.put_rule(conn, category.value, effective_from, body, principal)
        return (201 if created else 200), _json(rule_view(row))

    return await write(
        request,
        principal,
        "subsidy_rules.put",
        {"category": category.value, "effective_from": effective_from.isoformat(), **body.model_dump(mode="json")},
        run,
    )


@router.delete(
    "/subsidy-rules/{category}/{effective_from}",
    response_model=RuleDeleted,
    tags=["subsidies"],
    summary="Remove a subsidy rule — funding:admin, region-level token",
)
async def delete_rule(
    category: SubsidyCategory, effective_from: date, request: Request, principal: Principal = Depends(ADMIN)
):
    async def run(conn):
        await usecases.delete_rule(conn, category.value, effective_from, principal)
        return 200, _json(RuleDeleted(deleted=True, category=category, effective_from=effective_from))

    return await write(
        request,
        principal,
        "subsidy_rules.delete",
        {"category": category.value, "effective_from": effective_from.isoformat()},
        run,
    )


def _route_key(row: asyncpg.Record) -> str:
    return f"{row['category']}|{row['year'] if row['year'] is not None else ''}"


@router.get(
    "/subsidy-routes",
    response_model=Page[SubsidyRoute],
    tags=["subsidies"],
    summary="Which fund pays which subsidy category",
)
async def list_routes(pool: Db, limit: int = Limit, cursor: str | None = Cursor, _: Principal = Depends(READ)):
    return _in_memory(await usecases.list_routes(pool), limit, cursor, _route_key, route_view)


@router.put(
    "/subsidy-routes/{category}",
    response_model=SubsidyRoute,
    tags=["subsidies"],
    summary="Set the fund that pays a category (for one year of completion, or any year) — "
    "funding:admin, region-level token",
)
async def put_route(
    category: SubsidyCategory, body: domain.RouteIn, request: Request, principal: Principal = Depends(ADMIN)
):
    async def run(conn):
        return 200, _json(route_view(await usecases.put_route(conn, category.value, body, principal)))

    return await write(
        request, principal, "subsidy_routes.put", {"category": category.value, **body.model_dump(mode="json")}, run
    )


@router.get(
    "/subsidy-claims",
    response_model=Page[Claim],
    tags=["subsidies"],
    summary="Subsidy claims of completed sessions within the token's region",
)
async def list_claims(
    pool: Db,
    status: str | None = Query(None, pattern="^(paid|rejected)$"),
    session_id: uuid.UUID | None = None,
    organiser_id: str | None = Query(None, max_length=100, pattern=domain.PRINTABLE),
    region: RegionCode | None = RegionQuery,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(READ),
):
    rows = await usecases.list_claims(
        pool,
        principal,
        status=status,
        session_id=session_id,
        organiser_id=organiser_id,
        region=region,
        after=decode_cursor(cursor, _time_id),
        limit=limit,
    )
    return page(rows, limit, _time_id_of, claim_view)


@router.get("/subsidy-claims/{claim_id}", response_model=Claim, tags=["subsidies"], summary="One subsidy claim")
async def get_claim(claim_id: uuid.UUID, pool: Db, principal: Principal = Depends(READ)):
    return claim_view(await usecases.get_claim(pool, claim_id, principal))


@router.post(
    "/subsidy-claims/{claim_id}/retry",
    response_model=Claim,
    tags=["subsidies"],
    summary="Settle a rejected claim again (after a top-up, a new rule, route or registered organiser)",
)
async def retry_claim(claim_id: uuid.UUID, request: Request, principal: Principal = Depends(WRITE)):
    auto = bool(getattr(request.app.state.settings, "funding_auto_register_organisers", False))

    async def run(conn):
        row = await usecases.retry_claim(conn, claim_id, principal, today_cn(), auto_register_organisers=auto)
        return 200, _json(claim_view(row))

    return await write(request, principal, "subsidy_claims.retry", {"claim_id": str(claim_id)}, run)


# -- reports and the ledger ------------------------------------------------------------------
@router.get(
    "/reports/funds",
    response_model=FundReport,
    tags=["reports"],
    summary="Per fund: total, allocated, disbursed, remaining; totals over every selected fund",
)
async def report_funds(
    pool: Db,
    source_kind: SourceKind | None = None,
    fiscal_year: int | None = Query(None, ge=2000, le=2100),
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(READ),
):
    pool = pool
    kind = source_kind.value if source_kind else None
    rows = await usecases.list_funds(
        pool, principal, source_kind=kind, fiscal_year=fiscal_year, after=decode_cursor(cursor, _time_id), limit=limit
    )
    t = await usecases.fund_totals(pool, source_kind=kind, fiscal_year=fiscal_year)
    totals = Totals(
        funds=t.funds,
        total=_y(t.total_fen),
        allocated=_y(t.allocated_fen),
        committed=_y(t.committed_fen),
        disbursed=_y(t.disbursed_fen),
        remaining=_y(t.available_fen),
    )
    return {**page(rows, limit, _time_id_of, fund_view), "totals": totals}


@router.get(
    "/reports/sources", response_model=Page[SourceFigures], tags=["reports"], summary="Per source kind and fiscal year"
)
async def report_sources(pool: Db, limit: int = Limit, cursor: str | None = Cursor, _: Principal = Depends(READ)):
    rows = await usecases.report_sources(pool)

    def view(g: dict[str, Any]) -> SourceFigures:
        return SourceFigures(
            source_kind=g["source_kind"],
            fiscal_year=g["fiscal_year"],
            funds=g["funds"],
            **{k: _y(g[k]) for k in ("total", "allocated", "committed", "disbursed", "remaining")},
        )

    return _in_memory(rows, limit, cursor, lambda g: f"{g['source_kind']}|{g['fiscal_year']:04d}", view)


@router.get(
    "/reports/beneficiaries",
    response_model=Page[Beneficiary],
    tags=["reports"],
    summary="Per beneficiary within the token's region: granted, outstanding, disbursed",
)
async def report_beneficiaries(
    pool: Db,
    kind: BeneficiaryKind | None = None,
    region: RegionCode | None = RegionQuery,
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(READ),
):
    rows = await usecases.report_beneficiaries(
        pool,
        principal,
        kind=kind.value if kind else None,
        region=region,
        after=decode_cursor(cursor, _pair),
        limit=limit,
    )
    return page(rows, limit, lambda r: f"{r['kind']}|{r['id']}", beneficiary_view)


@router.get(
    "/accounts/{account_id}/journal",
    response_model=Journal,
    tags=["reports"],
    summary="The journal of one account (a grant's or payee's within the token's region; a fund's or "
    "source's to a region-level token)",
)
async def account_journal(
    pool: Db,
    account_id: int = Path(ge=1, le=BIGINT),
    limit: int = Limit,
    cursor: str | None = Cursor,
    principal: Principal = Depends(READ),
):
    acct, lines = await usecases.account_journal(
        pool, account_id, principal, after=decode_cursor(cursor, int), limit=limit
    )

    def line(r: asyncpg.Record) -> JournalLine:
        return JournalLine(
            line_id=r["line_id"],
            entry_id=r["entry_id"],
            kind=r["kind"],
            effective_on=r["effective_on"],
            amount=_y(r["amount"]),
            balance_after=_y(r["balance_after"]),
            memo=r["memo"],
            fund_id=r["fund_id"],
            grant_id=r["grant_id"],
            reference=r["reference"],
            counterparts=[Counterpart(account_id=int(a), amount=_y(int(m))) for a, m in (r["counterparts"] or [])],
            recorded_at=r["created_at"],
        )

    account = Account(
        id=acct["id"],
        kind=acct["kind"],
        name=acct["name"],
        balance=_y(acct["balance"]),
        source_kind=acct["source_kind"],
        fund_id=acct["fund_id"],
        grant_id=acct["grant_id"],
        beneficiary=(
            Party(kind=acct["beneficiary_kind"], id=acct["beneficiary_id"], name=None)
            if acct["beneficiary_id"]
            else None
        ),
    )
    return {**page(lines, limit, lambda r: r["line_id"], line), "account": account}


@router.get(
    "/ledger/check",
    response_model=LedgerCheck,
    tags=["reports"],
    summary="Check every invariant of the ledger (region-level token)",
)
async def ledger_check(pool: Db, principal: Principal = Depends(READ)):
    return await usecases.ledger_check(pool, principal)
