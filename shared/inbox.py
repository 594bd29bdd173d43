"""Inbox: consumers with side effects record each applied event id in the same
transaction as the effect, so a redelivered event changes nothing."""

from __future__ import annotations

import uuid

import asyncpg


async def claim(conn: asyncpg.Connection, consumer: str, event_id: str | uuid.UUID) -> bool:
    """Inside the effect's transaction: True the first time, False for a redelivery."""
    row = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        uuid.UUID(str(event_id)),
    )
    return bool(row)


async def claim_many(conn: asyncpg.Connection, consumer: str, event_ids: list[str]) -> set[str]:
    """``claim`` for a batch, in one statement: the ids (as given) claimed now; the others were redeliveries."""
    if not event_ids:
        return set()
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[]) "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        [uuid.UUID(str(e)) for e in event_ids],
    )
    claimed = {r["event_id"] for r in rows}
    return {e for e in event_ids if uuid.UUID(str(e)) in claimed}
