"""The certificate consumer: a certificate raises a member's skill level exactly once, even when redelivered."""
import asyncio
import uuid
from datetime import date

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.membership.consumers import CERTIFICATES, apply_certificate
from shared.consumer import wait_assigned
from shared.events import encode, envelope
from shared.events.training import CertificateIssued
from shared.kafka import make_producer
from tests.integration.membership.membership_support import auth, outbox_events, running

pytestmark = pytest.mark.integration
CHANGED = "changai.membership.member.skill_level_changed.v1"


def certificate(member_id: str, level: int) -> CertificateIssued:
    return CertificateIssued(certificate_id=uuid.uuid4(), serial=f"S{uuid.uuid4().hex[:10]}", member_id=member_id,
                             occupation="快递员", level=level, issuer="宁夏职业技能鉴定中心", region_code="640104",
                             city_code="640100", issued_on=date(2021, 8, 1))


async def start_group_at_end(bootstrap: str, group_id: str, topic: str = "training.events") -> None:
    """Commit the topic's end offsets for a new group, so it reads only what this test writes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await consumer._client._wait_on_metadata(topic))]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.commit({tp: offset for tp, offset in ends.items()})
    finally:
        await consumer.stop()


async def test_certificate_raises_level_once_even_when_redelivered(stack, make_database):
    group = f"test-membership-certificates-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(stack.kafka.bootstrap, group)
    async with running(stack, make_database, consume_certificates=True, certificates_group_id=group) as m:
        b = await m.branch("640104")
        member = await m.member(b["id"], skill_level=4)
        higher, lower = certificate(member["id"], 2), certificate(member["id"], 3)
        stranger = certificate(str(uuid.uuid4()), 1)
        e_higher, e_lower, e_stranger = envelope(higher), envelope(lower), envelope(stranger)
        await wait_assigned(m.app.state.certificates)
        producer = make_producer(stack.kafka.bootstrap)
        await producer.start()
        try:
            for event in (e_higher, e_higher, e_lower, e_stranger, e_higher):  # the first one delivered three times
                key, value, headers = encode(event)
                await producer.send_and_wait("training.events", value, key=key, headers=headers)
        finally:
            await producer.stop()
        conn = await asyncpg.connect(m.dsn)
        try:
            async with asyncio.timeout(30):
                while await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", CERTIFICATES) < 3:
                    await asyncio.sleep(0.1)
            claimed = await conn.fetch("SELECT event_id FROM inbox WHERE consumer = $1", CERTIFICATES)
        finally:
            await conn.close()
        assert sorted(str(r["event_id"]) for r in claimed) == sorted([e_higher.id, e_lower.id, e_stranger.id])
        got = (await m.client.get(f"/v1/members/{member['id']}", headers=auth())).json()
        assert (got["skill_level"], got["skill_level_name"]) == (2, "技师")
        changes = [e for e in await outbox_events(m.dsn, CHANGED) if e.subject == member["id"]]
        assert [(e.data["from_level"], e.data["to_level"], e.data["certificate_id"]) for e in changes] == [
            (4, 2, str(higher.certificate_id))]
        assert changes[0].data["branch_id"] == b["id"] and changes[0].data["region_code"] == "640104"
        # The same event applied again by hand, as a crash-and-redeliver would: nothing changes.
        assert await apply_certificate(m.app.state.db, e_higher, higher) == "redelivered"
        assert await apply_certificate(m.app.state.db, envelope(certificate(member["id"], 1)),
                                       certificate(member["id"], 1)) == "raised"
        assert len([e for e in await outbox_events(m.dsn, CHANGED) if e.subject == member["id"]]) == 2
