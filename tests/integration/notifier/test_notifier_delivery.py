"""The notifier end to end on the real Kafka and PostgreSQL, with real receivers on 127.0.0.1.

A worker process (route → render → deliver) and the API (in-process) share one database;
domain events are published to the domain topics as the services publish them.
"""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import date, datetime, timedelta

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from notifier_harness import read_records, values
from services.notifier.domain import SHANGHAI
from shared.events import encode, envelope
from shared.events.funding import SubsidyRejected
from shared.events.training import SessionCompleted

pytestmark = pytest.mark.integration


def completed(branch_id: uuid.UUID, programme: str = "枸杞栽培技术提升", number: int = 3) -> SessionCompleted:
    return SessionCompleted(
        session_id=uuid.uuid4(), programme_id=uuid.uuid4(), programme_name=programme, number=number,
        organiser_id=str(branch_id), organiser_kind="branch", region_code="640104", city_code="640100",
        subsidy_category="skills_upgrade", person_times=36, passed=34, failed=2, eligible_member_ids=[],
        eligible_persons=30, completed_on=date(2024, 5, 1))


async def test_each_channel_kind_end_to_end_from_a_domain_event(notifier, receivers, mailbox):
    branch = await notifier.branch(name="宁夏枸杞产业集团有限公司工会委员会")
    hook = f"each-{uuid.uuid4().hex[:6]}"
    url = receivers.hook(hook)
    webhook = await notifier.channel("webhook", {"url": url}, branch_id=branch,
                                     event_types=["changai.training.*"])
    receivers.set_hook_secrets(hook, [webhook["signing_secret"]])
    wecom_key = f"wk-{uuid.uuid4().hex}"
    receivers.wecom_robot(wecom_key)
    wecom = await notifier.channel("wecom", {"key": wecom_key}, branch_id=branch)
    token, secret = f"dt-{uuid.uuid4().hex}", f"SEC{uuid.uuid4().hex}"
    receivers.dingtalk_robot(token, secret=secret, keyword="产改通知")
    dingtalk = await notifier.channel("dingtalk", {"access_token": token, "secret": secret, "keyword": "产改通知"},
                                      branch_id=branch)
    address = f"union-{uuid.uuid4().hex[:6]}@example.cn"
    email = await notifier.channel("email", {"to": [address]}, branch_id=branch)

    mine = {c["id"] for c in (webhook, wecom, dingtalk, email)}
    event = await notifier.publish(completed(branch))

    calls = await notifier.until(lambda: receivers.received(f"hook:{hook}"), "the webhook")
    (call,) = calls
    assert call.headers["webhook-id"] == event.id and call.verified_with == [0]
    Webhook(webhook["signing_secret"]).verify(call.body, call.headers)
    assert call.json["type"] == "changai.training.session.completed.v1" and call.json["id"] == event.id

    (wecom,) = await notifier.until(lambda: receivers.received(f"wecom:{wecom_key}"), "the WeCom robot")
    assert wecom.answer == 0 and wecom.json["msgtype"] == "markdown"
    assert "【培训结业】" in wecom.content and "宁夏枸杞产业集团有限公司工会委员会：枸杞栽培技术提升第3期已结业" in wecom.content

    (ding,) = await notifier.until(lambda: receivers.received(f"dingtalk:{token}"), "the DingTalk robot")
    assert ding.answer == 0  # signature, timestamp, keyword and title all checked by the fake
    assert ding.json["markdown"]["title"].startswith("【培训结业】") and "产改通知" in ding.content

    (mail,) = await notifier.until(lambda: mailbox.to(address), "the e-mail")
    assert mail["Subject"].startswith("【培训结业】宁夏枸杞产业集团有限公司工会委员会")
    assert mail["Message-ID"].startswith(f"<{event.id}.")
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    assert "<table" in html and "参训人次" in html and "参训人次：36" in text

    log = await notifier.until(lambda: _delivered(notifier, branch, mine), "four deliveries in the log")
    assert sorted(d["channel"]["kind"] for d in log) == ["dingtalk", "email", "webhook", "wecom"]
    for d in log:
        (attempt,) = d["attempt_log"]
        assert attempt["outcome"] == "delivered" and attempt["latency_ms"] >= 0 and len(attempt["payload_hash"]) == 64
    # The projection hears of each through notifier.events (written with the outcome, via the outbox).
    ids = {d["id"] for d in log}
    records = await read_records(notifier.stack.bootstrap, "notifier.events",
                                 lambda rs: ids <= {v.get("data", {}).get("delivery_id") for v in values(rs)})
    succeeded = [v for v in values(records) if v.get("data", {}).get("delivery_id") in ids]
    assert {v["type"] for v in succeeded} == {"changai.notifier.delivery.succeeded.v1"}
    assert all(v["data"]["attempts"] == 1 and v["data"]["latency_ms"] >= 0 for v in succeeded)


