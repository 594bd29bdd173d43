"""aiokafka producer and consumer factories, the connection's security, and dead letters.

Producers are idempotent with ``acks=all``: a retry after a lost acknowledgement
never writes a record twice, and records of one partition keep their order.

Every Kafka client of the platform (producers, consumers, admin clients, Faust apps)
connects with :func:`connection`: plaintext by default (the local runner, a listener
only the platform's pods can reach), or TLS and/or SASL (SCRAM, PLAIN) from the
``CHANGAI_KAFKA_*`` variables of :class:`KafkaSecurity`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from functools import lru_cache
from typing import Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter
from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter("changai_dead_letters_total", "Records sent to a dead-letter topic", ["topic"])


class KafkaSecurity(BaseSettings):
    """How the clients authenticate to Kafka and encrypt the connection (``CHANGAI_KAFKA_...``)."""

    model_config = SettingsConfigDict(env_prefix="CHANGAI_KAFKA_", extra="ignore")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: str = ""  # the cluster CA (Strimzi: secret <cluster>-cluster-ca-cert, ca.crt); empty: system CAs
    ssl_certfile: str = ""  # client certificate and key, for mutual TLS (Strimzi KafkaUser with tls auth)
    ssl_keyfile: str = ""

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                "CHANGAI_KAFKA_SASL_USERNAME and CHANGAI_KAFKA_SASL_PASSWORD are required with "
                f"CHANGAI_KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("CHANGAI_KAFKA_SSL_CERTFILE and CHANGAI_KAFKA_SSL_KEYFILE go together")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        return create_ssl_context(
            cafile=self.ssl_cafile or None, certfile=self.ssl_certfile or None, keyfile=self.ssl_keyfile or None
        )

    def client_options(self) -> dict:
        """The security keyword arguments of aiokafka's clients."""
        options: dict = {"security_protocol": self.security_protocol}
        if self.security_protocol.endswith("SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return options

    def faust_credentials(self):
        """Faust's ``broker_credentials`` for the same connection (None: plaintext)."""
        import faust

        if self.security_protocol == "PLAINTEXT":
            return None
        if self.security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        return faust.SSLCredentials(self.ssl_context())


@lru_cache(maxsize=1)
def kafka_security() -> KafkaSecurity:
    return KafkaSecurity()


def connection(bootstrap: str) -> dict:
    """``bootstrap_servers`` and the security options, for any aiokafka client: ``AIOKafkaAdminClient(
    **connection(bootstrap), ...)``."""
    return {"bootstrap_servers": bootstrap, **kafka_security().client_options()}


def make_producer(bootstrap: str, **overrides) -> AIOKafkaProducer:
    options = dict(
        **connection(bootstrap),
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
        **connection(bootstrap),
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
    headers = [
        *(record.headers or []),
        ("changai-dlq-reason", reason.encode()[:1000]),
        ("changai-dlq-consumer", consumer.encode()),
        ("changai-dlq-topic", record.topic.encode()),
        ("changai-dlq-partition", str(record.partition).encode()),
        ("changai-dlq-offset", str(record.offset).encode()),
    ]
    await producer.send_and_wait(dlq_topic(record.topic), record.value, key=record.key, headers=headers)
    DEAD_LETTERS.labels(record.topic).inc()
    log.warning(
        "record sent to dead letters",
        extra={"topic": record.topic, "partition": record.partition, "offset": record.offset, "reason": reason},
    )


async def read_to_end(bootstrap: str, partitions: list[TopicPartition], *, timeout: float = 60):
    """Yield every record of ``partitions`` from their first offset up to the end offsets seen at the start.

    Positions are set with a plain ``seek`` to the beginning offsets, never ``seek_to_beginning``: in
    aiokafka a ``seek_to_*`` issued while the assignment's own reset (``auto_offset_reset``) is in flight
    can be overwritten by that reset's answer, leaving the position at the end and the caller waiting for
    records that never come (seen in about 4 of 5 tries here). Raises ``TimeoutError`` after ``timeout``."""
    consumer = AIOKafkaConsumer(
        **connection(bootstrap), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
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
