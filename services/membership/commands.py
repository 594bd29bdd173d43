"""Commands for membership from the event intake (``membership.commands``).

An upstream HR system's "employee hired" arrives as ``changai.command.membership.join.v1`` and is applied
as the SAME join use case the API runs (``usecases.join``), "employee left" as the leave use case, with an
actor built from the source's region scope: every rule, scope check and event is the one an API call
meets. Each command is applied once (the inbox claim, by command id, in the transaction of its effect),
and its outcome is published on ``membership.events`` (``changai.membership.command.applied.v1`` /
``.rejected.v1`` with the problem's type and a scrubbed detail, no personal data) for the intake to answer
the source. A partition's batch is one transaction, each command in its own savepoint, so a refusal
undoes only that command.
"""

from __future__ import annotations

import logging
from datetime import date

import asyncpg
from pydantic import ValidationError

from services.membership import domain, store, usecases
from services.membership.pii import Vault
from shared import inbox
from shared.auth import Principal
from shared.clock import today_cn
from shared.consumer import EventConsumer
from shared.errors import DomainError, NotFound, status_of
from shared.events import CloudEvent, EventData, InvalidEvent, decode
from shared.events.intake import COMMANDS, CommandApplied, CommandKeys, CommandRejected, JoinCommand, LeaveCommand
from shared.kafka import dead_letter
from shared.privacy import scrub_text

log = logging.getLogger(__name__)

INBOX = "membership.commands"  # the inbox's consumer name


def actor_of(cmd: JoinCommand | LeaveCommand) -> Principal:
    """The source acts within its registered region scope, as a membership writer."""
    return Principal(f"intake:{cmd.actor}", frozenset({"membership:write"}), cmd.region_scope)


async def _apply(
    conn: asyncpg.Connection, cmd: JoinCommand | LeaveCommand, keys: CommandKeys, vault: Vault, today: date
):
    person = keys.open(cmd.intake_id, cmd.sealed)
    actor = actor_of(cmd)
    if isinstance(cmd, JoinCommand):
        branch_id = cmd.branch_id
        if branch_id is None:
            branch = await store.active_branch_by_credit_code(conn, cmd.employer_credit_code)
            if branch is None:
                raise NotFound("branch of the employer", cmd.employer_credit_code, kind="no-branch-for-employer")
            branch_id = branch["id"]
        member = domain.MemberIn(
            branch_id=branch_id,
            name=person["name"],
            id_number=person["id_number"],
            phone=person.get("phone"),
            employment_form=cmd.employment_form,
            occupation=cmd.occupation,
            joined_on=cmd.joined_on,
        )
        return await usecases.join(conn, member, actor, today, vault=vault)
    found = await store.member_by_hash(conn, vault.lookup_hash(person["id_number"]))
    if found is None:
        raise NotFound("member", "with that ID number")
    return await usecases.leave(conn, found["id"], domain.EndIn(on=cmd.left_on, reason=cmd.reason), actor, today)


async def apply_command(
    conn: asyncpg.Connection,
    event: CloudEvent,
    cmd: JoinCommand | LeaveCommand,
    keys: CommandKeys,
    vault: Vault,
    today: date,
) -> CommandApplied | CommandRejected | None:
    """Inside the caller's transaction: apply one command once; None for a redelivery."""
    if not await inbox.claim(conn, INBOX, event.id):
        return None
    common = dict(
        command_id=event.id,
        intake_id=cmd.intake_id,
        command=cmd.event_type,
        upstream_source=cmd.upstream_source,
        region_code=cmd.region_scope,
    )
    outcome: CommandApplied | CommandRejected
    try:
        async with conn.transaction():  # a savepoint: a refusal undoes this command only
            row = await _apply(conn, cmd, keys, vault, today)
        outcome = CommandApplied(**common, member_id=row["id"])
    except DomainError as exc:
        outcome = CommandRejected(
            **common,
            status=status_of(exc),
            problem_type=exc.kind,
            title=exc.title,
            detail=scrub_text(exc.detail) if exc.detail else None,
        )
    except ValidationError as exc:  # the person's data against MemberIn / EndIn (never echoed)
        err = exc.errors()[0]
        outcome = CommandRejected(
            **common,
            status=422,
            problem_type="validation-error",
            title="Request is not valid",
            detail=scrub_text(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"),
        )
    await usecases.emit(conn, outcome)
    return outcome


class CommandConsumer(EventConsumer):
    """``EventConsumer`` reading command types (``COMMANDS``) instead of the domain catalogue."""

    async def _parse(self, record):
        try:
            event = decode(record.value)
            cls = COMMANDS.get(event.type)
            if cls is None:
                return None  # a command type of a newer intake: not this build's
            return event, cls.model_validate(event.data)
        except InvalidEvent as exc:
            await dead_letter(self.producer, record, str(exc), self.group_id)
        except ValidationError as exc:
            await dead_letter(
                self.producer, record, f"command does not match its type: {exc.errors()[0]['msg']}", self.group_id
            )
        return None


def command_consumer(
    pool: asyncpg.Pool, bootstrap: str, group_id: str, keys: CommandKeys, vault: Vault
) -> EventConsumer:
    async def handle(items: list[tuple[CloudEvent, EventData]]) -> None:
        today = today_cn()
        async with pool.acquire() as conn, conn.transaction():
            for event, cmd in items:
                assert isinstance(cmd, JoinCommand | LeaveCommand)  # CommandConsumer parses only those
                await apply_command(conn, event, cmd, keys, vault, today)

    return CommandConsumer(bootstrap, group_id, ["membership.commands"], batch_handler=handle)


async def commands_part(app):
    settings = app.state.settings
    if not settings.consume_commands:
        return None
    consumer = command_consumer(
        app.state.db,
        settings.kafka_bootstrap,
        settings.commands_group_id,
        CommandKeys(settings.data_key_bytes()),
        app.state.vault,
    )
    consumer.start()
    app.state.commands = consumer
    return consumer.stop
