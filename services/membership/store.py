"""Membership's SQL, through asyncpg."""
from __future__ import annotations

import uuid

import asyncpg

from shared.events.membership import BranchEstablished


async def insert_branch(conn: asyncpg.Connection, e: BranchEstablished) -> None:
    await conn.execute(
        """INSERT INTO branches (id, name, credit_code, region_code, industry_section, kind, parent_id, founded_on)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        e.branch_id, e.name, e.credit_code, e.region_code, e.industry_section, e.kind.value, e.parent_id, e.founded_on,
    )


async def active_branch_by_credit_code(conn: asyncpg.Connection, credit_code: str) -> uuid.UUID | None:
    return await conn.fetchval("SELECT id FROM branches WHERE credit_code = $1 AND status = 'active'", credit_code)


async def branch_exists(conn: asyncpg.Connection, branch_id: uuid.UUID) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM branches WHERE id = $1)", branch_id)


async def get_branch(conn: asyncpg.Connection | asyncpg.Pool, branch_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM branches WHERE id = $1", branch_id)
