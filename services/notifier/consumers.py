"""The notifier's agents: membership events → signed webhooks to the federations configured per region."""
from __future__ import annotations

import asyncio
import logging

import asyncpg
import httpx

from services.notifier import delivery, domain, store
from shared import migrate
from shared.events import encode
from shared.events.membership import BranchEstablished
from shared.settings import Settings
from shared.streams import parse_or_dead_letter

log = logging.getLogger(__name__)
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)


def wire(app, settings: Settings) -> None:
    membership_events = app.topic("membership.events", key_type=bytes, value_type=bytes,
                                  key_serializer="raw", value_serializer="raw")
    state: dict = {}

    async def resources() -> tuple[asyncpg.Pool, httpx.AsyncClient]:
        if "pool" not in state:
            await migrate.apply(settings.database_url, "notifier")
            state["pool"] = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=5)
            state["http"] = httpx.AsyncClient()
        return state["pool"], state["http"]

    @app.agent(membership_events)
    async def notify_branches(stream):
        async for event in stream.events():
            parsed = await parse_or_dead_letter(app, event, {BranchEstablished.event_type})
            if parsed is None:
                continue
            ce, data = parsed
            pool, http = await resources()
            _, body, _ = encode(ce)
            secret = settings.notifier_webhook_secret.get_secret_value()
            for _, url in domain.webhook_recipients(data.region_code, settings.notifier_webhooks):
                await deliver(pool, http, url, secret, ce.id, ce.type, body)


async def deliver(pool, http, url, secret, event_id, event_type, body) -> None:
    """At least once from Kafka, once to the receiver: skip what the log says was delivered."""
    if await store.already_delivered(pool, event_id, url):
        return
    for delay in (*RETRY_DELAYS, None):
        status, error = None, None
        try:
            response = await delivery.post_webhook(http, url, secret, event_id, body)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = repr(exc)
        ok = status is not None and 200 <= status < 300
        await store.record_attempt(pool, event_id, url, event_type, delivered=ok, status_code=status, error=error)
        if ok or delay is None:
            if not ok:
                log.warning("notice not delivered", extra={"event_id": event_id, "status": status})
            return
        await asyncio.sleep(delay)
