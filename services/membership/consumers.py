"""What membership does with others' events.

``changai.training.certificate.issued.v1``: a vocational skill certificate raises the member's
skill level when it is higher (level 1, 高级技师, is the highest: "higher" is a smaller number),
exactly once: the inbox claim, the level and the ``member.skill_level_changed`` event are one
transaction, so a redelivered certificate changes nothing.
"""

from __future__ import annotations

import logging

import asyncpg

from services.membership import usecases
from shared.consumer import EventConsumer
from shared.events import CloudEvent
from shared.events.training import CertificateIssued

log = logging.getLogger(__name__)

CERTIFICATES = usecases.CERTIFICATES  # the inbox's consumer name


async def apply_certificate(pool: asyncpg.Pool, event: CloudEvent, data: CertificateIssued) -> str:
    """Apply one certificate in its own transaction; returns what happened (``usecases.apply_certificate``)."""
    async with pool.acquire() as conn, conn.transaction():
        outcome = await usecases.apply_certificate(conn, event, data)
    if outcome == "unknown-member":
        log.warning(
            "certificate for an unknown member ignored",
            extra={"event_id": event.id, "member_id": str(data.member_id), "certificate_id": str(data.certificate_id)},
        )
    return outcome


def certificate_consumer(pool: asyncpg.Pool, bootstrap: str, group_id: str) -> EventConsumer:
    async def handle(event: CloudEvent, data) -> None:
        await apply_certificate(pool, event, data)

    return EventConsumer(bootstrap, group_id, ["training.events"], handle, event_types={CertificateIssued.event_type})
