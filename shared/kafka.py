"""aiokafka producer and consumer factories, and dead letters.

Producers are idempotent with ``acks=all``: a retry after a lost acknowledgement
never writes a record twice, and records of one partition keep their order.
"""
from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
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
