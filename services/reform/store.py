"""The reform ledger's SQL (asyncpg). Every function runs in the caller's connection or transaction."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson

from services.reform.domain import Task
from shared.events.reform import TaskStatus

TASK_COLUMNS = (
    "id, year, number, title, content, measures, source_clause, lead_unit_id, co_unit_ids, deadline, "
    "status, percent, completed_on, last_report_at, overdue_for, progress_due_for, created_at, "
    "updated_at, seq"
)


def task_of(row: asyncpg.Record) -> Task:
    return Task(
        id=row["id"],
        year=row["year"],
        number=row["number"],
        title=row["title"],
        lead_unit_id=row["lead_unit_id"],
        co_unit_ids=tuple(row["co_unit_ids"]),
        deadline=row["deadline"],
        status=TaskStatus(row["status"]),
        percent=row["percent"],
        created_at=row["created_at"],
        last_report_at=row["last_report_at"],
        overdue_for=row["overdue_for"],
        progress_due_for=row["progress_due_for"],
    )


# -- units -----------------------------------------------------------------------------
async def insert_unit(
    conn,
    unit_id: uuid.UUID,
    name: str,
    kind: str,
    liaison_name: str | None,
    liaison_phone: bytes | None,
    liaison_phone_masked: str | None,
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "INSERT INTO units (id, name, kind, liaison_name, liaison_phone, liaison_phone_masked) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING RETURNING *",
        unit_id,
        name,
        kind,
        liaison_name,
        liaison_phone,
        liaison_phone_masked,
    )


async def update_liaison(
    conn, unit_id: uuid.UUID, liaison_name: str | None, liaison_phone: bytes | None, liaison_phone_masked: str | None
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE units SET liaison_name = $2, liaison_phone = $3, liaison_phone_masked = $4, updated_at = now() "
        "WHERE id = $1 RETURNING *",
        unit_id,
        liaison_name,
        liaison_phone,
        liaison_phone_masked,
    )


async def unit(conn, unit_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM units WHERE id = $1", unit_id)


async def unit_name(conn, unit_id: uuid.UUID) -> str:
    return await conn.fetchval("SELECT name FROM units WHERE id = $1", unit_id) or str(unit_id)


async def unit_by_name(conn, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM units WHERE name = $1", name)


async def units_page(conn, after: str | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM units WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2", after, limit + 1
    )


async def units_exist(conn, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    return {r["id"] for r in await conn.fetch("SELECT id FROM units WHERE id = ANY($1::uuid[])", ids)}


# -- years -----------------------------------------------------------------------------
async def insert_year(conn, year: int, opened_on: date) -> bool:
    return bool(
        await conn.fetchval(
            "INSERT INTO years (year, opened_on) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true", year, opened_on
        )
    )


async def add_year_units(conn, year: int, unit_ids: list[uuid.UUID]) -> None:
    await conn.execute(
        "INSERT INTO year_units (year, unit_id) SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING", year, unit_ids
    )


async def year(conn, year: int, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM years WHERE year = $1" + (" FOR UPDATE" if lock else ""), year)


async def year_status(conn, year: int, *, share: bool = True) -> str | None:
    """The year's status; FOR SHARE so closing the year waits for a change in flight and vice versa."""
    return await conn.fetchval("SELECT status FROM years WHERE year = $1" + (" FOR SHARE" if share else ""), year)


async def year_members(conn, year: int) -> set[uuid.UUID]:
    return {r["unit_id"] for r in await conn.fetch("SELECT unit_id FROM year_units WHERE year = $1", year)}


_YEAR_SUMMARY = (
    "SELECT y.*, (SELECT count(*) FROM year_units u WHERE u.year = y.year) AS units, "
    "(SELECT count(*) FROM tasks t WHERE t.year = y.year) AS tasks, "
    "(SELECT count(*) FROM tasks t WHERE t.year = y.year AND t.status = 'completed') AS completed "
    "FROM years y"
)


