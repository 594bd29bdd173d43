"""aiokafka producer and consumer factories, and dead letters.

Producers are idempotent with ``acks=all``: a retry after a lost acknowledgement
never writes a record twice, and records of one partition keep their order.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter("changai_dead_letters_total", "Records sent to a dead-letter topic", ["topic"])


def make_producer(bootstrap: str, **overrides) -> AIOKafkaProducer:
    options = dict(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,  # implies acks=all
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        compression_type=None,
        request_timeout_ms=15000,
        retry_backoff_ms=200,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(bootstrap: str, group_id: str, *topics: str, **overrides) -> AIOKafkaConsumer:
    options = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,  # offsets are committed after the effect is stored
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=1000,
        fetch_max_wait_ms=100,
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
    )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


async def dead_letter(producer: AIOKafkaProducer, record: ConsumerRecord, reason: str, consumer: str) -> None:
    """Park a record that cannot be parsed or validated, with why, so its partition moves on."""
    headers = list(record.headers or []) + [
        ("changai-dlq-reason", reason.encode()[:1000]),
        ("changai-dlq-consumer", consumer.encode()),
        ("changai-dlq-topic", record.topic.encode()),
        ("changai-dlq-partition", str(record.partition).encode()),
        ("changai-dlq-offset", str(record.offset).encode()),
    ]
    await producer.send_and_wait(dlq_topic(record.topic), record.value, key=record.key, headers=headers)
    DEAD_LETTERS.labels(record.topic).inc()
    log.warning("record sent to dead letters", extra={"topic": record.topic, "partition": record.partition,
                                                      "offset": record.offset, "reason": reason})


async def read_to_end(bootstrap: str, partitions: list[TopicPartition], *, timeout: float = 60):
    """Yield every record of ``partitions`` from their first offset up to the end offsets seen at the start.

    Positions are set with a plain ``seek`` to the beginning offsets, never ``seek_to_beginning``: in
    aiokafka a ``seek_to_*`` issued while the assignment's own reset (``auto_offset_reset``) is in flight
    can be overwritten by that reset's answer, leaving the position at the end and the caller waiting for
    records that never come (seen in about 4 of 5 tries here). Raises ``TimeoutError`` after ``timeout``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        pending = {tp for tp in partitions if ends[tp] > starts[tp]}
        deadline = asyncio.get_running_loop().time() + timeout
        while pending:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(pending)} partition(s) not read to their end in {timeout:.0f} s")
            for tp, records in (await consumer.getmany(*pending, timeout_ms=500)).items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