async def _delivered(notifier, branch, channel_ids):
    """The deliveries about ``branch`` on these channels, once every one of them is delivered."""
    log = [d for d in await notifier.deliveries(branch_id=branch) if d["channel"]["id"] in channel_ids]
    return log if len(log) == len(channel_ids) and all(d["status"] == "delivered" for d in log) else None


async def test_an_event_published_twice_reaches_each_channel_once(notifier, receivers):
    """A domain event redelivered (the same record again, as Kafka gives it after a consumer's crash)
    is routed twice; the delivery id derived from event and channel makes it one notice."""
    branch = await notifier.branch()
    hook = f"twice-{uuid.uuid4().hex[:6]}"
    channel = await notifier.channel("webhook", {"url": receivers.hook(hook)}, branch_id=branch)
    receivers.set_hook_secrets(hook, [channel["signing_secret"]])
    data = completed(branch)
    event = envelope(data)
    key, value, headers = encode(event)
    # A notice after it, on the same key (so routed after both copies) and the same channel (so
    # delivered after anything routed before it): when it has arrived, a second copy would have too.
    _, marker_value, marker_headers = encode(marker := envelope(completed(branch, programme="其后")))
    for v, h in ((value, headers), (value, headers), (marker_value, marker_headers)):
        await notifier.producer.send_and_wait(data.topic, v, key=key, headers=h)
    await notifier.until(lambda: any(c.headers["webhook-id"] == marker.id for c in receivers.received(f"hook:{hook}")),
                         "the notice after it")
    ok = [c for c in receivers.received(f"hook:{hook}") if c.headers["webhook-id"] == event.id and c.answer == 204]
    assert len(ok) == 1, f"the event reached the receiver {len(ok)} times"
    assert sorted(d["event_id"] for d in await notifier.deliveries(channel_id=channel["id"])) == sorted(
        [event.id, marker.id])


async def test_a_federation_hears_of_the_branches_under_it(notifier, receivers):
    city_hook, other_hook = f"city-{uuid.uuid4().hex[:6]}", f"county-{uuid.uuid4().hex[:6]}"
    city = await notifier.channel("webhook", {"url": receivers.hook(city_hook)}, region_code="640300")
    assert city["scope"] == "subtree"
    receivers.set_hook_secrets(city_hook, [city["signing_secret"]])
    county = await notifier.channel("webhook", {"url": receivers.hook(other_hook)}, region_code="640402",
                                    scope="own")
    receivers.set_hook_secrets(other_hook, [county["signing_secret"]])

    in_city = [await notifier.branch("640302"), await notifier.branch("640303")]  # 吴忠市 利通区, 红寺堡区
    elsewhere = await notifier.branch("640402")  # 固原市 原州区

    def seen(hook):
        return {c.json["data"]["branch_id"] for c in receivers.received(f"hook:{hook}")
                if c.json.get("type") == "changai.membership.branch.established.v1"}

    await notifier.until(lambda: {str(b) for b in in_city} <= seen(city_hook), "the city federation's notices")
    await notifier.until(lambda: str(elsewhere) in seen(other_hook), "the county federation's notice")
    # Nothing more is coming, shown by a condition rather than a pause: a later notice of each channel
    # arrives after anything routed to it before (one task per channel keeps its order).
    city_marker, county_marker = await notifier.branch("640302"), await notifier.branch("640402")
    await notifier.until(lambda: str(city_marker) in seen(city_hook) and str(county_marker) in seen(other_hook),
                         "a later notice on each channel")
    assert str(elsewhere) not in seen(city_hook)
    assert not {str(b) for b in in_city} & seen(other_hook)
    # Each notice once, every signature valid.
    ids = Counter(c.headers["webhook-id"] for c in receivers.received(f"hook:{city_hook}"))
    assert set(ids.values()) == {1}
    assert all(c.verified_with == [0] for c in receivers.received(f"hook:{city_hook}"))


