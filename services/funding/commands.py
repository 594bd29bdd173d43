"""Commands for funding from the event intake (``funding.commands``).

A finance system's "payment settled" arrives as ``changai.command.funding.settle.v1`` and is applied as
``usecases.settle_disbursement`` (the disbursement settled once, its amount matching to the fen, the
``disbursement.settled`` event) with an actor built from the source's region scope, so a disbursement
outside it is not found (404, the one region rule). Each command is applied once (the inbox claim, by
command id, in the transaction of its effect), a refusal undoes only its own command (a savepoint), and
its outcome goes on ``funding.events`` (``changai.funding.command.applied.v1`` / ``.rejected.v1``) for
the intake to answer the source: the intake commands' loop of ``shared.consumer`` (``apply_each_once``).
"""

from __future__ import annotations

from datetime import date

import asyncpg

from services.funding import domain, usecases
from shared.consumer import apply_each_once
from shared.consumer import commands_part as shared_commands_part
from shared.events import CloudEvent
from shared.events.intake import FundingCommandApplied, FundingCommandRejected, SettleCommand

INBOX = "funding.commands"  # the inbox's consumer name
TOPIC = "funding.commands"


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
    """Inside the caller's transaction (a partition's batch): each settlement not applied before, once, in its
    savepoint, its outcome to the outbox (``shared.consumer.apply_each_once``)."""

    async def settle(conn: asyncpg.Connection, event: CloudEvent, cmd: SettleCommand) -> FundingCommandApplied:
        return await _settle(conn, event, cmd, today)

    return await apply_each_once(conn, INBOX, items, settle, FundingCommandRejected)


def commands_part(group_id: str):
    """A ``create_app`` part: the consumer of ``funding.commands`` (``shared.consumer.commands_part``)."""
    return shared_commands_part(TOPIC, group_id, (SettleCommand,), lambda app: apply_commands)
