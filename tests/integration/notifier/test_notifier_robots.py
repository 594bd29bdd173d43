"""Robot budgets per robot key, not per channel (issue 15 item 7), against the strict fakes.

WeCom and DingTalk take 20 messages a minute per key / access token however many group
channels use it (and the internal records on the way are labelled with their own content types,
not as CloudEvents: item 4); DingTalk then blocks the robot (130101) and every message sent into the block
prolongs nothing but is refused. A robot that stays over budget ends in dead letters and an
operator alert instead of a loop (here: 20 per 3 s, a 1.5 s block, dead letters after 8 s).
"""
from __future__ import annotations

import uuid
from datetime import date

import httpx
import pytest

from notifier_harness import Notifier, fast_settings, read_records, values
from services.notifier import topics
from shared.events.training import SessionCompleted

pytestmark = pytest.mark.integration

BLOCK_S = 1.5
MAX_WAIT_S = 8.0


@pytest.fixture(scope="module")
async def robots(stack, make_database, receivers, mailbox):
    dsn = await make_database("notifier")
    env = {**fast_settings(receivers.base, mailbox.port), "CHANGAI_NOTIFIER_DINGTALK_BLOCKED_S": str(BLOCK_S),
           "CHANGAI_NOTIFIER_ROBOT_MAX_WAIT_S": str(MAX_WAIT_S), "CHANGAI_NOTIFIER_PAUSE_AFTER_S": "3600"}
    n = await Notifier(stack, dsn, env).start()
    yield n
    await n.stop()


def completed(branch_id: uuid.UUID, programme: str) -> SessionCompleted:
    return SessionCompleted(
        session_id=uuid.uuid4(), programme_id=uuid.uuid4(), programme_name=programme, number=1,
        organiser_id=str(branch_id), organiser_kind="branch", region_code="640104", city_code="640100",
        subsidy_category="skills_upgrade", person_times=3, passed=3, failed=0, eligible_member_ids=[],
        eligible_persons=3, completed_on=date(2024, 5, 1))


async def _delivered(n: Notifier, channel_ids: list[str], count: int) -> bool:
    done = 0
    for cid in channel_ids:
        done += len(await n.deliveries(channel_id=cid, status="delivered"))
    return done >= count


async def test_two_channels_sharing_a_wecom_key_share_its_20_a_window(robots, receivers):
    n = robots
    a, b = await n.branch(), await n.branch()
    key = f"shared-{uuid.uuid4().hex}"
    receivers.wecom_robot(key, limit=20, window=2.5)  # the worker keeps 20 per 3 s: the margin is jitter
    first = await n.channel("wecom", {"key": key}, branch_id=a)
    second = await n.channel("wecom", {"key": key}, branch_id=b)
    programmes = [f"共享机器人{i:03d}" for i in range(60)]
    for i, p in enumerate(programmes):
        await n.publish(completed(a if i % 2 else b, p))

    await n.until(lambda: _delivered(n, [first["id"], second["id"]], 60), "60 delivered", timeout=90)
    calls = receivers.received(f"wecom:{key}")
    assert calls and all(c.answer == 0 for c in calls), [c.answer for c in calls]  # never over the key's budget
    times = sorted(c.at for c in calls)
    assert all(times[i + 20] - times[i] >= 2.5 for i in range(len(times) - 20))
    contents = "\n".join(c.content for c in calls)
    assert [contents.count(f"{p}第1期已结业") for p in programmes] == [1] * 60  # each once, digests included


async def test_a_dingtalk_block_holds_every_channel_of_the_robot(robots, receivers):
    n = robots
    a, b = await n.branch(), await n.branch()
    token = f"dt-{uuid.uuid4().hex}"
    receivers.dingtalk_robot(token, keyword="产改", block=BLOCK_S)
    receivers.script(f"dingtalk:{token}", [130101])  # the robot says: blocked
    first = await n.channel("dingtalk", {"access_token": token, "keyword": "产改"}, branch_id=a)
    await n.publish(completed(a, "封禁一"))
    (blocked,) = await n.until(lambda: receivers.received(f"dingtalk:{token}") or None, "the blocked answer")
    assert blocked.answer == 130101
    second = await n.channel("dingtalk", {"access_token": token, "keyword": "产改"}, branch_id=b)
    await n.publish(completed(b, "封禁二"))

    await n.until(lambda: _delivered(n, [first["id"], second["id"]], 2), "both after the block", timeout=60)
    later = [c for c in receivers.received(f"dingtalk:{token}") if c is not blocked]
    assert [c.answer for c in later] == [0, 0] or [c.answer for c in later] == [0]  # one digest or two
    assert all(c.at >= blocked.at + BLOCK_S * 0.98 for c in later)  # the sibling channel did not send into it


async def test_a_robot_that_stays_over_budget_ends_in_dead_letters_and_an_alert_metric(robots, receivers):
    n = robots
    branch = await n.branch()
    token = f"dt-{uuid.uuid4().hex}"
    receivers.dingtalk_robot(token, keyword="产改", block=BLOCK_S)
    receivers.script(f"dingtalk:{token}", [130101] * 200)  # blocked, and blocked again, for good
    channel = await n.channel("dingtalk", {"access_token": token, "keyword": "产改"}, branch_id=branch)
    for i in range(5):
        await n.publish(completed(branch, f"超限{i}"))

    async def dead():
        rows = await n.deliveries(channel_id=channel["id"], status="dead")
        return rows if len(rows) == 5 else None

    rows = await n.until(dead, "the notices to end as dead letters", timeout=MAX_WAIT_S + 60)
    assert all("robot over budget" in (r["last_error"] or "") for r in rows)
    assert all(r["attempt_log"][-1]["outcome"] == "expired" for r in rows)
    assert (await n.api.get(f"/v1/channels/{channel['id']}")).json()["status"] == "active"  # not the channel's fault
    ids = {r["id"] for r in rows}
    letters = await read_records(n.stack.bootstrap, "notifier.deliveries.dlq",
                                 lambda rs: ids <= {v.get("delivery_id") for v in values(rs)})
    mine = [r for r in letters if (values([r]) or [{}])[0].get("delivery_id") in ids]
    assert mine and all(_content_type(r) == topics.DEAD_LETTER_CONTENT_TYPE for r in mine)
    # The deliver topic's records are labelled as what they are, not CloudEvents. The worker hands
    # its own channels' notices over in process (only other workers' channels go through the topic),
    # so a resend asked for through the API puts this channel's record there.
    again = await n.api.post(f"/v1/deliveries/{rows[0]['id']}/resend")
    assert again.status_code == 202, again.text
    delivered = await read_records(n.stack.bootstrap, topics.DELIVER, lambda rs: any(
        v.get("c") == channel["id"] for v in values(rs)))
    for_channel = [r for r in delivered if (values([r]) or [{}])[0].get("c") == channel["id"]]
    assert for_channel and all(_content_type(r) == topics.DELIVERY_CONTENT_TYPE for r in for_channel)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{n.worker_env['CHANGAI_HTTP_PORT']}/metrics")).text
    (line,) = [m for m in metrics.splitlines() if m.startswith('changai_notifier_robot_over_budget_total{kind="dingtalk"}')]
    assert float(line.split()[-1]) >= 5


def _content_type(record) -> str | None:
    for key, value in record.headers or ():
        if key == "content-type":
            return value.decode()
    return None
