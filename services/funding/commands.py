"""Commands for funding from the event intake (``funding.commands``).

A finance system's "payment settled" arrives as ``changai.command.funding.settle.v1`` and is applied as
``usecases.settle_disbursement`` (the disbursement settled once, its amount matching to the fen, the
``disbursement.settled`` event) with an actor built from the source's region scope, so a disbursement
outside it is not found (404, the one region rule). Each command is applied once (the inbox claim, by
command id, in the transaction of its effect), a refusal undoes only its own command (a savepoint), and
its outcome goes on ``funding.events`` (``changai.funding.command.applied.v1`` / ``.rejected.v1``) for
the intake to answer the source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date

import asyncpg
from pydantic import ValidationError

from services.funding import domain, usecases
from shared import inbox
from shared.clock import today_cn
from shared.consumer import CommandConsumer, EventConsumer
from shared.errors import DomainError
from shared.events import CloudEvent, EventData
from shared.events.intake import FundingCommandApplied, FundingCommandRejected, SettleCommand, rejection
from shared.outbox import emit

INBOX = "funding.commands"  # the inbox's consumer name


async def _settle(conn: asyncpg.Connection, event: CloudEvent, cmd: SettleCommand, today: date):
    settlement = domain.SettlementIn(
        amount_fen=cmd.amount_fen, settled_at=cmd.settled_at, bank_reference=cmd.bank_reference
    )
    done = await usecases.settle_disbursement(
        conn, cmd.disbursement_id, settlement, cmd.acting_as("funding:write"), today
    )
    return FundingCommandApplied(
        **cmd.outcome_fields(event.id), disbursement_id=done.disbursement_id, took_effect=done.changed
    )


async def apply_commands(
    conn: asyncpg.Connection, items: list[tuple[CloudEvent, SettleCommand]], today: date
) -> list[FundingCommandApplied | FundingCommandRejected]:
    """Inside the caller's transaction (a partition's batch): each command not applied before (one inbox
    claim for the batch), in order, each in a savepoint; every outcome goes to the outbox with the batch."""
    claimed = await inbox.claim_many(conn, INBOX, [event.id for event, _ in items])
    outcomes: list[FundingCommandApplied | FundingCommandRejected] = []
    seen: set[str] = set()
    for event, cmd in items:
        if event.id not in claimed or event.id in seen:
            continue
        seen.add(event.id)
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes this command only
                outcomes.append(await _settle(conn, event, cmd, today))
        except (DomainError, ValidationError) as exc:
            outcomes.append(FundingCommandRejected(**cmd.outcome_fields(event.id), **rejection(exc)))
    await emit(conn, *outcomes)
    return outcomes


def command_consumer(pool: asyncpg.Pool, bootstrap: str, group_id: str) -> EventConsumer:
    async def handle(items: list[tuple[CloudEvent, EventData]]) -> None:
        commands = [(event, cmd) for event, cmd in items if isinstance(cmd, SettleCommand)]
        if not commands:
            return
        async with pool.acquire() as conn, conn.transaction():
            await apply_commands(conn, commands, today_cn())

    return CommandConsumer(bootstrap, group_id, ["funding.commands"], batch_handler=handle)


def commands_part(settings) -> Callable:
    async def part(app) -> Callable[[], Awaitable[None]] | None:
        if not settings.funding_commands_consumer:
            return None
        consumer = command_consumer(app.state.db, settings.kafka_bootstrap, settings.funding_commands_group)
        consumer.start()
        app.state.commands = consumer
        return consumer.stop

    return part
