"""Commands for membership from the event intake (``membership.commands``).

An upstream HR system's "employee hired" arrives as ``changai.command.membership.join.v1`` and is applied
as the SAME join use case the API runs (``usecases.join``), "employee left" as the leave use case, a
certificate the human-resources and social-security department issued as ``usecases.record_certificate``
(the certificate recorded, the member's skill level raised when higher), with an
actor built from the source's region scope: every rule, scope check and event is the one an API call
meets. Each command is applied once (the inbox claim, by command id, in the transaction of its effect),
and its outcome is published on ``membership.events`` (``changai.membership.command.applied.v1`` /
``.rejected.v1`` with the problem's type and a scrubbed detail, no personal data) for the intake to answer
the source. A partition's batch is one transaction (``apply_commands``): one inbox claim for the batch, its
consecutive joins through ``usecases.join_many`` (the batch form of the join, same rules), a leave on its
own in a savepoint, every outcome queued at once; a refusal undoes only its own command.
"""

from __future__ import annotations

import logging
from datetime import date

import asyncpg
from pydantic import ValidationError

from services.membership import domain, store, usecases
from services.membership.pii import Vault
from shared.auth import Principal
from shared.consumer import apply_one, new_commands, refused
from shared.consumer import commands_part as shared_commands_part
from shared.errors import DomainError, NotFound
from shared.events import CloudEvent
from shared.events.intake import (
    CertificateCommand,
    CommandApplied,
    CommandKeys,
    CommandRejected,
    JoinCommand,
    LeaveCommand,
)

log = logging.getLogger(__name__)

INBOX = "membership.commands"  # the inbox's consumer name
TOPIC = "membership.commands"
Command = JoinCommand | LeaveCommand | CertificateCommand


async def _apply(conn: asyncpg.Connection, cmd: Command, keys: CommandKeys, vault: Vault, today: date):
    person = keys.open(cmd.intake_id, cmd.sealed)
    actor = cmd.acting_as("membership:write")
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
    if isinstance(cmd, CertificateCommand):
        certificate = domain.CertificateRecordIn(
            certificate_no=cmd.certificate_no,
            occupation=cmd.occupation,
            occupation_code=cmd.occupation_code,
            level=cmd.level,
            issued_on=cmd.issued_on,
            issuer=cmd.issuer,
        )
        return await usecases.record_certificate(conn, found["id"], certificate, actor, today)
    return await usecases.leave(conn, found["id"], domain.EndIn(on=cmd.left_on, reason=cmd.reason), actor, today)


def _rejected(event: CloudEvent, cmd: Command, exc: Exception) -> CommandRejected:
    """A refusal as the source hears it (``shared.consumer.refused``: type, title, a scrubbed detail)."""
    return refused(CommandRejected, event, cmd, exc)


async def _apply_one(
    conn: asyncpg.Connection,
    event: CloudEvent,
    cmd: Command,
    keys: CommandKeys,
    vault: Vault,
    today: date,
) -> CommandApplied | CommandRejected:
    async def apply(conn: asyncpg.Connection, event: CloudEvent, cmd: Command) -> CommandApplied:
        row = await _apply(conn, cmd, keys, vault, today)
        return CommandApplied(**cmd.outcome_fields(event.id), member_id=row["id"])

    return await apply_one(conn, event, cmd, apply, CommandRejected)


async def _join_run(
    conn: asyncpg.Connection,
    run: list[tuple[CloudEvent, JoinCommand]],
    keys: CommandKeys,
    vault: Vault,
    today: date,
) -> list[CommandApplied | CommandRejected]:
    """Consecutive joins of a batch through ``usecases.join_many`` (the batch form of the API's join)."""
    codes = [cmd.employer_credit_code for _, cmd in run if cmd.branch_id is None]
    branch_of = await store.active_branches_by_credit_codes(conn, codes) if codes else {}
    outcomes: list[CommandApplied | CommandRejected | None] = [None] * len(run)
    joins: list[tuple[domain.MemberIn, Principal]] = []
    at: list[int] = []
    for i, (event, cmd) in enumerate(run):
        branch_id = cmd.branch_id or branch_of.get(cmd.employer_credit_code)
        if branch_id is None:
            exc = NotFound("branch of the employer", cmd.employer_credit_code, kind="no-branch-for-employer")
            outcomes[i] = _rejected(event, cmd, exc)
            continue
        person = keys.open(cmd.intake_id, cmd.sealed)
        try:
            member = domain.MemberIn(
                branch_id=branch_id,
                name=person["name"],
                id_number=person["id_number"],
                phone=person.get("phone"),
                employment_form=cmd.employment_form,
                occupation=cmd.occupation,
                joined_on=cmd.joined_on,
            )
        except ValidationError as exc:
            outcomes[i] = _rejected(event, cmd, exc)
            continue
        joins.append((member, cmd.acting_as("membership:write")))
        at.append(i)
    for i, result in zip(at, await usecases.join_many(conn, joins, today, vault=vault), strict=True):
        event, cmd = run[i]
        if isinstance(result, DomainError):
            outcomes[i] = _rejected(event, cmd, result)
        else:
            outcomes[i] = CommandApplied(**cmd.outcome_fields(event.id), member_id=result["id"])
    return [o for o in outcomes if o is not None]


async def apply_commands(
    conn: asyncpg.Connection,
    items: list[tuple[CloudEvent, Command]],
    keys: CommandKeys,
    vault: Vault,
    today: date,
) -> list[CommandApplied | CommandRejected]:
    """Inside the caller's transaction (a partition's batch): apply each command not applied before
    (one inbox claim for the batch), in order: consecutive joins together (``usecases.join_many``), a
    leave on its own (it may follow the same person's join). Every outcome goes to the outbox at once.
    Should the batch form fail on something other than a refusal, the batch is applied one command at a
    time instead (each in a savepoint), so one odd command cannot hold the partition."""
    fresh = await new_commands(conn, INBOX, items)
    outcomes: list[CommandApplied | CommandRejected] = []
    try:
        async with conn.transaction():
            i = 0
            while i < len(fresh):
                if isinstance(fresh[i][1], JoinCommand):
                    j = i
                    while j < len(fresh) and isinstance(fresh[j][1], JoinCommand):
                        j += 1
                    outcomes += await _join_run(conn, fresh[i:j], keys, vault, today)  # type: ignore[arg-type]
                    i = j
                else:
                    outcomes.append(await _apply_one(conn, *fresh[i], keys, vault, today))
                    i += 1
    except asyncpg.PostgresError:
        log.warning("a batch of commands failed as a batch; applying them one at a time", exc_info=True)
        outcomes = [await _apply_one(conn, event, cmd, keys, vault, today) for event, cmd in fresh]
    await usecases.emit(conn, *outcomes)
    return outcomes


def commands_part(group_id: str):
    """A ``create_app`` part: the consumer of ``membership.commands`` (``shared.consumer.commands_part``), with
    the keys to open the commands' sealed data and the app's vault."""

    def apply_for(app):
        keys, vault = CommandKeys(app.state.settings.data_key_bytes()), app.state.vault

        async def apply(conn: asyncpg.Connection, items: list[tuple[CloudEvent, Command]], today: date):
            return await apply_commands(conn, items, keys, vault, today)

        return apply

    return shared_commands_part(TOPIC, group_id, (JoinCommand, LeaveCommand, CertificateCommand), apply_for)
