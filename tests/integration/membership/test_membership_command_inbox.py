"""Membership's command inbox on its own, over the real Kafka and PostgreSQL: the intake dedupes an upstream
event before it writes a command, so only a redelivery by Kafka (a crash before the offset commit) brings the
same command to membership twice. Here the same ``membership.commands`` join is produced three times (once,
then twice back to back, each after the group committed past the last): one member, one outcome (a join
applied again would be answered ``already-a-member``: a second outcome)."""
from __future__ import annotations

import uuid

import pytest

from services.membership.commands import INBOX
from shared.consumer import wait_assigned
from shared.events import envelope
from shared.events.intake import CommandKeys, JoinCommand
from tests.integration.command_records import send_three_times, start_at_end
from tests.integration.membership.membership_support import outbox_events, running, unique_id_number

pytestmark = pytest.mark.integration

TOPIC = "membership.commands"


@pytest.fixture(scope="module")
async def member_office(stack, make_database):
    """Membership with a command consumer group of its own, started at the topic's end."""
    group = f"membership-commands-{uuid.uuid4().hex[:8]}"
    await start_at_end(stack.bootstrap, group, TOPIC)
    async with running(stack, make_database, commands_group_id=group) as m:
        await wait_assigned(m.app.state.commands)
        yield m, group


async def test_the_same_join_command_delivered_three_times_is_applied_once(stack, member_office):
    membership, group = member_office
    branch = await membership.branch("640104")
    keys = CommandKeys(membership.app.state.settings.data_key_bytes())
    number, intake_id = unique_id_number(), uuid.uuid4()
    command = JoinCommand(intake_id=intake_id, upstream_source="urn:changai:test:hr:inbox",
                          upstream_type="enterprise.hr.employee.hired.v1", region_scope="640104", actor="hr-inbox",
                          person_key=keys.person_key(number),
                          sealed=keys.seal(intake_id, {"name": "马春燕", "id_number": number}),
                          employer_credit_code=branch["credit_code"], joined_on="2024-05-01")
    event = envelope(command)

    await send_three_times(stack.bootstrap, group, TOPIC, event)

    outcomes = [e.type for e in await outbox_events(membership.dsn) if e.type.startswith("changai.membership.command.")
                and e.data["command_id"] == event.id]
    assert outcomes == ["changai.membership.command.applied.v1"]
    db = membership.app.state.db
    id_hash = membership.app.state.vault.lookup_hash(number)
    assert await db.fetchval("SELECT count(*) FROM members WHERE id_hash = $1", id_hash) == 1
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1 AND event_id = $2",
                             INBOX, uuid.UUID(event.id)) == 1
