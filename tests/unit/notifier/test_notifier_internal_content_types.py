"""The notifier's internal topics do not claim to be CloudEvents (issue 15 item 4): their records,
written through the outbox or sent by the worker, carry their own content type."""
from __future__ import annotations

import asyncio

from services.notifier import topics
from shared import outbox
from shared.events import CONTENT_TYPE


class _Batch:
    def __init__(self, sent: list):
        self.sent = sent

    def append(self, *, timestamp, key, value, headers):
        self.sent.append(dict(headers))
        return True


class _Producer:
    def __init__(self):
        self.sent: list[dict] = []

    async def partitions_for(self, topic):
        return [0]

    def create_batch(self):
        return _Batch(self.sent)

    async def send_batch(self, batch, topic, partition):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_every_internal_topic_has_its_own_content_type():
    for topic in topics.INTERNAL:
        assert dict(outbox.content_type_headers(topic))["content-type"].decode().startswith(
            "application/vnd.changai.notifier."), topic
    assert dict(outbox.content_type_headers("notifier.events"))["content-type"].decode() == CONTENT_TYPE


def test_the_relay_labels_each_record_by_its_topic():
    rows = [{"topic": t, "key": b"k", "value": b"{}"} for t in (topics.DELIVER, topics.DEAD, "notifier.events")]
    producer = _Producer()
    relay = outbox.OutboxRelay.__new__(outbox.OutboxRelay)  # _send needs no connection
    asyncio.run(relay._send(producer, rows))
    assert [h["content-type"].decode() for h in producer.sent] == [
        topics.DELIVERY_CONTENT_TYPE, topics.DEAD_LETTER_CONTENT_TYPE, CONTENT_TYPE]


def test_the_worker_labels_what_it_sends_on_the_deliver_topic():
    assert dict(topics.DELIVERY_HEADERS)["content-type"].decode() == topics.DELIVERY_CONTENT_TYPE
