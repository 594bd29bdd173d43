"""Funding's HTTP routes: thin; the ledger operations live in ledger.py, rules in domain.py, SQL in store.py.

Amounts are decimal yuan strings both ways ("800.00"); every write runs through
``shared.http.write`` (one transaction, ``Idempotency-Key`` honoured).
"""
from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Query, Request

from services.funding import domain, ledger, store
from shared.auth import Principal, require
from shared.events.funding import BeneficiaryKind, SourceKind
from shared.events.training import SubsidyCategory
from shared.http import write
from shared.money import fen_to_yuan
from shared.problems import Problem, invalid, not_found

router = APIRouter(prefix="/v1")
READ = require("funding:read")
WRITE = require("funding:write")


def _y(fen: int | None) -> str | None:
    return None if fen is None else fen_to_yuan(int(fen))


def _d(value: date | None) -> str | None:
    return value.isoformat() if value else None


def fund_view(row: asyncpg.Record) -> dict[str, Any]:
    figures = store.figures_of(row)
    return {
        "id": str(row["id"]), "name": row["name"], "source_kind": row["source_kind"],
        "fiscal_year": row["fiscal_year"], "status": row["status"], "opened_on": _d(row["opened_on"]),
        "closed_on": _d(row["closed_on"]), "account_id": row["account_id"], "grants": row["grants"],
        "total": _y(figures.total_fen), "appropriated": _y(row["appropriated_fen"]), "returned": _y(row["returned_fen"]),
        "allocated": _y(figures.allocated_fen), "committed": _y(figures.committed_fen),
        "disbursed": _y(figures.disbursed_fen), "available": _y(figures.available_fen),
    }


def grant_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "fund_id": str(row["fund_id"]), "source_kind": row["source_kind"],
        "fiscal_year": row["fiscal_year"],
        "beneficiary": {"kind": row["beneficiary_kind"], "id": row["beneficiary_id"], "name": row["beneficiary_name"]},
        "purpose": row["purpose"], "region_code": row["region_code"], "amount": _y(row["amount_fen"]),
        "paid": _y(row["paid_fen"]), "released": _y(row["released_fen"]), "remaining": _y(row["remaining_fen"]),
        "status": row["status"], "approved_on": _d(row["approved_on"]), "closed_on": _d(row["closed_on"]),
        "account_id": row["account_id"], "claim_id": str(row["claim_id"]) if row["claim_id"] else None,
    }


def disbursement_view(row: asyncpg.Record, grant: asyncpg.Record | None = None) -> dict[str, Any]:
    view = {"id": str(row["id"]), "grant_id": str(row["grant_id"]), "amount": _y(row["amount_fen"]),
            "paid_on": _d(row["paid_on"]), "memo": row["memo"], "entry_id": row["entry_id"]}
    if grant is not None:
        view["grant_remaining"] = _y(grant["remaining_fen"])
        view["grant_status"] = grant["status"]
    return view


def claim_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "session_id": str(row["session_id"]),
        "programme_id": str(row["programme_id"]) if row["programme_id"] else None,
        "programme_name": row["programme_name"], "session_number": row["session_number"],
        "organiser": {"kind": row["organiser_kind"], "id": row["organiser_id"], "name": row["organiser_name"]},
        "category": row["category"], "region_code": row["region_code"], "city_code": row["city_code"],
        "persons": row["persons"], "completed_on": _d(row["completed_on"]), "rate": _y(row["rate_fen"]),
        "amount": _y(row["amount_fen"]), "status": row["status"], "reason": row["reason"], "detail": row["detail"],
        "fund_id": str(row["fund_id"]) if row["fund_id"] else None,
        "grant_id": str(row["grant_id"]) if row["grant_id"] else None,
        "disbursement_id": str(row["disbursement_id"]) if row["disbursement_id"] else None,
        "attempts": row["attempts"], "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def beneficiary_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"kind": row["kind"], "id": row["id"], "name": row["name"], "region_code": row["region_code"],
            "account_id": row["account_id"], "grants": row["grants"], "granted": _y(row["granted_fen"]),
            "outstanding": _y(row["outstanding_fen"]), "disbursed": _y(row["disbursed_fen"])}


async def _fund(conn, fund_id: uuid.UUID) -> dict[str, Any]:
    rows = await store.fund_figures(conn, [fund_id])
    if not rows:
        raise not_found("fund", fund_id)
    return fund_view(rows[0])


