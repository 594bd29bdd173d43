"""Reading what reached a topic, for the integration tests."""
import asyncio

from aiokafka import AIOKafkaConsumer


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
