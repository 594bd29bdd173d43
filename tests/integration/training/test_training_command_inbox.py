"""Training's command inbox on its own, over the real Kafka and PostgreSQL: the intake dedupes an upstream
event before it writes a command, so only a redelivery by Kafka (a crash before the offset commit) brings the
same command to training twice. Here the same ``training.commands`` record is produced three times (once,
then twice back to back, each after the group committed past the last): one attendance, one outcome."""
from __future__ import annotations

import uuid
from datetime import date

import pytest
from training_support import branch_event, joined, key, produce, programme, running_training, session, wait_for

from services.training.consumers import COMMANDS_INBOX
from shared.consumer import wait_assigned
from shared.events import decode, envelope
from shared.events.intake import AttendanceCommand
from tests.integration.command_records import send_three_times, start_at_end

pytestmark = pytest.mark.integration

TOPIC = "training.commands"


@pytest.fixture(scope="module")
async def trainer(stack, make_database):
    """Training with a command consumer group of its own, started at the topic's end."""
    dsn = await make_database("training")
    group = f"training-commands-{uuid.uuid4().hex[:8]}"
    await start_at_end(stack.bootstrap, group, TOPIC)
    async with running_training(stack, dsn, commands_group_id=group) as (app, client):
        await wait_assigned(app.state.commands)
        yield app, client, group


async def outcomes_of(db, command_id: str) -> list[str]:
    rows = await db.fetch("SELECT value FROM outbox WHERE event_type LIKE 'changai.training.command.%'")
    return [e.type for e in map(decode, (r["value"] for r in rows)) if e.data["command_id"] == command_id]


async def test_the_same_attendance_command_delivered_three_times_is_applied_once(stack, trainer):
    app, client, group = trainer
    branch = branch_event("640104")
    id_hash = uuid.uuid4().hex * 2  # what membership's lookup hash of the trainee's ID number would be
    member = joined(branch).model_copy(update={"id_hash": id_hash})
    await produce(stack.bootstrap, branch, member)
    await wait_for(lambda: app.state.db.fetchval("SELECT id_hash IS NOT NULL FROM members WHERE id = $1",
                                                 member.member_id), timeout=60)
    s = await session(client, (await programme(client))["id"], branch.branch_id)
    r = await client.post(f"/v1/sessions/{s['id']}/enrolments", json={"member_id": str(member.member_id)},
                          headers=key())
    assert r.status_code == 201, r.text
    enrolment_id = uuid.UUID(r.json()["id"])
    command = AttendanceCommand(intake_id=uuid.uuid4(), upstream_source="urn:changai:test:provider:inbox",
                                upstream_type="training.provider.attendance.recorded.v1", region_scope="640104",
                                actor="provider-inbox", session_id=s["id"], member_hash=id_hash,
                                learner_ref="L-inbox", attended_on=date(2021, 4, 2), minutes=180)
    event = envelope(command)

    await send_three_times(stack.bootstrap, group, TOPIC, event)

    db = app.state.db
    assert await outcomes_of(db, event.id) == ["changai.training.command.applied.v1"]
    assert await db.fetchval("SELECT status FROM enrolments WHERE id = $1", enrolment_id) == "attended"
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'changai.training.enrolment.attended.v1'"
                             " AND key = $1", str(enrolment_id)) == 1
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1 AND event_id = $2",
                             COMMANDS_INBOX, uuid.UUID(event.id)) == 1
