"""The member read model on the real Kafka and PostgreSQL: it follows joins, transfers, leaves,
lapses, skill levels and branch changes, survives redelivery, and rebuilds from the topic."""
import uuid
from datetime import date

import pytest

from services.training import consumers
from shared.events.membership import (
    BranchMerged, MemberLapsed, MemberLeft, MemberSkillLevelChanged, MemberTransferred,
)
from training_support import (
    branch_event, joined, key, members_known, private_topic, produce, programme, running_training, session,
    wait_for,
)

pytestmark = pytest.mark.integration


def transferred(member_id, frm, to, on=date(2021, 5, 1)) -> MemberTransferred:
    return MemberTransferred(member_id=member_id, from_branch_id=frm.branch_id, to_branch_id=to.branch_id,
                             from_region_code=frm.region_code, to_region_code=to.region_code,
                             from_city_code=frm.city_code, to_city_code=to.city_code, employment_form="standard",
                             transferred_on=on)


async def member(client, member_id) -> dict | None:
    resp = await client.get(f"/v1/members/{member_id}")
    return resp.json() if resp.status_code == 200 else None


async def test_read_model_follows_membership_and_survives_redelivery(stack, training):
    app, client, _ = training
    pool = app.state.db
    a, b = branch_event("640104", "兴庆区枸杞工会"), branch_event("640302", "吴忠滩羊肉业工会")
    m1, m2, m3 = joined(a), joined(a), joined(a, form="courier")
    sent = await produce(stack.bootstrap, a, b, m1, m2, m3)
    await wait_for(lambda: members_known(client, [m1.member_id, m2.member_id, m3.member_id]))
    first = await member(client, m1.member_id)
    assert (first["branch_id"], first["region_code"], first["city_code"], first["status"], first["skill_level"]) == \
        (str(a.branch_id), "640104", "640100", "active", 5)

    # transfer, leave, lapse, skill level
    to_b = transferred(m1.member_id, a, b)
    [to_b_event] = await produce(stack.bootstrap, to_b)
    others = await produce(stack.bootstrap,
                  MemberLeft(member_id=m2.member_id, branch_id=a.branch_id, region_code="640104", city_code="640100",
                             employment_form="standard", left_on=date(2021, 6, 1)),
                  MemberLapsed(member_id=m3.member_id, branch_id=a.branch_id, region_code="640104",
                               city_code="640100", employment_form="courier", lapsed_on=date(2021, 6, 2)),
                  MemberSkillLevelChanged(member_id=m1.member_id, branch_id=b.branch_id, region_code="640302",
                                          city_code="640300", from_level=5, to_level=3))
    await wait_for(lambda: members_known(client, [m2.member_id], "left"))
    await wait_for(lambda: members_known(client, [m3.member_id], "lapsed"))
    moved = await wait_for(lambda: _with_level(client, m1.member_id, 3))
    assert (moved["branch_id"], moved["region_code"], moved["city_code"], moved["status"]) == \
        (str(b.branch_id), "640302", "640300", "active")
    assert (await member(client, m2.member_id))["ended_on"] == "2021-06-01"

    # Redelivery: the same events again (same ids), after newer ones. Nothing may change.
    # A new event behind them on the same partition (same key) tells us they were processed.
    back = transferred(m1.member_id, b, a, on=date(2021, 7, 1))
    others += await produce(stack.bootstrap, back)
    await wait_for(lambda: _in_branch(client, m1.member_id, a.branch_id))
    m2_joined = next(e for e in sent if e.subject == str(m2.member_id))
    more = await produce(stack.bootstrap, to_b_event, m2_joined,
                  MemberSkillLevelChanged(member_id=m1.member_id, branch_id=a.branch_id, region_code="640104",
                                          city_code="640100", from_level=3, to_level=2),
                  MemberSkillLevelChanged(member_id=m2.member_id, branch_id=a.branch_id, region_code="640104",
                                          city_code="640100", from_level=5, to_level=4))
    after = await wait_for(lambda: _with_level(client, m1.member_id, 2))
    assert after["branch_id"] == str(a.branch_id), "a redelivered transfer was applied again"
    await wait_for(lambda: _with_level(client, m2.member_id, 4))
    assert (await member(client, m2.member_id))["status"] == "left", "a redelivered join revived a member who left"
    mine = [uuid.UUID(e.id) for e in sent + [to_b_event] + others + more + [m2_joined]]
    applied = await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1 AND event_id = ANY($2::uuid[])",
                                  consumers.INBOX_CONSUMER, mine)
    assert (len(set(mine)), applied) == (12, 12), "each distinct event is recorded once in the inbox"

    # The read model is what enrolment decides on.
    prog = await programme(client, "skills_upgrade")
    s = await session(client, prog["id"], a.branch_id, capacity=5)
    res = await client.post(f"/v1/sessions/{s['id']}/enrolments/bulk", headers=key(), json={
        "member_ids": [str(m1.member_id), str(m2.member_id), str(m3.member_id)]})
    assert [r.get("problem", {}).get("type", "enrolled").rsplit("/", 1)[-1] for r in res.json()["results"]] == \
        ["enrolled", "member-not-active", "member-not-active"]
    enrolment = res.json()["results"][0]["enrolment_id"]
    assert (await client.get(f"/v1/enrolments/{enrolment}")).json()["branch_id"] == str(a.branch_id)

    # A merged branch no longer organises sessions.
    await produce(stack.bootstrap, BranchMerged(branch_id=a.branch_id, into_branch_id=b.branch_id,
                                                region_code="640104", city_code="640100", kind="enterprise",
                                                members_moved=0, merged_on=date(2021, 8, 1)))
    await wait_for(lambda: pool.fetchval("SELECT status = 'merged' FROM branches WHERE id = $1", a.branch_id))
    refused = await client.post("/v1/sessions", headers=key(), json={
        "programme_id": prog["id"], "organiser_kind": "branch", "organiser_id": str(a.branch_id),
        "starts_on": "2021-09-01", "ends_on": "2021-09-10", "capacity": 5})
    assert refused.status_code == 409 and refused.json()["type"].endswith("/organiser-inactive")