# -- funds ---------------------------------------------------------------------------
@router.post("/funds", status_code=201, tags=["funds"], summary="Open a fund (资金来源)")
async def open_fund(body: domain.FundIn, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        fund_id = await ledger.open_fund(conn, body)
        return 201, await _fund(conn, fund_id)

    return await write(request, principal, "funds.open", body.model_dump(mode="json"), run)


@router.get("/funds", tags=["funds"], summary="Funds, with available / committed / disbursed")
async def list_funds(request: Request, source_kind: SourceKind | None = None,
                     fiscal_year: int | None = Query(None, ge=2000, le=2100), _: Principal = Depends(READ)):
    rows = await store.fund_figures(request.app.state.db, None, source_kind.value if source_kind else None, fiscal_year)
    return {"funds": [fund_view(r) for r in rows]}


@router.get("/funds/{fund_id}", tags=["funds"], summary="One fund")
async def get_fund(fund_id: uuid.UUID, request: Request, _: Principal = Depends(READ)):
    return await _fund(request.app.state.db, fund_id)


@router.post("/funds/{fund_id}/top-ups", tags=["funds"], summary="Top up a fund")
async def top_up(fund_id: uuid.UUID, body: domain.TopUpIn, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        await ledger.top_up(conn, fund_id, body)
        return 200, await _fund(conn, fund_id)

    return await write(request, principal, "funds.top_up", {"fund_id": str(fund_id), **body.model_dump(mode="json")},
                       run)


@router.post("/funds/{fund_id}/close", tags=["funds"], summary="Close a fund: unspent money returns to its source")
async def close_fund(fund_id: uuid.UUID, request: Request, body: domain.CloseIn | None = None,
                     principal: Principal = Depends(WRITE)):
    body = body or domain.CloseIn()

    async def run(conn):
        await ledger.close_fund(conn, fund_id, body)
        return 200, await _fund(conn, fund_id)

    return await write(request, principal, "funds.close", {"fund_id": str(fund_id), **body.model_dump(mode="json")},
                       run)


# -- grants --------------------------------------------------------------------------
@router.post("/grants", status_code=201, tags=["grants"], summary="Approve a grant (资金安排) from a fund")
async def approve_grant(body: domain.GrantIn, request: Request, principal: Principal = Depends(WRITE)):
    if body.region_code:
        principal.ensure_region(body.region_code)

    async def run(conn):
        grant_id = await ledger.approve_grant(
            conn, fund_id=body.fund_id, beneficiary_kind=body.beneficiary_kind.value,
            beneficiary_id=body.beneficiary_id, beneficiary_name=body.beneficiary_name, purpose=body.purpose,
            region_code=body.region_code, amount_fen=body.amount, approved_on=body.approved_on)
        return 201, grant_view(await store.get_grant(conn, grant_id))

    return await write(request, principal, "grants.approve", body.model_dump(mode="json"), run)


@router.get("/grants", tags=["grants"], summary="Grants, by fund, beneficiary or status")
async def list_grants(request: Request, fund_id: uuid.UUID | None = None,
                      beneficiary_kind: BeneficiaryKind | None = None, beneficiary_id: str | None = None,
                      status: str | None = Query(None, pattern="^(open|closed|revoked)$"),
                      limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
                      _: Principal = Depends(READ)):
    rows = await store.list_grants(request.app.state.db, fund_id=fund_id,
                                   beneficiary_kind=beneficiary_kind.value if beneficiary_kind else None,
                                   beneficiary_id=beneficiary_id, status=status, limit=limit, offset=offset)
    return {"grants": [grant_view(r) for r in rows]}


@router.get("/grants/{grant_id}", tags=["grants"], summary="One grant")
async def get_grant(grant_id: uuid.UUID, request: Request, _: Principal = Depends(READ)):
    row = await store.get_grant(request.app.state.db, grant_id)
    if row is None:
        raise not_found("grant", grant_id)
    return grant_view(row)


@router.post("/grants/{grant_id}/revoke", tags=["grants"], summary="Revoke the unpaid rest of a grant")
async def revoke_grant(grant_id: uuid.UUID, request: Request, body: domain.RevokeIn | None = None,
                       principal: Principal = Depends(WRITE)):
    body = body or domain.RevokeIn()

    async def run(conn):
        released = await ledger.revoke_grant(conn, grant_id, body)
        return 200, {**grant_view(await store.get_grant(conn, grant_id)), "released_now": _y(released)}

    return await write(request, principal, "grants.revoke", {"grant_id": str(grant_id), **body.model_dump(mode="json")},
                       run)


@router.post("/grants/{grant_id}/disbursements", status_code=201, tags=["grants"],
             summary="Pay part or all of a grant (拨付)")
async def disburse(grant_id: uuid.UUID, body: domain.DisbursementIn, request: Request,
                   principal: Principal = Depends(WRITE)):
    async def run(conn):
        disbursement_id = await ledger.disburse(conn, grant_id, body.amount, paid_on=body.paid_on, memo=body.memo)
        row = await conn.fetchrow("SELECT * FROM disbursements WHERE id = $1", disbursement_id)
        return 201, disbursement_view(row, await store.get_grant(conn, grant_id))

    return await write(request, principal, "grants.disburse",
                       {"grant_id": str(grant_id), **body.model_dump(mode="json")}, run)


@router.get("/grants/{grant_id}/disbursements", tags=["grants"], summary="Payments under a grant")
async def list_disbursements(grant_id: uuid.UUID, request: Request, _: Principal = Depends(READ)):
    pool = request.app.state.db
    if await store.get_grant(pool, grant_id) is None:
        raise not_found("grant", grant_id)
    return {"disbursements": [disbursement_view(r) for r in await store.disbursements(pool, grant_id)]}


# -- beneficiaries --------------------------------------------------------------------
@router.put("/beneficiaries/{kind}/{beneficiary_id}", tags=["beneficiaries"],
            summary="Register a beneficiary (a payee: needed before a training organiser can be paid subsidies)")
async def put_beneficiary(kind: BeneficiaryKind, beneficiary_id: str, body: domain.BeneficiaryIn, request: Request,
                          principal: Principal = Depends(WRITE)):
    if not 1 <= len(beneficiary_id) <= 100:
        raise invalid("beneficiary_id", "must be 1 to 100 characters")
    if body.region_code:
        principal.ensure_region(body.region_code)

    async def run(conn):
        _, created = await store.upsert_beneficiary(conn, kind.value, beneficiary_id, body.name, body.region_code)
        rows = await store.beneficiary_report(conn, kind.value, beneficiary_id, 1)
        return (201 if created else 200), beneficiary_view(rows[0])

    return await write(request, principal, "beneficiaries.put",
                       {"kind": kind.value, "id": beneficiary_id, **body.model_dump(mode="json")}, run)


@router.get("/beneficiaries/{kind}/{beneficiary_id}", tags=["beneficiaries"], summary="One beneficiary and its money")
async def get_beneficiary(kind: BeneficiaryKind, beneficiary_id: str, request: Request, _: Principal = Depends(READ)):
    rows = await store.beneficiary_report(request.app.state.db, kind.value, beneficiary_id, 1)
    if not rows:
        raise not_found("beneficiary", f"{kind.value}/{beneficiary_id}")
    return beneficiary_view(rows[0])


# -- subsidy rules, routes and claims -------------------------------------------------------
def rule_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"category": row["category"], "effective_from": _d(row["effective_from"]), "rate": _y(row["rate_fen"]),
            "note": row["note"], "origin": row["origin"]}


@router.get("/subsidy-rules", tags=["subsidies"], summary="Subsidy standards (补贴标准)")
async def list_rules(request: Request, category: SubsidyCategory | None = None, on: date | None = None,
                     _: Principal = Depends(READ)):
    rows = await store.rules(request.app.state.db, category.value if category else None)
    if on is not None:  # the rule in force on that date, per category
        in_force = {c: domain.rule_in_force([r for r in store.as_rules(rows) if r.category == c], on)
                    for c in {r["category"] for r in rows}}
        rows = [r for r in rows if (rule := in_force.get(r["category"])) and rule.effective_from == r["effective_from"]]
    return {"rules": [rule_view(r) for r in rows]}


@router.put("/subsidy-rules/{category}/{effective_from}", tags=["subsidies"],
            summary="Set the per-person subsidy of a category from a date")
async def put_rule(category: SubsidyCategory, effective_from: date, body: domain.RuleIn, request: Request,
                   principal: Principal = Depends(WRITE)):
    async def run(conn):
        created = await store.upsert_rule(conn, category.value, effective_from, body.rate, body.note)
        row = await conn.fetchrow("SELECT * FROM subsidy_rules WHERE category = $1 AND effective_from = $2",
                                  category.value, effective_from)
        return (201 if created else 200), rule_view(row)

    return await write(request, principal, "subsidy_rules.put",
                       {"category": category.value, "effective_from": effective_from.isoformat(),
                        **body.model_dump(mode="json")}, run)


@router.delete("/subsidy-rules/{category}/{effective_from}", tags=["subsidies"], summary="Remove a subsidy rule")
async def delete_rule(category: SubsidyCategory, effective_from: date, request: Request,
                      principal: Principal = Depends(WRITE)):
    async def run(conn):
        if not await store.delete_rule(conn, category.value, effective_from):
            raise not_found("subsidy rule", f"{category.value} from {effective_from.isoformat()}")
        return 200, {"deleted": True, "category": category.value, "effective_from": effective_from.isoformat()}

    return await write(request, principal, "subsidy_rules.delete",
                       {"category": category.value, "effective_from": effective_from.isoformat()}, run)


def route_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"category": row["category"], "year": row["year"], "fund_id": str(row["fund_id"]),
            "fund_name": row["fund_name"], "source_kind": row["source_kind"], "fiscal_year": row["fiscal_year"],
            "fund_status": row["fund_status"]}


