"""Reform member units' own channels, end to end on the real Kafka and PostgreSQL: a task's overdue reminder
reaches its lead unit's channel and not another unit's; the office's channel gets one digest for a scan's
several overdue tasks and no notice per task; quiet hours hold a unit's reminder; a liaison (a token with the
``unit`` claim) registers, sees and manages its own unit's channels only."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta

import pytest

from services.notifier import domain
from services.notifier.domain import SHANGHAI
from shared.auth import mint_token
from shared.events.reform import OverdueTask, SupervisionDigest, TaskOverdue, UnitOverdue, UnitRegistered

pytestmark = pytest.mark.integration
OVERDUE = "changai.reform.task.overdue.v1"
DIGEST = "changai.reform.supervision.digest.v1"


def liaison(unit_id, scopes=("notifier:write", "notifier:read")) -> dict:
    return {"Authorization": "Bearer " + mint_token("liaison", list(scopes), "640000", unit=str(unit_id))}


async def registered(notifier, name: str) -> uuid.UUID:
    """A member unit registered (as the reform service publishes it), once the notifier's read model has it."""
    unit_id = uuid.uuid4()
    await notifier.publish(UnitRegistered(unit_id=unit_id, name=name, kind="government", region_code="640000"))
    await notifier.until(
        lambda: notifier.db.fetchval("SELECT true FROM reform_units WHERE id = $1", unit_id), "the unit to be known")
    return unit_id


def overdue(unit_id: uuid.UUID, number: int) -> TaskOverdue:
    return TaskOverdue(task_id=uuid.uuid4(), year=2021, number=number, lead_unit_id=unit_id, lead_unit="单位",
                       region_code="640000", title=f"改革任务{number}", deadline=date(2021, 6, 30), days_overdue=3,
                       status="in_progress")


def webhook(receivers, name: str) -> tuple[str, str]:
    hook = f"{name}-{uuid.uuid4().hex[:6]}"
    return hook, receivers.hook(hook)


