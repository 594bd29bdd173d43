"""The Kafka intake topic: an HR system producing CloudEvents to intake.hr itself gets the same checks, the
same dedupe and the same answer; a record that fails goes to intake.hr.dlq with the reason in headers."""
from __future__ import annotations

import uuid

import orjson
from aiokafka import TopicPartition

from shared.kafka import make_producer, read_to_end
from tests.integration.intake.intake_support import HIRED, decided, hired, structured
from tests.integration.intake.test_intake_http import register
from tests.integration.membership.membership_support import unique_id_number


async def test_records_on_intake_hr_are_applied_and_bad_ones_dead_lettered(stack, intake, membership):
    _, client, _ = intake
    branch = await membership.branch("640104")
    source, token = await register(client)
    good = structured(source, HIRED, hired(branch["credit_code"], unique_id_number()))
    marker = uuid.uuid4().hex
    producer = make_producer(stack.bootstrap)
    await producer.start()
    try:
        headers = [("content-type", b"application/cloudevents+json")]
        await producer.send_and_wait("intake.hr", orjson.dumps(good), key=b"k", headers=headers)
        await producer.send_and_wait("intake.hr", orjson.dumps(good), key=b"k", headers=headers)  # a redelivery
        await producer.send_and_wait("intake.hr", f"not json {marker}".encode(), key=marker.encode(), headers=headers)
    finally:
        await producer.stop()
    answer = await decided(client, good, token, timeout=90, may_be_unseen=True)
    assert answer["status"] == "applied", answer
    reasons = []
    async for record in read_to_end(stack.bootstrap, [TopicPartition("intake.hr.dlq", 0)], timeout=30):
        if record.key == marker.encode():
            reasons.append(dict(record.headers)["changai-dlq-reason"].decode())
    assert reasons and "not-a-cloudevent" in reasons[0]