@router.get("/subsidy-routes", tags=["subsidies"], summary="Which fund pays which subsidy category")
async def list_routes(request: Request, _: Principal = Depends(READ)):
    return {"routes": [route_view(r) for r in await store.routes(request.app.state.db)]}


@router.put("/subsidy-routes/{category}", tags=["subsidies"],
            summary="Set the fund that pays a category (for one year of completion, or any year)")
async def put_route(category: SubsidyCategory, body: domain.RouteIn, request: Request,
                    principal: Principal = Depends(WRITE)):
    async def run(conn):
        fund = await store.get_fund(conn, body.fund_id)
        if fund is None:
            raise invalid("fund_id", "no such fund")
        if fund["status"] != "open":
            raise Problem(409, "fund-closed", "The fund is closed", f"fund {body.fund_id} cannot pay subsidies",
                          fund_id=str(body.fund_id))
        await store.set_route(conn, category.value, body.year, body.fund_id)
        row = next(r for r in await store.routes(conn) if r["category"] == category.value and r["year"] == body.year)
        return 200, route_view(row)

    return await write(request, principal, "subsidy_routes.put",
                       {"category": category.value, **body.model_dump(mode="json")}, run)


@router.get("/subsidy-claims", tags=["subsidies"], summary="Subsidy claims of completed sessions")
async def list_claims(request: Request, status: str | None = Query(None, pattern="^(paid|rejected)$"),
                      session_id: uuid.UUID | None = None, organiser_id: str | None = None,
                      limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
                      _: Principal = Depends(READ)):
    rows = await store.list_claims(request.app.state.db, status=status, session_id=session_id,
                                   organiser_id=organiser_id, limit=limit, offset=offset)
    return {"claims": [claim_view(r) for r in rows]}