async def test_a_units_reminders_reach_its_own_channel_and_the_office_gets_one_digest(notifier, receivers):
    a = await registered(notifier, f"自治区人社厅{uuid.uuid4().hex[:4]}")
    b = await registered(notifier, f"自治区教育厅{uuid.uuid4().hex[:4]}")
    # unit A's channel registered by its liaison, unit B's by the office
    hook_a, url_a = webhook(receivers, "unit-a")
    made = await notifier.api.post("/v1/channels", headers=liaison(a), json={
        "kind": "webhook", "name": "人社厅联络员群", "owner": {"unit_id": str(a)}, "config": {"url": url_a}})
    assert made.status_code == 201, made.text
    channel_a = made.json()
    assert channel_a["owner"] == {"kind": "reform_unit", "unit_id": str(a), "branch_id": None,
                                  "region_code": "640000", "name": channel_a["owner"]["name"]}
    assert channel_a["owner"]["name"].startswith("自治区人社厅") and OVERDUE in channel_a["event_types"]
    receivers.set_hook_secrets(hook_a, [channel_a["signing_secret"]])
    hook_b, url_b = webhook(receivers, "unit-b")
    channel_b = await notifier.channel("webhook", {"url": url_b}, unit_id=b)
    receivers.set_hook_secrets(hook_b, [channel_b["signing_secret"]])
    # the office: a region-level channel with the federation's default subscriptions (the digest, not each task)
    hook_o, url_o = webhook(receivers, "office")
    office = await notifier.channel("webhook", {"url": url_o}, region_code="640000")
    receivers.set_hook_secrets(hook_o, [office["signing_secret"]])
    assert DIGEST in office["event_types"] and OVERDUE not in office["event_types"]

    # one scan: two of A's tasks and one of B's became overdue; each told, then the digest
    tasks = [overdue(a, 1), overdue(a, 2), overdue(b, 3)]
    for task in tasks:
        await notifier.publish(task)
    digest = SupervisionDigest(
        digest_id=uuid.uuid4(), scanned_on=date(2021, 7, 3), count=3, region_code="640000",
        by_unit=[UnitOverdue(unit_id=u, unit=name, overdue=[
            OverdueTask(task_id=t.task_id, year=t.year, number=t.number, title=t.title, deadline=t.deadline,
                        days_overdue=t.days_overdue) for t in tasks if t.lead_unit_id == u])
            for u, name in ((a, "自治区人社厅"), (b, "自治区教育厅"))])
    await notifier.publish(digest)

    def subjects(hook: str) -> list[tuple[str, str]]:
        return sorted((c.json["type"], c.json["data"].get("task_id") or c.json["data"]["digest_id"])
                      for c in receivers.received(f"hook:{hook}"))

    await notifier.until(lambda: len(subjects(hook_a)) == 2, "unit A's two reminders")
    await notifier.until(lambda: len(subjects(hook_b)) == 1, "unit B's reminder")
    await notifier.until(lambda: len(subjects(hook_o)) == 1, "the office's digest")
    # the digest went out after the tasks: had any task gone astray it would have arrived by now
    await notifier.until(lambda: _settled(notifier, [channel_a, channel_b, office]), "every delivery to finish")
    assert subjects(hook_a) == sorted((OVERDUE, str(t.task_id)) for t in tasks[:2])
    assert subjects(hook_b) == [(OVERDUE, str(tasks[2].task_id))]
    assert subjects(hook_o) == [(DIGEST, str(digest.digest_id))]
    assert all(c.verified_with == [0] for h in (hook_a, hook_b, hook_o) for c in receivers.received(f"hook:{h}"))

    # a liaison sees and manages its own unit's channels only
    mine = await notifier.api.get("/v1/channels", headers=liaison(a))
    assert [c["id"] for c in mine.json()["items"]] == [channel_a["id"]]
    assert (await notifier.api.get(f"/v1/channels/{channel_b['id']}", headers=liaison(a))).status_code == 404
    assert (await notifier.api.get(f"/v1/channels/{office['id']}", headers=liaison(a))).status_code == 404
    assert (await notifier.api.post(f"/v1/channels/{channel_b['id']}/pause", json={},
                                    headers=liaison(a))).status_code == 404
    refused = await notifier.api.post("/v1/channels", headers=liaison(a), json={
        "kind": "webhook", "name": "冒名", "owner": {"unit_id": str(b)}, "config": {"url": url_a}})
    assert refused.status_code == 403, refused.text
    refused = await notifier.api.post("/v1/channels", headers=liaison(a), json={
        "kind": "webhook", "name": "越权", "owner": {"region_code": "640000"}, "config": {"url": url_a}})
    assert refused.status_code == 403, refused.text
    log = (await notifier.api.get("/v1/deliveries", headers=liaison(a))).json()["items"]
    assert {d["channel"]["id"] for d in log} == {channel_a["id"]} and len(log) == 2
    # a city's token does not see the units' channels (they are the region's ledger's)
    city = {"Authorization": "Bearer " + mint_token("city", ["notifier:read"], "640100")}
    assert (await notifier.api.get(f"/v1/channels/{channel_a['id']}", headers=city)).status_code == 404
    # a unit the notifier has never heard of is refused, not a channel that would hear nothing
    unknown = await notifier.api.post("/v1/channels", json={
        "kind": "webhook", "name": "无此单位", "owner": {"unit_id": str(uuid.uuid4())}, "config": {"url": url_a}})
    assert unknown.status_code == 422, unknown.text


async def test_a_units_reminder_waits_for_the_end_of_its_quiet_hours(notifier, receivers):
    a = await registered(notifier, f"自治区总工会{uuid.uuid4().hex[:4]}")
    now = datetime.now(SHANGHAI)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=2)).strftime("%H:%M")}
    hook, url = webhook(receivers, "quiet")
    channel = await notifier.channel("webhook", {"url": url}, unit_id=a, quiet_hours=quiet)
    task = overdue(a, 9)
    await notifier.publish(task)
    (held,) = await notifier.until(lambda: notifier.deliveries(channel_id=channel["id"], status="deferred"),
                                   "the reminder deferred to the end of the quiet hours")
    # deferred to the end of the quiet hours (their end is two hours off: the same instant when the worker looked)
    assert held["event_type"] == OVERDUE
    assert datetime.fromisoformat(held["next_attempt_at"]) == domain.quiet_until(now, quiet)
    assert receivers.received(f"hook:{hook}") == []  # deferred before its attempt: nothing was sent


async def _settled(notifier, channels) -> bool:
    for ch in channels:
        if any(d["status"] != "delivered" for d in await notifier.deliveries(channel_id=ch["id"])):
            return False
    return True
