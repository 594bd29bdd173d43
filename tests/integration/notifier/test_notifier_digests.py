"""Bulk operations arrive as digests (issue 15): a member import is told to a federation as a few
notices with counts and regions, not one notice per member; a channel that subscribes to the type
itself still gets every row. Real Kafka, PostgreSQL, worker process and verifying receivers."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import date

import pytest

from notifier_harness import Notifier, fast_settings
from shared.events.membership import MemberJoined

pytestmark = pytest.mark.integration

JOINED = "changai.membership.member.joined.v1"


@pytest.fixture(scope="module")
async def digesting(stack, make_database, receivers, mailbox):
    dsn = await make_database("notifier")
    env = {**fast_settings(receivers.base, mailbox.port), "CHANGAI_NOTIFIER_DIGEST_QUIET_S": "1.5",
           "CHANGAI_NOTIFIER_DIGEST_MAX_S": "60",
           "CHANGAI_NOTIFIER_IMPORT_REPORT_URL": "https://changai.test/v1/imports/{id}"}
    n = await Notifier(stack, dsn, env).start()
    yield n
    await n.stop()


def joined(branch_id: uuid.UUID, region: str, import_id: uuid.UUID | None) -> MemberJoined:
    return MemberJoined(member_id=uuid.uuid4(), branch_id=branch_id, region_code=region,
                        city_code=region[:4] + "00", employment_form="courier", birth_year=1990, sex="female",
                        joined_on=date(2024, 5, 1), import_id=import_id)


async def hook(n: Notifier, receivers, name: str, **owner_and_more) -> dict:
    channel = await n.channel("webhook", {"url": receivers.hook(name)}, **owner_and_more)
    receivers.set_hook_secrets(name, [channel["signing_secret"]])
    return channel


async def test_an_import_is_a_digest_for_the_federation_and_every_row_for_who_asks(digesting, receivers):
    n = digesting
    xingqing, xixia = await n.branch("640104"), await n.branch("640105")
    federation = f"fed-{uuid.uuid4().hex[:6]}"
    await hook(n, receivers, federation, region_code="640100", event_types=["changai.membership.*"])
    every = f"each-{uuid.uuid4().hex[:6]}"
    await hook(n, receivers, every, branch_id=xingqing, event_types=[JOINED])  # asks for each member
    key = f"wk-{uuid.uuid4().hex}"
    receivers.wecom_robot(key)
    await n.channel("wecom", {"key": key}, region_code="640100", event_types=["*"])

    import_id = uuid.uuid4()
    rows = [joined(xingqing, "640104", import_id) for _ in range(300)] + \
           [joined(xixia, "640105", import_id) for _ in range(200)]
    for data in rows:
        await n.producer.send(*_record(data))
    await n.producer.flush()

    def digests(target):
        return [c for c in receivers.received(target)
                if (c.json or {}).get("type") == "changai.notifier.digest.sent.v1"]

    def counted():
        return sum(c.json["data"]["count"] for c in digests(f"hook:{federation}"))

    await n.until(lambda: counted() >= 500, "the federation's digests to count all 500", timeout=120)
    fed = receivers.received(f"hook:{federation}")
    assert len(fed) == len(digests(f"hook:{federation}")) <= 5  # a handful, not 500 notices
    total = Counter()
    for call in fed:
        data = call.json["data"]
        assert data["batch_kind"] == "membership.import" and data["batch_id"] == str(import_id)
        assert data["event_type"] == JOINED and data["report_url"] == f"https://changai.test/v1/imports/{import_id}"
        total.update(data["by_region"])
        assert call.verified_with == [0]
    assert total == {"640104": 300, "640105": 200}
    assert fed[-1].json["data"]["final"] is True and sum(total.values()) == 500
    assert len({c.headers["webhook-id"] for c in fed}) == len(fed)

    # The robot of the federation gets the digest as text, with the counts and regions.
    (robot,) = await n.until(lambda: receivers.received(f"wecom:{key}") or None, "the robot's digest")
    assert "批量通知汇总" in robot.content and "银川市兴庆区" in robot.content

    # The branch channel that subscribed to member.joined itself gets each of its 300 members.
    await n.until(lambda: len(receivers.received(f"hook:{every}")) >= 300, "every member, for who asked", timeout=120)
    each = receivers.received(f"hook:{every}")
    assert len(each) == 300 and {c.json["type"] for c in each} == {JOINED}
    assert set(Counter(c.headers["webhook-id"] for c in each).values()) == {1}


async def test_a_member_joining_on_their_own_is_one_notice(digesting, receivers):
    n = digesting
    branch = await n.branch("640104")
    name = f"one-{uuid.uuid4().hex[:6]}"
    await hook(n, receivers, name, region_code="640100", event_types=["changai.membership.*"])
    event = await n.publish(joined(branch, "640104", None))
    (call,) = await n.until(lambda: receivers.received(f"hook:{name}"), "the member's notice", timeout=90)
    assert call.json["type"] == JOINED and call.headers["webhook-id"] == event.id


def _record(data):
    from shared.events import encode, envelope

    key, value, headers = encode(envelope(data))
    return data.topic, value, key, None, None, headers
