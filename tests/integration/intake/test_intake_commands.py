"""Membership's batch form of the intake's commands (``commands.apply_commands`` → ``usecases.join_many``)
on the real PostgreSQL: a partition's batch gives each command the outcome a sequence of the API's join and
leave would give it (a new member, the same person twice, a rejoin, an active member, a branch outside the
source's scope, an employer without a branch, a join then a leave of one person), and a redelivered batch
changes nothing."""
from __future__ import annotations

import uuid

import asyncpg

from services.membership.commands import apply_commands
from shared.clock import today_cn
from shared.events import envelope
from shared.events.intake import CommandApplied, CommandKeys, JoinCommand, LeaveCommand
from tests.integration.membership.membership_support import auth, credit_code, outbox_events, unique_id_number

SOURCE = "urn:changai:test:hr:batch"


def command(keys: CommandKeys, cls, number: str, **fields):
    intake_id = uuid.uuid4()
    person = {"name": "马春燕", "id_number": number, "phone": "13912345678"} if cls is JoinCommand else {
        "id_number": number}
    cmd = cls(intake_id=intake_id, upstream_source=SOURCE, upstream_type="enterprise.hr.employee.hired.v1",
              region_scope="640104", actor="hr-batch", person_key=keys.person_key(number),
              sealed=keys.seal(intake_id, person), **fields)
    return envelope(cmd, event_id=str(uuid.uuid4())), cmd


async def test_a_batch_of_commands_is_applied_as_the_use_cases_would_one_by_one(membership):
    app = membership.app
    keys, vault = CommandKeys(app.state.settings.data_key_bytes()), app.state.vault
    here, elsewhere = await membership.branch("640104"), await membership.branch("640205")
    code = here["credit_code"]
    rejoining, active = unique_id_number(), unique_id_number()
    left_id = (await membership.member(here["id"], number=rejoining))["id"]
    r = await membership.client.post(f"/v1/members/{left_id}:leave", json={"on": "2024-01-02"}, headers=auth())
    assert r.status_code == 200, r.text
    active_id = (await membership.member(here["id"], number=active))["id"]
    new, passing = unique_id_number(), unique_id_number()

    def join(number, employer=code, **extra):
        return command(keys, JoinCommand, number, employer_credit_code=employer, joined_on="2024-05-01", **extra)

    batch = [
        join(new),
        join(new),  # the same person again in the batch
        join(rejoining),  # left before: rejoins as the same member
        join(active),  # already an active member
        join(unique_id_number(), elsewhere["credit_code"]),  # a branch outside the source's 640104
        join(unique_id_number(), credit_code("640104")),  # an employer with no branch
        join(passing),
        command(keys, LeaveCommand, passing, left_on="2024-06-01"),  # after the join of the same batch
        join(unique_id_number(), branch_id=uuid.uuid4()),  # a branch id that does not exist
    ]
    conn = await asyncpg.connect(membership.dsn)
    try:
        async with conn.transaction():
            outcomes = await apply_commands(conn, batch, keys, vault, today_cn())
        kinds = [o.member_id if isinstance(o, CommandApplied) else o.problem_type for o in outcomes]
        assert [o.intake_id for o in outcomes] == [cmd.intake_id for _, cmd in batch]
        new_id = kinds[0]
        assert isinstance(new_id, uuid.UUID)
        assert kinds[1:6] == ["already-a-member", uuid.UUID(left_id), "already-a-member", "out-of-scope",
                              "no-branch-for-employer"], kinds
        assert isinstance(kinds[6], uuid.UUID) and kinds[7] == kinds[6]  # the leave found the member just joined
        assert kinds[8] == "validation-error", kinds
        status = dict(await conn.fetch("SELECT id::text, status FROM members"))
        assert status[str(new_id)] == "active" and status[left_id] == "active" and status[str(kinds[6])] == "left"
        assert status[active_id] == "active"
        again = [(envelope(cmd, event_id=str(e.id)), cmd) for e, cmd in batch]  # the same batch redelivered
        async with conn.transaction():
            assert await apply_commands(conn, again, keys, vault, today_cn()) == []
        assert len(await conn.fetch("SELECT 1 FROM members")) == len(status)
    finally:
        await conn.close()
    joined = {e.data["member_id"] for e in await outbox_events(membership.dsn, "changai.membership.member.joined.v1")}
    assert {str(new_id), left_id, str(kinds[6])} <= joined
    outcomes_out = await outbox_events(membership.dsn, "changai.membership.command.rejected.v1")
    assert sum(1 for e in outcomes_out if e.data["upstream_source"] == SOURCE) == 5