async def years(conn, *, after: int | None, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit + 1`` years' summaries after the cursor, by year."""
    return await conn.fetch(
        _YEAR_SUMMARY + " WHERE $1::bigint IS NULL OR y.year > $1 ORDER BY y.year LIMIT $2", after, limit + 1
    )


async def year_summary(conn, year: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_YEAR_SUMMARY + " WHERE y.year = $1", year)


async def close_year(conn, year: int, on: date) -> None:
    await conn.execute("UPDATE years SET status = 'closed', closed_on = $2 WHERE year = $1", year, on)


async def year_counts(conn, year: int) -> asyncpg.Record:
    return await conn.fetchrow(
        "SELECT (SELECT count(*) FROM tasks WHERE year = $1) AS tasks, "
        "(SELECT count(*) FROM tasks WHERE year = $1 AND status = 'completed') AS completed, "
        "(SELECT count(*) FROM documents WHERE extract(year FROM issued_on) = $1) AS documents, "
        "(SELECT count(*) FROM pilots WHERE year = $1) AS pilots",
        year,
    )


# -- tasks -----------------------------------------------------------------------------
async def insert_task(conn, task_id: uuid.UUID, cmd: Any) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"INSERT INTO tasks (id, year, number, title, content, measures, source_clause, lead_unit_id, co_unit_ids, "
        f"deadline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (year, number) DO NOTHING "
        f"RETURNING {TASK_COLUMNS}",
        task_id,
        cmd.year,
        cmd.number,
        cmd.title,
        cmd.content,
        cmd.measures,
        cmd.source_clause,
        cmd.lead_unit_id,
        list(cmd.co_unit_ids),
        cmd.deadline,
    )


async def task(conn, task_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1" + (" FOR UPDATE" if lock else ""), task_id
    )


