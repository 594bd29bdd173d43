"""Reading what reached a topic, for the integration tests."""
import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_records(bootstrap: str, topic: str, want, timeout: float = 30.0) -> list:
    """Records of ``topic`` from the start until ``want(records)`` is true."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        async with asyncio.timeout(timeout):
            while not want(records):
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


def partitions_of(topic: str) -> list[TopicPartition]:
    """The partitions ``shared.topics`` declares for ``topic``."""
    from shared.topics import TOPICS

    (declared,) = [t for t in TOPICS if t.name == topic]
    return [TopicPartition(topic, p) for p in range(declared.partitions)]


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Each declared partition's end offset now."""
    from shared.kafka import connection

    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets(partitions_of(topic))
    finally:
        await consumer.stop()


async def read_to_end_of(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every record of ``topic`` up to the end offsets seen now (not until an expected count: a record
    published twice is in the answer). The topic's partitions are those ``shared.topics`` declares."""
    from shared.kafka import read_to_end

    return [r async for r in read_to_end(bootstrap, partitions_of(topic), timeout=timeout)]


async def start_at_end(bootstrap: str, group: str, topics) -> None:
    """Commit ``group``'s offsets at the end of each of ``topics`` (their declared partitions) now: a new group
    then starts after what other tests left on the shared topics."""
    from shared.kafka import connection

    tps = [tp for topic in topics for tp in partitions_of(topic)]
    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
