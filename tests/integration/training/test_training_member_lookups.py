"""The id_hash backfill on the real Kafka and PostgreSQL: membership and training side by side, a member whose
``member.joined`` was written as the release before ``id_hash`` wrote it (no hash), a provider's attendance for
that trainee refused ``unknown-trainee``; ``publish-lookups`` (membership's one-shot, through its outbox and
relay) gives training the hash, and the same attendance is then applied; a second run changes nothing."""
from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from training_support import key, programme, running_training, session, wait_for

from services.membership import domain as membership_domain
from services.membership import usecases as membership_usecases
from services.membership.main import publish_lookups
from services.training.consumers import INBOX_CONSUMER
from shared.auth import Principal
from shared.clock import today_cn
from shared.consumer import wait_assigned
from shared.events import decode, encode, envelope
from shared.events.intake import AttendanceCommand, CommandKeys
from shared.events.membership import MemberJoined, MemberLookup
from shared.kafka import make_producer
from tests.integration.command_records import committed_past, start_at_end
from tests.integration.membership.membership_support import running, unique_id_number

pytestmark = pytest.mark.integration

COMMANDS = "training.commands"
ROOT = Path(__file__).resolve().parents[3]


async def join_as_before_id_hash(membership, branch_id: str, number: str) -> uuid.UUID:
    """A member joined through membership's join use case, its ``member.joined`` in the outbox rewritten
    (same id, in the join's transaction, before the relay can see it) as the release before the field
    wrote it: no ``id_hash``. Membership's own row has the hash (NOT NULL), as every member's has."""
    actor = Principal("lookup-tests", frozenset({"membership:write"}), "640000")
    cmd = membership_domain.MemberIn(branch_id=branch_id, name="张三", id_number=number, employment_form="courier",
                                     joined_on=date(2021, 3, 1))
    async with membership.app.state.db.acquire() as conn, conn.transaction():
        row = await membership_usecases.join(conn, cmd, actor, today_cn(), vault=membership.app.state.vault)
        rec = await conn.fetchrow("SELECT event_id, value FROM outbox WHERE event_type = $1 AND key = $2",
                                  MemberJoined.event_type, str(row["id"]))
        event = decode(rec["value"])
        old = {k: v for k, v in event.data.items() if k != "id_hash"}
        assert old != event.data, "member.joined carries id_hash now: the rewrite is what makes it old"
        await conn.execute("UPDATE outbox SET value = $2 WHERE event_id = $1", rec["event_id"],
                           encode(event.model_copy(update={"data": old}))[1])
    return row["id"]


async def attend(bootstrap: str, group: str, app, session_id: str, member_hash: str) -> list:
    """A provider's attendance report as the intake's command on training.commands; training's outcomes of it."""
    command = AttendanceCommand(intake_id=uuid.uuid4(), upstream_source="urn:changai:test:provider:lookups",
                                upstream_type="training.provider.attendance.recorded.v1", region_scope="640104",
                                actor="provider-lookups", session_id=session_id, member_hash=member_hash,
                                learner_ref="L-lookups", attended_on=date(2021, 4, 2), minutes=180)
    event = envelope(command)
    k, v, headers = encode(event)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(COMMANDS, v, key=k, headers=headers)
    finally:
        await producer.stop()
    await committed_past(bootstrap, group, TopicPartition(COMMANDS, sent.partition), sent.offset)
    rows = await app.state.db.fetch("SELECT value FROM outbox WHERE event_type LIKE 'changai.training.command.%'")
    return [e for e in map(decode, (r["value"] for r in rows)) if e.data["command_id"] == event.id]