@router.get("/subsidy-claims/{claim_id}", tags=["subsidies"], summary="One subsidy claim")
async def get_claim(claim_id: uuid.UUID, request: Request, _: Principal = Depends(READ)):
    row = await store.get_claim(request.app.state.db, claim_id)
    if row is None:
        raise not_found("subsidy claim", claim_id)
    return claim_view(row)


@router.post("/subsidy-claims/{claim_id}/retry", tags=["subsidies"],
             summary="Settle a rejected claim again (after a top-up, a new rule, route or registered organiser)")
async def retry_claim(claim_id: uuid.UUID, request: Request, principal: Principal = Depends(WRITE)):
    async def run(conn):
        claim = await store.get_claim(conn, claim_id, lock=True)
        if claim is None:
            raise not_found("subsidy claim", claim_id)
        if claim["status"] == "paid":
            raise Problem(409, "claim-paid", "The claim is already paid",
                          f"claim {claim_id} was paid by disbursement {claim['disbursement_id']}")
        auto = getattr(request.app.state.settings, "funding_auto_register_organisers", False)
        outcome = await ledger.settle_claim(conn, dict(claim), auto_register_organisers=auto)
        await store.update_claim(conn, claim_id, outcome)
        return 200, claim_view(await store.get_claim(conn, claim_id))

    return await write(request, principal, "subsidy_claims.retry", {"claim_id": str(claim_id)}, run)


