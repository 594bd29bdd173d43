"""``shared.kafka.read_to_end`` on the real Kafka: every record, every time.

The projection reads its dead-letter topics this way at start. With ``seek_to_beginning`` it hung in
about 4 of 5 tries (aiokafka's own ``latest`` reset, still in flight, overwrote the seek), and a
restarted projection never became ready; repeating the read is what catches that race."""
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import make_producer, read_to_end

pytestmark = pytest.mark.integration


async def create_topics(bootstrap: str, *parts: str) -> list[str]:
    names = [f"rte-{uuid.uuid4().hex[:8]}.{p}.dlq" for p in parts]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()
    return names


async def test_reads_every_record_from_the_start_every_time(stack):
    names = await create_topics(stack.bootstrap, "empty", "one", "three")
    producer = make_producer(stack.bootstrap)
    await producer.start()
    try:
        for name, values in zip(names[1:], ([b"a"], [b"b", b"c", b"d"])):
            for v in values:
                await producer.send_and_wait(name, v)
    finally:
        await producer.stop()

    tps = [TopicPartition(n, 0) for n in names]
    for attempt in range(15):
        got = [(r.topic, r.value) async for r in read_to_end(stack.bootstrap, tps, timeout=15)]
        assert sorted(got) == sorted([(names[1], b"a"), (names[2], b"b"), (names[2], b"c"), (names[2], b"d")]), attempt


async def test_records_written_after_the_start_are_not_waited_for(stack):
    [name] = await create_topics(stack.bootstrap, "late")
    producer = make_producer(stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(name, b"early")
        seen = []
        async for r in read_to_end(stack.bootstrap, [TopicPartition(name, 0)], timeout=15):
            seen.append(r.value)
            await producer.send_and_wait(name, b"late")  # beyond the end offset read at the start
        assert seen == [b"early"]
    finally:
        await producer.stop()