async def test_publish_lookups_lets_training_match_a_member_whose_joined_had_no_hash(stack, make_database):
    group = f"training-commands-{uuid.uuid4().hex[:8]}"
    await start_at_end(stack.bootstrap, group, COMMANDS)
    training_dsn = await make_database("training")
    async with running(stack, make_database, consume_commands=False) as membership, \
            running_training(stack, training_dsn, commands_group_id=group) as (app, client):
        await wait_assigned(app.state.commands)
        tdb = app.state.db
        branch = await membership.branch("640104")  # through the API: its branch.established reaches training
        number = unique_id_number()
        member_id = await join_as_before_id_hash(membership, branch["id"], number)
        await wait_for(lambda: tdb.fetchval("SELECT status = 'active' FROM members WHERE id = $1", member_id), 60)
        assert await tdb.fetchval("SELECT id_hash FROM members WHERE id = $1", member_id) is None
        await wait_for(lambda: tdb.fetchval("SELECT true FROM branches WHERE id = $1", uuid.UUID(branch["id"])), 60)

        s = await session(client, (await programme(client))["id"], branch["id"])
        r = await client.post(f"/v1/sessions/{s['id']}/enrolments", json={"member_id": str(member_id)}, headers=key())
        assert r.status_code == 201, r.text
        enrolment_id = uuid.UUID(r.json()["id"])
        # The intake names the trainee by the hash it computes from the provider's ID number (equal to membership's).
        member_hash = CommandKeys(membership.app.state.settings.data_key_bytes()).member_hash(number)

        [refused] = await attend(stack.bootstrap, group, app, s["id"], member_hash)
        assert (refused.type, refused.data["problem_type"].rsplit("/", 1)[-1]) == \
            ("changai.training.command.rejected.v1", "unknown-trainee")
        assert await tdb.fetchval("SELECT status FROM enrolments WHERE id = $1", enrolment_id) == "enrolled"

        # The backfill: membership's one-shot writes member.lookup to its outbox; its relay publishes it.
        assert await publish_lookups(membership.dsn, batch=2, progress=lambda _: None) == 1
        await wait_for(lambda: tdb.fetchval("SELECT id_hash = $2 FROM members WHERE id = $1",
                                            member_id, bytes.fromhex(member_hash)), 60)
        [applied] = await attend(stack.bootstrap, group, app, s["id"], member_hash)
        assert applied.type == "changai.training.command.applied.v1", applied.data
        assert (applied.data["member_id"], applied.data["took_effect"]) == (str(member_id), True)
        assert await tdb.fetchval("SELECT status FROM enrolments WHERE id = $1", enrolment_id) == "attended"

        # Only members created before a time: none before the member's row was, the member just after it.
        created = await membership.app.state.db.fetchval("SELECT created_at FROM members WHERE id = $1", member_id)
        assert await publish_lookups(membership.dsn, created_before=created, progress=lambda _: None) == 0

        # Twice, by the operator's command line this time: a second fact per member, applied (its inbox row),
        # and the member's row not even rewritten.
        before = await tdb.fetchrow("SELECT * FROM members WHERE id = $1", member_id)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.membership", "publish-lookups", "--created-before",
            (created + timedelta(microseconds=1)).isoformat(),
            cwd=ROOT, env={**os.environ, "CHANGAI_DATABASE_URL": membership.dsn},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert "published: 1 member.lookup events" in out.decode(), out.decode()
        lookups = [decode(v) for v in await membership.app.state.db.fetchval(
            "SELECT array_agg(value ORDER BY seq) FROM outbox WHERE event_type = $1", MemberLookup.event_type)]
        assert [e.data for e in lookups] == [{"member_id": str(member_id), "region_code": "640104",
                                              "id_hash": member_hash}] * 2
        assert "id_number" not in lookups[0].data and number not in str(lookups[0].data)
        await wait_for(lambda: tdb.fetchval("SELECT count(*) = 1 FROM inbox WHERE consumer = $1 AND event_id = $2",
                                            INBOX_CONSUMER, uuid.UUID(lookups[1].id)), 60)
        assert await tdb.fetchrow("SELECT * FROM members WHERE id = $1", member_id) == before
        assert await tdb.fetchval("SELECT status FROM enrolments WHERE id = $1", enrolment_id) == "attended"
