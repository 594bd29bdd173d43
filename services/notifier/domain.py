"""Who hears of an event, and what they are sent. No I/O."""
from __future__ import annotations

from shared import regions


def webhook_recipients(region_code: str, webhooks: dict[str, str]) -> list[tuple[str, str]]:
    """(region, url) of every configured endpoint at the event's region or any federation above it."""
    return [(code, webhooks[code]) for code in regions.ancestors(region_code) if code in webhooks]