async def _with_level(client, member_id, level):
    m = await member(client, member_id)
    return m if m and m["skill_level"] == level else None


async def _in_branch(client, member_id, branch_id):
    m = await member(client, member_id)
    return m if m and m["branch_id"] == str(branch_id) else None


async def test_rebuild_replays_from_the_beginning_and_the_live_consumer_follows(stack, make_database):
    # The test's own copy of the topic: a replay of the shared membership.events would take as long
    # as whatever every other test and benchmark has put there (the bench measures that figure).
    async with private_topic(stack.bootstrap) as topic:
        await _rebuild_scenario(stack, await make_database("training"), topic)


async def _rebuild_scenario(stack, dsn: str, topic: str) -> None:
    branch = branch_event("640502", "中卫沙坡头文化旅游工会")
    early, gone = joined(branch), joined(branch)
    # Produced before the service starts, whose consumer group starts at the end of the topic:
    # only a replay from the beginning can know these.
    history = await produce(stack.bootstrap, branch, early, gone,
                            MemberLeft(member_id=gone.member_id, branch_id=branch.branch_id, region_code="640502",
                                       city_code="640500", employment_form="standard", left_on=date(2021, 2, 1)),
                            topic=topic)
    await produce(stack.bootstrap, history[1], topic=topic)  # a duplicate in the log: applied once
    async with running_training(stack, dsn, members_topic=topic) as (app, client):
        pool = app.state.db
        later = joined(branch)
        await produce(stack.bootstrap, later, topic=topic)
        await wait_for(lambda: members_known(client, [later.member_id]))
        assert await member(client, early.member_id) is None
        prefix = app.state.settings.members_group
        assert app.state.members.consumer.group_id == f"{prefix}-g1"

        result = await consumers.rebuild(dsn, stack.bootstrap, prefix, topic=topic, progress=lambda _: None)
        assert (result["generation"], result["group"]) == (2, f"{prefix}-g2")
        assert (result["applied"], result["skipped"], result["invalid"]) == (5, 1, 0)
        assert (result["members"], result["active_members"], result["branches"]) == (3, 2, 1)
        assert (await member(client, early.member_id))["status"] == "active"
        assert (await member(client, gone.member_id))["status"] == "left"
        assert (await member(client, later.member_id))["status"] == "active"
        assert await pool.fetchval("SELECT rebuilt_at IS NOT NULL FROM member_model")
        assert await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", consumers.INBOX_CONSUMER) == 5

        # The running service moves its consumer to the new generation and keeps following.
        await wait_for(lambda: _group_is(app, f"{prefix}-g2"), timeout=20)
        newest = joined(branch)
        await produce(stack.bootstrap, newest,
                      MemberLeft(member_id=later.member_id, branch_id=branch.branch_id, region_code="640502",
                                 city_code="640500", employment_form="standard", left_on=date(2021, 9, 1)),
                      topic=topic)
        await wait_for(lambda: members_known(client, [newest.member_id]))
        await wait_for(lambda: members_known(client, [later.member_id], "left"))
        assert await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", consumers.INBOX_CONSUMER) == 7
        assert await pool.fetchval("SELECT count(*) FROM members") == 4


async def _group_is(app, group: str) -> bool:
    consumer = app.state.members.consumer
    return consumer is not None and consumer.group_id == group and bool(consumer.consumer and
                                                                       consumer.consumer.assignment())


async def test_a_fresh_service_catches_up_in_batches_then_follows_live(stack, make_database):
    async with private_topic(stack.bootstrap) as topic:
        branch = branch_event("640425", "彭阳县新就业形态工会")
        riders = [joined(branch, form="food_delivery") for _ in range(30)]
        history = await produce(stack.bootstrap, branch, *riders,
                                MemberLapsed(member_id=riders[0].member_id, branch_id=branch.branch_id,
                                             region_code="640425", city_code="640400", employment_form="food_delivery",
                                             lapsed_on=date(2021, 6, 30)), topic=topic)
        await produce(stack.bootstrap, *history[5:10], topic=topic)  # redelivered copies in the log
        async with running_training(stack, await make_database("training"), from_now=False,
                                    members_topic=topic) as (app, client):
            caught = app.state.members.caught_up
            assert (caught["applied"], caught["skipped"], caught["invalid"], caught["committed"]) == (32, 5, 0, True)
            assert await app.state.db.fetchval("SELECT count(*) FROM members WHERE status = 'active'") == 29
            assert (await member(client, riders[0].member_id))["status"] == "lapsed"
            late = joined(branch, form="food_delivery")
            await produce(stack.bootstrap, late, topic=topic)
            await wait_for(lambda: members_known(client, [late.member_id]))