async def test_receiver_failing_three_times_then_ok_is_delivered_once_after_four_attempts(notifier, receivers):
    branch = await notifier.branch()
    hook = f"flaky-{uuid.uuid4().hex[:6]}"
    channel = await notifier.channel("webhook", {"url": receivers.hook(hook)}, branch_id=branch)
    receivers.set_hook_secrets(hook, [channel["signing_secret"]])
    receivers.script(f"hook:{hook}", [503, 503, 500])
    event = await notifier.publish(completed(branch))

    (delivery,) = await notifier.until(lambda: _delivered(notifier, branch, {channel["id"]}), "the delivery")
    calls = receivers.received(f"hook:{hook}")
    assert [c.answer for c in calls] == [503, 503, 500, 204]
    assert {c.headers["webhook-id"] for c in calls} == {event.id}  # the receiver's dedupe key never changes
    assert delivery["attempts"] == 4 and delivery["failures"] == 3
    assert [(a["n"], a["outcome"], a["status_code"]) for a in delivery["attempt_log"]] == [
        (1, "failed", 503), (2, "failed", 503), (3, "failed", 500), (4, "delivered", 204)]
    # Growing delays, each counted from the failed attempt's answer (which lies between its start and its
    # finished_at, the moment its outcome was written): so start to start is at least the delay. From
    # finished_at it can be a few ms less (the writing), which failed this check now and then.
    gaps = [datetime.fromisoformat(b["started_at"]) - datetime.fromisoformat(a["started_at"])
            for a, b in zip(delivery["attempt_log"], delivery["attempt_log"][1:])]
    assert [g.total_seconds() >= d * 0.98 for g, d in zip(gaps, (0.2, 0.4, 3.5))] == [True] * 3
    channel_now = (await notifier.api.get(f"/v1/channels/{channel['id']}")).json()
    assert channel_now["status"] == "active" and channel_now["failing_since"] is None


