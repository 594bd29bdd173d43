"""Reform member units' channels: a task's supervision reaches its lead unit's channels and no other
unit's; the office hears the scan's digest; the owner rule (shared.auth) keeps a liaison to its unit."""
from __future__ import annotations

import uuid
from datetime import date

from services.notifier import domain
from services.notifier.domain import Channel, ChannelIndex
from shared.auth import Principal
from shared.events.reform import OverdueTask, SupervisionDigest, TaskOverdue, TaskSentBack, UnitOverdue

OVERDUE = "changai.reform.task.overdue.v1"


def unit_channel(unit: uuid.UUID, types=domain.UNIT_DEFAULTS, status="active") -> Channel:
    return Channel(uuid.uuid4(), "webhook", "单位群", "reform_unit", None, "640000", "own", list(types),
                   status=status, owner_unit_id=unit)


def office_channel(types=None, status="active") -> Channel:
    return Channel(uuid.uuid4(), "wecom", "办公室群", "federation", None, "640000", "subtree",
                   list(types or domain.default_subscriptions("federation")), status=status)


def overdue(lead: uuid.UUID) -> TaskOverdue:
    return TaskOverdue(task_id=uuid.uuid4(), year=2021, number=7, lead_unit_id=lead, lead_unit="自治区人社厅",
                       region_code="640000", title="技能评价", deadline=date(2021, 6, 30), days_overdue=3,
                       status="in_progress")


def test_a_task_reaches_its_lead_units_channels_and_no_other_units():
    a, b = uuid.uuid4(), uuid.uuid4()
    ours, theirs, office = unit_channel(a), unit_channel(b), office_channel()
    index = ChannelIndex([ours, theirs, office])
    event = overdue(a)
    got = {t.channel.id for t in domain.targets(index, OVERDUE, domain.concern(OVERDUE, event))}
    # the office's default subscriptions take the scan's digest, not one notice per task
    assert got == {ours.id}
    # a unit's channel is routed by its unit only: region-wide events (640000) never reach it
    digest = SupervisionDigest(digest_id=uuid.uuid4(), scanned_on=date(2021, 7, 3), count=1, region_code="640000",
                               by_unit=[UnitOverdue(unit_id=a, unit="自治区人社厅", overdue=[OverdueTask(
                                   task_id=event.task_id, year=2021, number=7, title="技能评价",
                                   deadline=date(2021, 6, 30), days_overdue=3)])])
    got = {t.channel.id for t in domain.targets(index, domain.SUPERVISION_DIGEST,
                                                 domain.concern(domain.SUPERVISION_DIGEST, digest))}
    assert got == {office.id}


def test_an_office_channel_that_asks_for_every_task_hears_each_and_a_reassignment_tells_both_units():
    a, b = uuid.uuid4(), uuid.uuid4()
    office = office_channel(types=["changai.reform.*"])
    old, new = unit_channel(a), unit_channel(b)
    index = ChannelIndex([office, old, new])
    assert {t.channel.id for t in domain.targets(index, OVERDUE, domain.concern(OVERDUE, overdue(b)))} == {
        office.id, new.id}
    moved = {"task_id": str(uuid.uuid4()), "lead_unit_id": str(b), "previous_lead_unit_id": str(a),
             "region_code": "640000"}
    kind = "changai.reform.task.assigned.v1"
    assert {t.channel.id for t in domain.targets(index, kind, domain.concern(kind, moved))} == {
        office.id, old.id, new.id}


def test_a_units_channel_hears_only_what_it_subscribes_to():
    a = uuid.uuid4()
    only_overdue = unit_channel(a, types=[OVERDUE])
    index = ChannelIndex([only_overdue])
    sent_back = TaskSentBack(task_id=uuid.uuid4(), year=2021, number=7, lead_unit_id=a, lead_unit="人社厅",
                             region_code="640000", reason="材料不全")
    kind = "changai.reform.task.sent_back.v1"
    assert domain.targets(index, kind, domain.concern(kind, sent_back)) == []
    assert [t.channel.id for t in domain.targets(index, OVERDUE, domain.concern(OVERDUE, overdue(a)))] == [
        only_overdue.id]


def test_a_paused_unit_channel_stands_in_through_its_other_channel_or_the_office():
    a = uuid.uuid4()
    # the spare channel does not ask for overdue notices: it stands in only because the other is paused
    paused, spare = unit_channel(a, status="paused"), unit_channel(a, types=["changai.reform.task.completed.v1"])
    office = office_channel(types=["*"])
    got = domain.targets(ChannelIndex([paused, spare, office]), OVERDUE, domain.concern(OVERDUE, overdue(a)))
    assert {(t.channel.id, t.fallback_for) for t in got} == {(paused.id, None), (spare.id, paused.id),
                                                             (office.id, None)}
    alone = domain.targets(ChannelIndex([paused, office_channel()]), OVERDUE, domain.concern(OVERDUE, overdue(a)))
    assert [t.fallback_for for t in alone if t.channel.id != paused.id] == [paused.id]  # the office stands in
    told = domain.paused_notice_targets(ChannelIndex([paused, office]), paused)
    assert [t.channel.id for t in told] == [office.id]


def test_default_subscriptions_per_owner():
    assert OVERDUE in domain.default_subscriptions("reform_unit")
    assert domain.SUPERVISION_DIGEST in domain.default_subscriptions("federation")
    assert OVERDUE not in domain.default_subscriptions("federation")
    assert not any(p.startswith("changai.reform") for p in domain.default_subscriptions("branch"))


def test_the_owner_rule_keeps_a_liaison_to_its_unit():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    liaison = Principal("liaison", frozenset({"notifier:write"}), "640000", unit=a)
    office = Principal("office", frozenset({"notifier:write"}), "640000")
    city = Principal("city", frozenset({"notifier:write"}), "640100")
    assert liaison.may_act_for("640000", a) and not liaison.may_act_for("640000", b)
    assert not liaison.may_act_for("640104")  # a region's channels are not a liaison's
    assert office.may_act_for("640000", a) and office.may_act_for("640104")
    assert not city.may_act_for("640000", a) and city.may_act_for("640104")
