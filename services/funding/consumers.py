"""What funding does with others' events: the training-subsidy saga.

``changai.training.session.completed.v1`` → in ONE transaction with the inbox record:
a subsidy claim for the session (eligible persons × the rule in force on the completion
date), paid from the fund configured for the category through a grant to the organiser
that is approved and disbursed at once — or rejected with a reason. Both outcomes are
events. A redelivered event (same id) finds its inbox record and changes nothing; a
second completion event for the same session (another id) finds the session's claim
and changes nothing either.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
from fastapi import FastAPI

from services.funding import domain, store, usecases
from services.funding.settings import FundingSettings
from shared import inbox
from shared.clock import today_cn
from shared.consumer import EventConsumer
from shared.events import CloudEvent, EventData
from shared.events.membership import BranchDissolved, BranchEstablished, BranchMerged, BranchUpdated
from shared.events.training import SessionCompleted

log = logging.getLogger(__name__)

INBOX_CONSUMER = "funding.subsidy"


async def on_session_completed(
    pool: asyncpg.Pool, event: CloudEvent, data: SessionCompleted, *, auto_register_organisers: bool = False
) -> str:
    """Apply one completion event; returns what happened (for logs and tests)."""
    async with pool.acquire() as conn, conn.transaction():
        if not await inbox.claim(conn, INBOX_CONSUMER, event.id):
            return "redelivery"
        claim = await usecases.claim_subsidy(
            conn, uuid.UUID(event.id), data, today_cn(), auto_register_organisers=auto_register_organisers
        )
    if claim is None:
        log.warning(
            "session already claimed under another event; nothing paid",
            extra={"session_id": str(data.session_id), "event_id": event.id},
        )
        return "duplicate-session"
    log.info(
        "subsidy claim settled",
        extra={
            "session_id": str(data.session_id),
            "claim_id": str(claim["id"]),
            "status": claim["status"],
            "reason": claim["reason"],
            "amount_fen": claim["amount_fen"],
        },
    )
    return claim["status"]


def subsidy_part(settings: FundingSettings):
    """A ``create_app`` part: the subsidy consumer, started with the API and stopped with it."""

    async def start(app: FastAPI):
        if not settings.funding_subsidy_consumer:
            return None
        pool: asyncpg.Pool = app.state.db

        async def handle(event: CloudEvent, data) -> None:
            await on_session_completed(
                pool, event, data, auto_register_organisers=settings.funding_auto_register_organisers
            )

        consumer = EventConsumer(
            settings.kafka_bootstrap,
            settings.funding_subsidy_group,
            [settings.funding_training_topic],
            handle,
            event_types={SessionCompleted.event_type},
        )
        consumer.start()
        app.state.subsidy_consumer = consumer
        return consumer.stop

    return start


BRANCH_DATA = (BranchEstablished, BranchUpdated, BranchMerged, BranchDissolved)
BRANCH_EVENTS = {e.event_type for e in BRANCH_DATA}


async def on_branch_events(pool: asyncpg.Pool, items: list[tuple[CloudEvent, EventData]]) -> None:
    """A partition's branch events in one transaction: where each branch is, the last event's word winning
    (a branch's events share its key, so they come in order; a redelivery replays them in order again)."""
    places = [(str(data.branch_id), data.region_code) for _, data in items if isinstance(data, BRANCH_DATA)]
    if places:
        async with pool.acquire() as conn, conn.transaction():
            await usecases.record_branches(conn, places)


def branch_part(settings: FundingSettings):
    """A ``create_app`` part: the consumer of membership's branch events."""

    async def start(app: FastAPI):
        if not settings.funding_branch_consumer:
            return None
        pool: asyncpg.Pool = app.state.db

        async def handle(items: list[tuple[CloudEvent, EventData]]) -> None:
            await on_branch_events(pool, items)

        consumer = EventConsumer(
            settings.kafka_bootstrap,
            settings.funding_branch_group,
            [settings.funding_membership_topic],
            batch_handler=handle,
            event_types=BRANCH_EVENTS,
        )
        consumer.start()
        app.state.branch_consumer = consumer
        return consumer.stop

    return start


def seed_part(settings: FundingSettings):
    """A ``create_app`` part: the seeded pre-job subsidy rules (unless the API has set that category)."""

    async def start(app: FastAPI):
        if settings.funding_seed_rules:
            seeds = domain.seed_rules(settings.funding_pre_job_change_date, settings.funding_pre_job_old_from)
            async with app.state.db.acquire() as conn:
                if await store.seed_rules(conn, seeds):
                    log.info(
                        "subsidy rules seeded", extra={"change_date": settings.funding_pre_job_change_date.isoformat()}
                    )
        return None

    return start
