"""Answers to sources that asked for a webhook: each decided event's answer (``usecases.answer``) is POSTed
to the source's ``reply_url``, signed with its secret (Standard Webhooks: ``webhook-id`` is the intake's
record id, stable across retries so the receiver can drop a repeat), until the receiver takes it (2xx);
a failure waits 1, 2, 4 … s (at most ``intake_reply_max_backoff_s``) and tries again. Rows are claimed with
SKIP LOCKED, so replicas send different answers.

The sending itself is the platform's (``shared.webhooks``, as the notifier's: the SSRF guard that connects only to
the addresses it checked, the signature, the classification of the receiver's answer).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import httpx
import orjson

from services.intake import metrics, store, usecases
from services.intake.settings import IntakeSettings
from shared import webhooks as outbound  # the signed-webhook sender (SSRF guard, pinning, signatures)
from shared.crypto import FieldCipher
from shared.timing import wait_set

log = logging.getLogger(__name__)
BATCH = 50


async def send_due(pool: asyncpg.Pool, cipher: FieldCipher, http: httpx.AsyncClient, settings: IntakeSettings) -> int:
    """One round: send the answers due now; returns how many were tried."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await store.replies_due(conn, BATCH)
        if not rows:
            return 0

        async def send(row: asyncpg.Record) -> tuple:
            wait = min(2.0 ** row["reply_attempts"], settings.intake_reply_max_backoff_s)
            try:
                body = orjson.dumps(usecases.answer(row), default=str)
                secret = cipher.open("reply_secret", row["source_id"], row["reply_secret"])
                outcome = await outbound.send_webhook(
                    http,
                    row["reply_url"],
                    [{"secret": secret}],
                    str(row["id"]),
                    body,
                    timeout=settings.intake_reply_timeout_s,
                    allow_private=settings.outbound_allow_private,
                )
            except Exception as exc:
                log.warning("answer could not be sent", extra={"intake_id": str(row["id"])}, exc_info=True)
                metrics.REPLIES.labels(row["source"], "failed").inc()
                return row["id"], False, f"not sent: {type(exc).__name__}", wait
            delivered = outcome.result == "delivered"
            metrics.REPLIES.labels(row["source"], "delivered" if delivered else "failed").inc()
            if outcome.retry_after_s:
                wait = max(wait, outcome.retry_after_s)
            return row["id"], delivered, None if delivered else (outcome.error or f"HTTP {outcome.status_code}"), wait

        results = await asyncio.gather(*(send(r) for r in rows if r["reply_secret"] is not None and r["reply_url"]))
        await store.replies_sent(conn, list(results))
    return len(rows)


def replies_part(settings: IntakeSettings):
    async def replies(app):
        if not settings.intake_reply_webhooks:
            return None
        stop = asyncio.Event()
        http = outbound.http_client()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    if await send_due(app.state.db, app.state.cipher, http, settings) == BATCH:
                        continue  # more are due: no pause
                except Exception:
                    log.warning("sending answers failed; retrying", exc_info=True)
                await wait_set(stop, settings.intake_reply_interval_s)

        task = asyncio.create_task(loop(), name="intake-replies")

        async def halt() -> None:
            stop.set()
            await task
            await http.aclose()

        return halt

    return replies
