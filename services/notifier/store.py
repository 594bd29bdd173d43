"""Notifier's SQL: the delivery log, which is also the dedupe record."""
from __future__ import annotations

import uuid

import asyncpg


async def already_delivered(pool: asyncpg.Pool, event_id: str, endpoint: str) -> bool:
    return bool(await pool.fetchval(
        "SELECT status = 'delivered' FROM deliveries WHERE event_id = $1 AND endpoint = $2",
        uuid.UUID(event_id), endpoint))


async def record_attempt(pool: asyncpg.Pool, event_id: str, endpoint: str, event_type: str, *,
                         delivered: bool, status_code: int | None, error: str | None) -> None:
    await pool.execute(
        """INSERT INTO deliveries (event_id, endpoint, event_type, status, attempts, last_status_code, last_error,
                                   delivered_at)
           VALUES ($1, $2, $3, $4, 1, $5, $6, CASE WHEN $4 = 'delivered' THEN now() END)
           ON CONFLICT (event_id, endpoint) DO UPDATE SET
               status = EXCLUDED.status, attempts = deliveries.attempts + 1,
               last_status_code = EXCLUDED.last_status_code, last_error = EXCLUDED.last_error,
               delivered_at = EXCLUDED.delivered_at""",
        uuid.UUID(event_id), endpoint, event_type, "delivered" if delivered else "pending", status_code, error)
