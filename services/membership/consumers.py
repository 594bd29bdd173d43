"""What membership does with others' events.

``changai.training.certificate.issued.v1``: a vocational skill certificate raises the member's
skill level when it is higher (level 1, 高级技师, is the highest: "higher" is a smaller number),
exactly once: the inbox claim, the level and the ``member.skill_level_changed`` event are one
transaction, so a redelivered certificate changes nothing.
"""
from __future__ import annotations

import logging

import asyncpg

from services.membership import domain, store
from shared import inbox, outbox
from shared.consumer import EventConsumer
from shared.events import CloudEvent
from shared.events.training import CertificateIssued
from shared.logging import trace_id_var

log = logging.getLogger(__name__)

CERTIFICATES = "membership.certificate-issued"  # the inbox's consumer name


async def apply_certificate(pool: asyncpg.Pool, event: CloudEvent, data: CertificateIssued) -> str:
    """Apply one certificate; returns what happened (``raised``, ``not-higher``, ``redelivered``, ``unknown-member``)."""
    async with pool.acquire() as conn, conn.transaction():
        if not await inbox.claim(conn, CERTIFICATES, event.id):
            return "redelivered"
        # The member row lock alone: a branch change of this member needs the same lock, so the
        # branch read next is the member's branch for as long as this transaction lasts.
        member = await store.lock_member(conn, data.member_id)
        if member is None:
            log.warning("certificate for an unknown member ignored",
                        extra={"event_id": event.id, "member_id": str(data.member_id),
                               "certificate_id": str(data.certificate_id)})
            return "unknown-member"
        if not domain.raised_skill_level(member["skill_level"], data.level):
            return "not-higher"
        branch = await store.get_branch(conn, member["branch_id"])
        change = domain.skill_level_changed(member, branch, data.level, data.certificate_id)
        await store.set_skill_level(conn, data.member_id, data.level)
        await outbox.add(conn, change, trace_id=trace_id_var.get())
        return "raised"


def certificate_consumer(pool: asyncpg.Pool, bootstrap: str, group_id: str) -> EventConsumer:
    async def handle(event: CloudEvent, data) -> None:
        await apply_certificate(pool, event, data)

    return EventConsumer(bootstrap, group_id, ["training.events"], handle,
                         event_types={CertificateIssued.event_type})
