"""What funding does with others' events: the training-subsidy saga.

``changai.training.session.completed.v1``, a partition's batch at a time → in ONE transaction with the
batch's inbox records, for each event:
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
from shared.events.envelope import trace_id_of
from shared.events.membership import BranchDissolved, BranchEstablished, BranchMerged, BranchUpdated
from shared.events.training import SessionCompleted

log = logging.getLogger(__name__)

INBOX_CONSUMER = "funding.subsidy"


async def on_sessions_completed(
    pool: asyncpg.Pool, items: list[tuple[CloudEvent, EventData]], *, auto_register_organisers: bool = False
) -> list[str]:
    """Apply a partition's batch of completion events in ONE transaction with their inbox records; returns what
    happened to each (for logs and tests): paid, rejected, redelivery or duplicate-session.

    The inbox is claimed for the whole batch in one statement: a redelivered event (this batch's or an earlier
    one's) changes nothing. A crash before the commit loses nothing: the offsets are committed after it
    (``EventConsumer``), so the batch comes again and is applied whole."""
    completions: dict[str, usecases.Completion] = {}
    for event, data in items:
        if isinstance(data, SessionCompleted) and event.id not in completions:  # an id twice: once
            completions[event.id] = usecases.Completion(uuid.UUID(event.id), data, trace_id_of(event.traceparent))
    async with pool.acquire() as conn, conn.transaction():
        fresh = await inbox.claim_many(conn, INBOX_CONSUMER, list(completions))
        todo = [c for event_id, c in completions.items() if event_id in fresh]
        claims = (
            await usecases.claim_subsidies(
                conn, todo, usecases.SAGA, today_cn(), auto_register_organisers=auto_register_organisers
            )
            if todo
            else []
        )
    outcomes: dict[str, str] = {}
    for completion, claim in zip(todo, claims, strict=True):
        if claim is None:
            log.warning(
                "session already claimed under another event; nothing paid",
                extra={"session_id": str(completion.data.session_id), "event_id": str(completion.event_id)},
            )
        outcomes[str(completion.event_id)] = "duplicate-session" if claim is None else claim["status"]
    if todo:
        log.info(
            "subsidy claims settled",
            extra={
                "events": len(items),
                "paid": sum(1 for c in claims if c and c["status"] == "paid"),
                "rejected": sum(1 for c in claims if c and c["status"] == "rejected"),
                "paid_fen": sum(c["amount_fen"] for c in claims if c and c["status"] == "paid"),
            },
        )
    answers = []
    for event, data in items:  # an event applied now answers once; again (in this batch or before): redelivery
        if not isinstance(data, SessionCompleted):
            answers.append("skipped")
        else:
            answers.append(outcomes.pop(event.id, "redelivery"))
    return answers


def subsidy_part(settings: FundingSettings):
    """A ``create_app`` part: the subsidy consumer, started with the API and stopped with it. It takes a
    partition's records as they come (up to 500 a fetch) and applies them as one batch."""

    async def start(app: FastAPI):
        if not settings.funding_subsidy_consumer:
            return None
        pool: asyncpg.Pool = app.state.db

        async def handle(items: list[tuple[CloudEvent, EventData]]) -> None:
            await on_sessions_completed(pool, items, auto_register_organisers=settings.funding_auto_register_organisers)

        consumer = EventConsumer(
            settings.kafka_bootstrap,
            settings.funding_subsidy_group,
            [settings.funding_training_topic],
            batch_handler=handle,
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