async def test_receiver_down_past_the_schedule_dead_letter_failure_event_and_paused_channel(notifier, receivers):
    branch = await notifier.branch()
    hook = f"down-{uuid.uuid4().hex[:6]}"
    webhook = await notifier.channel("webhook", {"url": receivers.hook(hook)}, branch_id=branch,
                                     event_types=["changai.training.*"])
    receivers.set_hook_secrets(hook, [webhook["signing_secret"]])
    receivers.script(f"hook:{hook}", [503] * 4)
    key = f"wk-{uuid.uuid4().hex}"
    receivers.wecom_robot(key)
    await notifier.channel("wecom", {"key": key}, branch_id=branch, event_types=["changai.notifier.*"])

    await notifier.publish(completed(branch))
    dead = await notifier.until(lambda: _status(notifier, webhook["id"], "dead"), "the dead letter")
    assert dead["attempts"] == 4 and [a["outcome"] for a in dead["attempt_log"]] == ["failed"] * 4

    # The failure event and the dead letter, both through the outbox.
    failed = await read_records(notifier.stack.bootstrap, "notifier.events", lambda rs: any(
        v.get("data", {}).get("delivery_id") == dead["id"] for v in values(rs)))
    (event,) = [v for v in values(failed) if v.get("data", {}).get("delivery_id") == dead["id"]]
    assert event["type"] == "changai.notifier.delivery.failed.v1" and event["data"]["attempts"] == 4
    assert event["data"]["last_error"] == "HTTP 503"
    letters = await read_records(notifier.stack.bootstrap, "notifier.deliveries.dlq", lambda rs: any(
        v.get("delivery_id") == dead["id"] for v in values(rs)))
    assert [v for v in values(letters) if v.get("delivery_id") == dead["id"]][0]["last_status_code"] == 503

    # Failing longer than the pause threshold: paused, and its owner told on its other channel.
    channel = (await notifier.api.get(f"/v1/channels/{webhook['id']}")).json()
    assert channel["status"] == "paused" and "503" in channel["paused_reason"]
    (told,) = await notifier.until(lambda: receivers.received(f"wecom:{key}"), "the paused notice")
    assert "通知渠道已暂停" in told.content and webhook["name"] in told.content and "/resume" in told.content

    # While paused, notices are held, not lost; resuming sends them.
    await notifier.publish(completed(branch, number=4))
    held = await notifier.until(lambda: _status(notifier, webhook["id"], "held"), "the held delivery")
    resumed = await notifier.api.post(f"/v1/channels/{webhook['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active" and resumed.json()["released"] == 1
    await notifier.until(lambda: _status(notifier, webhook["id"], "delivered"), "the held notice after resuming")
    assert receivers.received(f"hook:{hook}")[-1].headers["webhook-id"] == held["event_id"]
    # And the dead one can be sent again on request, logged with who asked.
    again = await notifier.api.post(f"/v1/deliveries/{dead['id']}/resend")
    assert again.status_code == 202
    resent = await notifier.until(lambda: _by_id(notifier, again.json()["delivery_id"], "delivered"), "the resend")
    assert resent["resend_of"] == dead["id"] and resent["requested_by"] == "notifier-tests"
    assert resent["attempt_log"][0]["requested_by"] == "notifier-tests"


async def _status(notifier, channel_id, status):
    for d in await notifier.deliveries(channel_id=channel_id, status=status):
        return d
    return None


async def _by_id(notifier, delivery_id, status):
    d = (await notifier.api.get(f"/v1/deliveries/{delivery_id}")).json()
    return d if d["status"] == status else None


async def test_a_burst_of_100_stays_within_the_robot_budget_and_loses_nothing(notifier, receivers):
    branch = await notifier.branch()
    key = f"burst-{uuid.uuid4().hex}"
    # The fake refuses (45009) more than 20 in any 2.5 s; the worker keeps to 20 per 3 s (less
    # than the 0.5 s margin is network jitter on a loaded machine, not the budget).
    receivers.wecom_robot(key, limit=20, window=2.5)
    channel = await notifier.channel("wecom", {"key": key}, branch_id=branch)
    programmes = [f"批量{i:03d}号项目" for i in range(100)]
    await asyncio.gather(*(notifier.publish(completed(branch, programme=p)) for p in programmes))

    await notifier.until(lambda: _count(notifier, channel["id"], "delivered", 100), "100 delivered", timeout=40)
    calls = receivers.received(f"wecom:{key}")
    assert all(c.answer == 0 for c in calls), Counter(c.answer for c in calls)  # never over budget
    contents = [c.content for c in calls]
    # Each notice exactly once (its summary line; the facts repeat the programme's name).
    assert [sum(c.count(f"{p}第3期已结业") for c in contents) for p in programmes] == [1] * 100
    assert len(calls) < 100 and any(c.startswith("【通知汇总】") for c in contents)  # the rest went in digests
    times = sorted(c.at for c in calls)
    assert all(times[i + 20] - times[i] >= 2.5 for i in range(len(times) - 20))


async def _count(notifier, channel_id, status, n):
    return len(await notifier.deliveries(channel_id=channel_id, status=status)) >= n


async def test_dingtalk_refusals_are_failures_and_rate_limit_answers_wait(notifier, receivers):
    branch = await notifier.branch()
    token = f"dt-{uuid.uuid4().hex}"
    receivers.dingtalk_robot(token, secret="SECright", keyword="产改")
    wrong = await notifier.channel("dingtalk", {"access_token": token, "secret": "SECwrong", "keyword": "产改"},
                                   branch_id=branch)
    await notifier.publish(completed(branch))
    dead = await notifier.until(lambda: _status(notifier, wrong["id"], "dead"), "the refused notice")
    assert dead["attempts"] == 1 and dead["last_errcode"] == 310000  # HTTP 200, but refused: not delivered
    assert (await notifier.api.get(f"/v1/channels/{wrong['id']}")).json()["status"] == "paused"

    branch2 = await notifier.branch()
    token2 = f"dt-{uuid.uuid4().hex}"
    receivers.dingtalk_robot(token2, keyword="产改")
    receivers.script(f"dingtalk:{token2}", [130101])
    ok = await notifier.channel("dingtalk", {"webhook_url": f"{receivers.base}/robot/send?access_token={token2}",
                                             "keyword": "产改"}, branch_id=branch2)
    await notifier.publish(completed(branch2))
    done = await notifier.until(lambda: _status(notifier, ok["id"], "delivered"), "the notice after the block")
    assert [a["outcome"] for a in done["attempt_log"]] == ["throttled", "delivered"], (
        done, [(c.at, c.answer) for c in receivers.received(f"dingtalk:{token2}")])
    assert done["failures"] == 0
    first, second = done["attempt_log"]
    waited = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["finished_at"])
    assert waited.total_seconds() >= 0.9  # the block (1 s here, 10 minutes for real) is waited out