# -- reports and the ledger ------------------------------------------------------------------
@router.get("/reports/funds", tags=["reports"], summary="Per fund: total, allocated, disbursed, remaining")
async def report_funds(request: Request, source_kind: SourceKind | None = None,
                       fiscal_year: int | None = Query(None, ge=2000, le=2100), _: Principal = Depends(READ)):
    rows = await store.fund_figures(request.app.state.db, None, source_kind.value if source_kind else None, fiscal_year)
    funds = [fund_view(r) for r in rows]
    sums = {k: sum(getattr(store.figures_of(r), k) for r in rows)
            for k in ("total_fen", "allocated_fen", "committed_fen", "disbursed_fen", "available_fen")}
    return {"funds": funds, "totals": {"funds": len(rows), "total": _y(sums["total_fen"]),
                                       "allocated": _y(sums["allocated_fen"]), "committed": _y(sums["committed_fen"]),
                                       "disbursed": _y(sums["disbursed_fen"]), "remaining": _y(sums["available_fen"])}}


@router.get("/reports/sources", tags=["reports"], summary="Per source kind and fiscal year")
async def report_sources(request: Request, _: Principal = Depends(READ)):
    groups: dict[tuple[str, int], dict[str, int]] = {}
    for row in await store.fund_figures(request.app.state.db):
        f = store.figures_of(row)
        g = groups.setdefault((row["source_kind"], row["fiscal_year"]), dict.fromkeys(
            ("funds", "total", "allocated", "committed", "disbursed", "remaining"), 0))
        g["funds"] += 1
        g["total"] += f.total_fen
        g["allocated"] += f.allocated_fen
        g["committed"] += f.committed_fen
        g["disbursed"] += f.disbursed_fen
        g["remaining"] += f.available_fen
    return {"sources": [{"source_kind": k, "fiscal_year": y, "funds": g.pop("funds"),
                         **{name: _y(v) for name, v in g.items()}} for (k, y), g in sorted(groups.items())]}


@router.get("/reports/beneficiaries", tags=["reports"], summary="Per beneficiary: granted, outstanding, disbursed")
async def report_beneficiaries(request: Request, kind: BeneficiaryKind | None = None,
                               limit: int = Query(1000, ge=1, le=10000), _: Principal = Depends(READ)):
    rows = await store.beneficiary_report(request.app.state.db, kind.value if kind else None, None, limit)
    return {"beneficiaries": [beneficiary_view(r) for r in rows]}


@router.get("/accounts/{account_id}/journal", tags=["reports"], summary="The journal of one account")
async def account_journal(account_id: int, request: Request, after: int = Query(0, ge=0),
                          limit: int = Query(200, ge=1, le=1000), _: Principal = Depends(READ)):
    pool = request.app.state.db
    acct = await store.account(pool, account_id)
    if acct is None:
        raise not_found("account", account_id)
    lines = await store.journal(pool, account_id, after, limit)
    return {
        "account": {"id": acct["id"], "kind": acct["kind"], "name": acct["name"], "balance": _y(acct["balance"]),
                    "source_kind": acct["source_kind"], "fund_id": str(acct["fund_id"]) if acct["fund_id"] else None,
                    "grant_id": str(acct["grant_id"]) if acct["grant_id"] else None,
                    "beneficiary": ({"kind": acct["beneficiary_kind"], "id": acct["beneficiary_id"]}
                                    if acct["beneficiary_id"] else None)},
        "lines": [{"line_id": r["line_id"], "entry_id": r["entry_id"], "kind": r["kind"],
                   "effective_on": _d(r["effective_on"]), "amount": _y(r["amount"]),
                   "balance_after": _y(r["balance_after"]), "memo": r["memo"], "fund_id": str(r["fund_id"]),
                   "grant_id": str(r["grant_id"]) if r["grant_id"] else None,
                   "reference": str(r["reference"]) if r["reference"] else None,
                   "counterparts": [{"account_id": int(a), "amount": _y(int(m))} for a, m in (r["counterparts"] or [])],
                   "recorded_at": r["created_at"].isoformat()} for r in lines],
        "next_after": lines[-1]["line_id"] if len(lines) == limit else None,
    }


@router.get("/ledger/check", tags=["reports"], summary="Check every invariant of the ledger")
async def ledger_check(request: Request, _: Principal = Depends(READ)):
    async with request.app.state.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await store.ledger_check(conn)