async def task_by_number(conn, year: int, number: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE year = $1 AND number = $2", year, number)


async def set_task(conn, task_id: uuid.UUID, **changes: Any) -> asyncpg.Record:
    names = list(changes)
    sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
    return await conn.fetchrow(
        f"UPDATE tasks SET {sets}, updated_at = now() WHERE id = $1 RETURNING {TASK_COLUMNS}",
        task_id,
        *changes.values(),
    )


async def add_history(
    conn,
    task_id: uuid.UUID,
    actor: str,
    action: str,
    *,
    unit_id: uuid.UUID | None = None,
    percent: int | None = None,
    text: str = "",
    links: list[str] | None = None,
    detail: dict | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO task_history (task_id, actor, action, unit_id, percent, text, links, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        task_id,
        actor,
        action,
        unit_id,
        percent,
        text,
        links or [],
        orjson.dumps(detail or {}).decode(),
    )


async def history(conn, task_id: uuid.UUID, after: int | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM task_history WHERE task_id = $1 AND ($2::bigint IS NULL OR seq > $2) ORDER BY seq LIMIT $3",
        task_id,
        after,
        limit + 1,
    )


async def tasks_page(
    conn,
    *,
    year: int | None,
    status: str | None,
    unit_id: uuid.UUID | None,
    overdue_on: date | None,
    after: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE ($1::int IS NULL OR year = $1) AND ($2::text IS NULL OR status = $2) "
        "AND ($3::uuid IS NULL OR lead_unit_id = $3 OR $3 = ANY(co_unit_ids)) "
        "AND ($4::date IS NULL OR (status <> 'completed' AND deadline < $4)) "
        "AND ($5::bigint IS NULL OR seq > $5) ORDER BY seq LIMIT $6",
        year,
        status,
        unit_id,
        overdue_on,
        after,
        limit + 1,
    )


async def due_for_supervision(conn, today: date, quiet_before: datetime, limit: int) -> list[asyncpg.Record]:
    """Open tasks that may need a notice now, locked; a replica scanning at the same time skips them."""
    return await conn.fetch(
        f"SELECT {TASK_COLUMNS} FROM tasks t WHERE status <> 'completed' "
        "AND (EXISTS (SELECT 1 FROM years y WHERE y.year = t.year AND y.status = 'open')) "
        "AND ((deadline < $1 AND overdue_for IS DISTINCT FROM deadline) "
        "  OR (status IN ('assigned', 'in_progress') AND coalesce(last_report_at, created_at) < $2 "
        "      AND progress_due_for IS DISTINCT FROM coalesce(last_report_at, created_at))) "
        "ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED",
        today,
        quiet_before,
        limit,
    )


# -- documents, pilots, city plans ----------------------------------------------------------
async def insert_document(conn, doc_id: uuid.UUID, cmd: Any, unit_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "INSERT INTO documents (id, unit_id, title, doc_number, issued_on, task_ids, link) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (unit_id, doc_number) DO NOTHING RETURNING *",
        doc_id,
        unit_id,
        cmd.title,
        cmd.doc_number,
        cmd.issued_on,
        list(cmd.task_ids),
        cmd.link,
    )


async def tasks_exist(conn, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    return {r["id"] for r in await conn.fetch("SELECT id FROM tasks WHERE id = ANY($1::uuid[])", ids)}


async def documents_page(
    conn, *, unit_id: uuid.UUID | None, year: int | None, after: int | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM documents WHERE ($1::uuid IS NULL OR unit_id = $1) "
        "AND ($2::int IS NULL OR extract(year FROM issued_on) = $2) AND ($3::bigint IS NULL OR seq > $3) "
        "ORDER BY seq LIMIT $4",
        unit_id,
        year,
        after,
        limit + 1,
    )


async def insert_pilot(conn, pilot_id: uuid.UUID, cmd: Any) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "INSERT INTO pilots (id, year, kind, mode, name, region_code, content, responsible_unit_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (year, kind, name) DO NOTHING RETURNING *",
        pilot_id,
        cmd.year,
        cmd.kind.value,
        cmd.mode.value,
        cmd.name,
        cmd.region_code,
        cmd.content,
        cmd.responsible_unit_id,
    )


async def pilots_page(
    conn, *, year: int | None, kind: str | None, codes: list[str], after: int | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM pilots WHERE ($1::int IS NULL OR year = $1) AND ($2::text IS NULL OR kind = $2) "
        "AND region_code = ANY($3::text[]) AND ($4::bigint IS NULL OR seq > $4) ORDER BY seq LIMIT $5",
        year,
        kind,
        codes,
        after,
        limit + 1,
    )


async def upsert_city_plan(conn, plan_id: uuid.UUID, cmd: Any, city_code: str) -> tuple[asyncpg.Record, bool]:
    row = await conn.fetchrow(
        "INSERT INTO city_plans (id, city_code, title, doc_number, issued_on) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (city_code) DO UPDATE SET title = EXCLUDED.title, doc_number = EXCLUDED.doc_number, "
        "issued_on = EXCLUDED.issued_on RETURNING *, (xmax = 0) AS inserted",
        plan_id,
        city_code,
        cmd.title,
        cmd.doc_number,
        cmd.issued_on,
    )
    return row, row["inserted"]


async def city_plans(conn, codes: list[str], *, after: str | None, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit + 1`` of these cities' plans after the cursor, by city code."""
    return await conn.fetch(
        "SELECT * FROM city_plans WHERE city_code = ANY($1::text[]) AND ($2::text IS NULL OR city_code > $2) "
        "ORDER BY city_code LIMIT $3",
        codes,
        after,
        limit + 1,
    )


# -- the meeting's report --------------------------------------------------------------------
async def report_rows(conn, year: int) -> dict[str, list[asyncpg.Record]]:
    return {
        "by_status": await conn.fetch(
            "SELECT status, count(*) AS n FROM tasks WHERE year = $1 GROUP BY status ORDER BY status", year
        ),
        "by_unit": await conn.fetch(
            "SELECT u.id, u.name, count(t.id) AS tasks, count(t.id) FILTER (WHERE t.status = 'completed') AS completed "
            "FROM units u JOIN tasks t ON t.lead_unit_id = u.id AND t.year = $1 GROUP BY u.id, u.name ORDER BY u.name",
            year,
        ),
        "tasks": await conn.fetch(
            f"SELECT {TASK_COLUMNS}, (SELECT name FROM units WHERE id = lead_unit_id) AS lead_unit_name "
            "FROM tasks WHERE year = $1 ORDER BY number",
            year,
        ),
        "documents": await conn.fetch(
            "SELECT d.*, u.name AS unit_name FROM documents d JOIN units u ON u.id = d.unit_id "
            "WHERE extract(year FROM d.issued_on) = $1 ORDER BY u.name, d.issued_on",
            year,
        ),
        "pilots": await conn.fetch("SELECT * FROM pilots WHERE year = $1 ORDER BY kind, name", year),
    }
