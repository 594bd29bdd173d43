"""Sending a notice: Standard Webhooks signing over the exact bytes sent."""
from __future__ import annotations

from datetime import datetime, timezone

import httpx
from standardwebhooks.webhooks import Webhook


def signed_headers(secret: str, msg_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id, now, body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,  # stable across retries: the receiver's dedupe key
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


async def post_webhook(client: httpx.AsyncClient, url: str, secret: str, msg_id: str, body: bytes) -> httpx.Response:
    return await client.post(url, content=body, headers=signed_headers(secret, msg_id, body), timeout=15.0)
