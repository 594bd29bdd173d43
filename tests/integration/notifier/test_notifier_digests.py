"""Bulk operations arrive as digests (issue 15): a member import is told to a federation as a few
notices with counts and regions, not one notice per member; a channel that subscribes to the type
itself still gets every row; a training roster upload and the subsidy payments of the sessions it
completed (events carrying the upload's ``batch_id``) are digests too, and a batch of one is the
notice itself. Real Kafka, PostgreSQL, worker process and verifying receivers."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import date

import pytest

from notifier_harness import Notifier, fast_settings
from shared.events.funding import SubsidyPaid
from shared.events.membership import MemberJoined
from shared.events.training import EnrolmentEnrolled

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


DIGEST = "changai.notifier.digest.sent.v1"


async def test_a_roster_upload_and_its_payments_are_digests_and_a_batch_of_one_is_the_notice(digesting, receivers):
    n = digesting
    xingqing, xixia = await n.branch("640104"), await n.branch("640105")
    federation = f"fed-{uuid.uuid4().hex[:6]}"
    await hook(n, receivers, federation, region_code="640100",
               event_types=["changai.training.*", "changai.funding.*"])
    upload, alone = uuid.uuid4(), uuid.uuid4()
    session = uuid.uuid4()

    def enrolled(region: str) -> EnrolmentEnrolled:
        return EnrolmentEnrolled(enrolment_id=uuid.uuid4(), session_id=session, member_id=uuid.uuid4(),
                                 region_code=region, city_code="640100", subsidy_category="pre_job", batch_id=upload)

    def paid(branch: uuid.UUID, region: str, batch: uuid.UUID) -> SubsidyPaid:
        return SubsidyPaid(claim_id=uuid.uuid4(), session_id=uuid.uuid4(), organiser_id=str(branch),
                           subsidy_category="pre_job", region_code=region, city_code="640100", fund_id=uuid.uuid4(),
                           source_kind="special_fund", fiscal_year=2024, disbursement_id=uuid.uuid4(), persons=3,
                           amount_fen=240000, batch_id=batch)

    rows = [enrolled("640104") for _ in range(25)] + [enrolled("640105") for _ in range(15)]
    rows += [paid(xingqing, "640104", upload) for _ in range(3)] + [paid(xixia, "640105", upload) for _ in range(2)]
    for data in rows:
        await n.producer.send(*_record(data))
    await n.producer.flush()
    single = await n.publish(paid(xingqing, "640104", alone))  # a batch of one payment

    def calls():
        return receivers.received(f"hook:{federation}")

    def counted(event_type: str) -> int:
        return sum(c.json["data"]["count"] for c in calls()
                   if c.json["type"] == DIGEST and c.json["data"]["event_type"] == event_type)

    await n.until(lambda: counted("changai.training.enrolment.enrolled.v1") >= 40
                  and counted("changai.funding.subsidy.paid.v1") >= 5
                  and any(c.json["type"] == "changai.funding.subsidy.paid.v1" for c in calls()),
                  "the federation's digests and the single payment", timeout=120)
    got = calls()
    digests = [c.json["data"] for c in got if c.json["type"] == DIGEST]
    assert len(digests) <= 4 and len(got) == len(digests) + 1, [c.json["type"] for c in got]  # a handful
    by_kind = Counter()
    for d in digests:
        assert d["batch_id"] == str(upload)
        by_kind[(d["batch_kind"], d["event_type"])] += d["count"]
    assert by_kind == {("training.batch", "changai.training.enrolment.enrolled.v1"): 40,
                       ("funding.batch", "changai.funding.subsidy.paid.v1"): 5}
    regions = Counter()
    for d in digests:
        if d["event_type"] == "changai.training.enrolment.enrolled.v1":
            regions.update(d["by_region"])
    assert regions == {"640104": 25, "640105": 15}
    (one,) = [c for c in got if c.json["type"] != DIGEST]
    assert one.headers["webhook-id"] == single.id and one.json["data"]["batch_id"] == str(alone)
    assert all(c.verified_with == [0] for c in got) and len({c.headers["webhook-id"] for c in got}) == len(got)


def _record(data):
    from shared.events import encode, envelope

    key, value, headers = encode(envelope(data))
    return data.topic, value, key, None, None, headers
