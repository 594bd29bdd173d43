"""Membership's HTTP routes: thin; rules live in domain.py, SQL in store.py."""
from __future__ import annotations

import uuid

import asyncpg
from fastapi import APIRouter, Depends, Request

from services.membership import domain, store
from shared import outbox, regions
from shared.auth import Principal, require
from shared.http import write
from shared.logging import trace_id_var
from shared.problems import Problem, not_found

router = APIRouter(prefix="/v1", tags=["branches"])


def branch_view(row: asyncpg.Record) -> dict:
    return {
        "id": str(row["id"]), "name": row["name"], "credit_code": row["credit_code"],
        "region_code": row["region_code"], "city_code": regions.city_of(row["region_code"]),
        "industry_section": row["industry_section"], "kind": row["kind"],
        "parent_id": str(row["parent_id"]) if row["parent_id"] else None,
        "founded_on": row["founded_on"].isoformat(), "status": row["status"],
    }


@router.post("/branches", status_code=201, summary="Establish a union branch (成立基层工会)")
async def establish_branch(body: domain.BranchIn, request: Request,
                           principal: Principal = Depends(require("membership:write"))):
    principal.ensure_region(body.region_code)

    async def run(conn: asyncpg.Connection):
        existing = await store.active_branch_by_credit_code(conn, body.credit_code)
        if existing:
            raise Problem(409, "branch-exists", "Employer already has an active union branch",
                          f"credit code {body.credit_code} belongs to branch {existing}", branch_id=str(existing))
        if body.parent_id and not await store.branch_exists(conn, body.parent_id):
            raise Problem(422, "validation-error", "Request is not valid", "parent_id: no such branch",
                          errors=[{"field": "parent_id", "reason": "no such branch"}])
        event = domain.establish_branch(body)
        try:
            await store.insert_branch(conn, event)
        except asyncpg.UniqueViolationError:  # a concurrent request won the race
            raise Problem(409, "branch-exists", "Employer already has an active union branch") from None
        await outbox.add(conn, event, trace_id=trace_id_var.get())
        return 201, branch_view(await store.get_branch(conn, event.branch_id))

    return await write(request, principal, "branches.establish", body.model_dump(mode="json"), run)


@router.get("/branches/{branch_id}", summary="One union branch")
async def get_branch(branch_id: uuid.UUID, request: Request,
                     principal: Principal = Depends(require("membership:read"))):
    row = await store.get_branch(request.app.state.db, branch_id)
    if row is None or not principal.may_act_on(row["region_code"]):
        raise not_found("branch", branch_id)
    return branch_view(row)