async def test_test_send_secret_rotation_and_quiet_hours(notifier, receivers):
    branch = await notifier.branch()
    key = f"wk-{uuid.uuid4().hex}"
    receivers.wecom_robot(key)
    robot = await notifier.channel("wecom", {"key": key, "format": "text"}, branch_id=branch, locale="en")
    answer = await notifier.api.post(f"/v1/channels/{robot['id']}/test")
    assert answer.status_code == 200 and answer.json()["delivered"] is True, answer.text
    (call,) = receivers.received(f"wecom:{key}")
    assert call.json["msgtype"] == "text" and call.content.startswith("[Test notice]")

    hook = f"rot-{uuid.uuid4().hex[:6]}"
    channel = await notifier.channel("webhook", {"url": receivers.hook(hook)}, branch_id=branch)
    old = channel["signing_secret"]
    rotated = (await notifier.api.post(f"/v1/channels/{channel['id']}/rotate-secret", json={"overlap_s": 3600})).json()
    new = rotated["signing_secret"]
    assert new != old and rotated["signing_secrets_active"] == 2
    receivers.set_hook_secrets(hook, [old, new])
    assert (await notifier.api.post(f"/v1/channels/{channel['id']}/test")).json()["delivered"]
    assert receivers.received(f"hook:{hook}")[-1].verified_with == [0, 1]  # both sign during the overlap
    await notifier.api.post(f"/v1/channels/{channel['id']}/rotate-secret", json={"overlap_s": 0})
    assert (await notifier.api.post(f"/v1/channels/{channel['id']}/test")).json()["delivered"] is False
    assert receivers.received(f"hook:{hook}")[-1].answer == 401  # neither old secret signs any more

    # Quiet hours (Asia/Shanghai): an ordinary notice waits for the morning, a critical one does not.
    now = datetime.now(SHANGHAI)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=1)).strftime("%H:%M")}
    key2 = f"wk-{uuid.uuid4().hex}"
    receivers.wecom_robot(key2)
    night = await notifier.channel("wecom", {"key": key2}, branch_id=branch, quiet_hours=quiet)
    await notifier.publish(completed(branch))
    await notifier.publish(SubsidyRejected(
        claim_id=uuid.uuid4(), session_id=uuid.uuid4(), organiser_id=str(branch), subsidy_category="pre_job",
        region_code="640104", city_code="640100", persons=3, amount_fen=240000, reason="fund_exhausted",
        detail="本年度资金已用完"))
    deferred = await notifier.until(lambda: _status(notifier, night["id"], "deferred"), "the deferred notice")
    assert deferred["event_type"] == "changai.training.session.completed.v1"
    waits_until = datetime.fromisoformat(deferred["next_attempt_at"]).astimezone(SHANGHAI)
    assert waits_until.strftime("%H:%M") == quiet["end"]
    (urgent,) = await notifier.until(lambda: receivers.received(f"wecom:{key2}"), "the critical notice")
    assert "培训补贴未通过" in urgent.content


async def test_secrets_are_encrypted_at_rest_and_never_returned(notifier, receivers):
    branch = await notifier.branch()
    key = f"very-secret-key-{uuid.uuid4().hex}"
    receivers.wecom_robot(key)
    channel = await notifier.channel("wecom", {"key": key}, branch_id=branch)
    assert key not in orjson.dumps(channel).decode() and channel["config"]["key"] == "…" + key[-4:]
    listed = (await notifier.api.get("/v1/channels", params={"branch_id": str(branch)})).text
    assert key not in listed
    rows = await notifier.db.fetch("SELECT secrets::text, config::text FROM channels WHERE id = $1",
                                   uuid.UUID(channel["id"]))
    assert key.encode().hex() not in rows[0][0] and key not in rows[0][1]
    keys = await notifier.db.fetch("SELECT body::text FROM idempotency_keys")
    assert all(key not in (r[0] or "") for r in keys)
