"""The intake's SQL (asyncpg). Every function runs in the caller's connection or transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.intake.domain import Source
from shared import outbox


def source_of(row: asyncpg.Record) -> Source:
    return Source(
        id=row["id"],
        source=row["source"],
        region_code=row["region_code"],
        event_types=tuple(row["event_types"]),
        client_id=row["client_id"],
        status=row["status"],
    )


# -- sources -----------------------------------------------------------------------------
async def insert_source(
    conn,
    source_id: uuid.UUID,
    source: str,
    name: str,
    region_code: str,
    event_types: list[str],
    client_id: str,
    reply: str,
    reply_url: str | None,
    reply_secret: bytes | None,
    created_by: str,
) -> asyncpg.Record | None:
    """None when the source URI or the client id is already registered."""
    return await conn.fetchrow(
        "INSERT INTO sources (id, source, name, region_code, event_types, client_id, reply, reply_url, "
        "reply_secret, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING "
        "RETURNING *",
        source_id,
        source,
        name,
        region_code,
        event_types,
        client_id,
        reply,
        reply_url,
        reply_secret,
        created_by,
    )


async def source_by_uri_or_client(conn, source: str, client_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM sources WHERE source = $1 OR client_id = $2 LIMIT 1", source, client_id)


async def get_source(conn, source_id: uuid.UUID, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM sources WHERE id = $1" + (" FOR UPDATE" if lock else ""), source_id)


async def source_by_client(conn, client_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM sources WHERE client_id = $1", client_id)


async def sources_by_uri(conn, uris: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM sources WHERE source = ANY($1::text[])", list(uris))


async def sources_page(conn, after: int | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM sources WHERE $1::bigint IS NULL OR seq > $1 ORDER BY seq LIMIT $2", after, limit + 1
    )


async def update_source(conn, source_id: uuid.UUID, changes: dict[str, Any]) -> asyncpg.Record | None:
    """None when the new client id is another source's."""
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
    try:
        async with conn.transaction():
            return await conn.fetchrow(
                f"UPDATE sources SET {sets}, updated_at = now() WHERE id = $1 RETURNING *", source_id, *changes.values()
            )
    except asyncpg.UniqueViolationError:
        return None


# -- events ------------------------------------------------------------------------------
async def insert_events(
    conn, rows: list[tuple], commands: list[tuple], current: tuple[uuid.UUID, datetime] | None = None
) -> set[uuid.UUID] | None:
    """Rows ``(id, source_id, source, event_id, type, channel, event_time, command_id)`` and each one's command,
    encoded for the outbox (``outbox.add_encoded``'s rows, the command id first), in ONE statement: a
    (source, event_id) already there is a redelivery, left as it was, and its command is not queued. Returns
    the ids inserted. One round trip, atomic without a transaction of its own (a single event over HTTP needs
    no BEGIN and COMMIT: two round trips of the five it took).

    ``current``: (source id, updated_at) of the registration the events were checked against, when it was
    read earlier (a cached one): the statement then inserts only if the registration is still that one, and
    returns None when it is not (nothing written: check again against the registration as it is now)."""
    if not rows:
        return set()
    cols = [list(c) for c in zip(*rows, strict=True)]
    queued = [list(c) for c in zip(*commands, strict=True)] if commands else [[]] * 6
    source_id, seen = current if current is not None else (None, None)
    row = await conn.fetchrow(
        "WITH g AS (SELECT 1 WHERE $15::uuid IS NULL UNION ALL "
        "SELECT 1 FROM sources WHERE id = $15::uuid AND updated_at = $16::timestamptz), "
        "e AS (INSERT INTO intake_events (id, source_id, source, event_id, type, channel, event_time, command_id) "
        "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], "
        "$7::timestamptz[], $8::uuid[]) WHERE EXISTS (SELECT 1 FROM g) "
        "ON CONFLICT (source, event_id) DO NOTHING RETURNING id, command_id), "
        f"c AS ({outbox.insert_where(9, 'r.e IN (SELECT command_id FROM e)')}) "
        "SELECT EXISTS (SELECT 1 FROM g) AS current, array(SELECT id FROM e) AS ids",
        *cols,
        *queued,
        source_id,
        seen,
    )
    return set(row["ids"]) if row["current"] else None


async def get_event(conn, source: str, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM intake_events WHERE source = $1 AND event_id = $2", source, event_id)


async def decide(conn, rows: list[tuple]) -> list[asyncpg.Record]:
    """Rows ``(intake_id, status, member_id, problem_json, decided_at)``: the outcome of each still
    accepted event (a redelivered outcome finds it decided and changes nothing); returns those decided now."""
    if not rows:
        return []
    cols = [list(c) for c in zip(*rows, strict=True)]
    return await conn.fetch(
        "UPDATE intake_events e SET status = d.status, member_id = d.member_id, problem = d.problem::jsonb, "
        "decided_at = d.decided_at, reply_pending = (s.reply = 'webhook') "
        "FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[]) "
        "AS d(id, status, member_id, problem, decided_at), sources s "
        "WHERE e.id = d.id AND e.status = 'accepted' AND s.id = e.source_id "
        "RETURNING e.source, e.type, e.event_time, e.decided_at, e.status, e.problem",
        *cols,
    )


async def replies_due(conn, limit: int) -> list[asyncpg.Record]:
    """Answers to send now (webhook sources), locked for this sender: replicas take different ones."""
    return await conn.fetch(
        "SELECT e.*, s.reply_url, s.reply_secret FROM intake_events e JOIN sources s ON s.id = e.source_id "
        "WHERE e.reply_pending AND (e.reply_next_at IS NULL OR e.reply_next_at <= now()) "
        "ORDER BY e.reply_next_at NULLS FIRST LIMIT $1 FOR UPDATE OF e SKIP LOCKED",
        limit,
    )


async def replies_sent(conn, rows: list[tuple]) -> None:
    """Rows ``(intake_id, delivered, error, retry_in_s)``."""
    if rows:
        cols = [list(c) for c in zip(*rows, strict=True)]
        await conn.execute(
            "UPDATE intake_events e SET reply_attempts = reply_attempts + 1, reply_error = r.error, "
            "reply_pending = NOT r.delivered, replied_at = CASE WHEN r.delivered THEN now() END, "
            "reply_next_at = CASE WHEN r.delivered THEN NULL ELSE now() + make_interval(secs => r.retry_in) END "
            "FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::float8[]) AS r(id, delivered, error, retry_in) "
            "WHERE e.id = r.id",
            *cols,
        )


def problem_json(problem: dict[str, Any] | None) -> str | None:
    return orjson.dumps(problem).decode() if problem is not None else None


def lag_seconds(event_time: datetime | None, decided_at: datetime) -> float | None:
    return (decided_at - event_time).total_seconds() if event_time is not None else None
