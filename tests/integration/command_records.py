"""Sending one intake command record to its service's command topic more than once (integration tests).

The intake dedupes an upstream event before it writes a command, so a service's command inbox only meets a
repeat when Kafka redelivers (a crash before the offset commit). These helpers produce that repeat directly:
the same record (same id, key, value) on ``<service>.commands``, once, then twice more back to back, each
time waiting until the service's consumer group has committed past it (so the second copy comes in a later
batch than the first, and the third usually in the same batch as the second)."""
from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import CloudEvent, encode
from shared.kafka import connection, make_producer
from tests.integration.kafka_records import start_at_end as at_end


async def start_at_end(bootstrap: str, group: str, topic: str) -> None:
    """``group`` starts after what other tests left on the shared command ``topic``."""
    await at_end(bootstrap, group, [topic])


async def committed_past(bootstrap: str, group: str, tp: TopicPartition, offset: int, timeout: float = 60) -> None:
    """Until ``group`` has committed an offset beyond ``offset`` on ``tp`` (it applied that record)."""
    admin = AIOKafkaAdminClient(**connection(bootstrap))
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            committed = (await admin.list_consumer_group_offsets(group, partitions=[tp])).get(tp)
            if committed is not None and committed.offset > offset:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} did not commit past {tp.topic}[{tp.partition}]@{offset} in {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def send_three_times(bootstrap: str, group: str, topic: str, event: CloudEvent) -> None:
    """The same command record on ``topic``: once, then twice back to back; returns when ``group`` has
    applied all three."""
    key, value, headers = encode(event)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        first = await producer.send_and_wait(topic, value, key=key, headers=headers)
        tp = TopicPartition(topic, first.partition)
        await committed_past(bootstrap, group, tp, first.offset)
        await producer.send(topic, value, key=key, headers=headers)
        last = await producer.send_and_wait(topic, value, key=key, headers=headers)
        await committed_past(bootstrap, group, tp, last.offset)
    finally:
        await producer.stop()
