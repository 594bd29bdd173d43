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
