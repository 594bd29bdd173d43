"""Faust (faust-streaming) apps: the common set-up of the stream processors.

Records are read raw and parsed here as CloudEvents, so a record that cannot be
parsed or validated goes to ``<topic>.dlq`` with the reason instead of killing
the agent; unknown event types (a newer producer) are skipped. Every app serves
``/livez`` and ``/metrics`` on its web port, which Prometheus scrapes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.events import CloudEvent, EventData, InvalidEvent, UnknownEventType, decode, parse_data
from shared.kafka import DEAD_LETTERS, dlq_topic, kafka_security
from shared.settings import Settings
from shared.topics import apps_create_topics, stream_topics, wait_for_topics

log = logging.getLogger(__name__)


def bound_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's consumers wait at most ``max_wait_ms`` for a fetch (Faust hard-codes 1,500 ms).

    aiokafka keeps one fetch in flight per broker and leaves out the partitions whose records are
    still buffered, so under steady load a partition that was just consumed waits for the fetch in
    flight for the others, which the broker holds up to this long when they are quiet. At 200 events/s that
    held every notice ~1.3 s per Kafka hop (20 ms here: 200/s p50 3.0 s → 32 ms). Faust has no setting:
    the consumer it builds gets the value before it starts."""
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = getattr(cls._create_worker_consumer, "__wrapped__", cls._create_worker_consumer)

    def create_worker_consumer(self, transport):
        consumer = original(self, transport)
        # read by AIOKafkaConsumer.start() for its Fetcher (docs/platform.md lists this reach)
        consumer._fetch_max_wait_ms = max_wait_ms  # noqa: SLF001 — aiokafka's value, no Faust setting
        return consumer

    functools.update_wrapper(create_worker_consumer, original, assigned=(), updated=())  # sets __wrapped__ only
    # A deliberate patch of Faust's method (ADR 0003): setattr, as mypy forbids assigning to a method.
    setattr(cls, "_create_worker_consumer", create_worker_consumer)  # noqa: B010 — see above


def create_stream_app(service: str, settings: Settings, **overrides) -> faust.App:
    datadir = Path(settings.data_dir) / service
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    options = dict(
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=kafka_security().faust_credentials(),
        store="memory://",  # tables are rebuilt from their changelog topics on start
        datadir=str(datadir),
        key_serializer="raw",  # record keys are aggregate ids
        value_serializer="json",  # for tables; domain topics are declared raw by each app
        topic_partitions=6,
        topic_replication_factor=settings.stream_replication_factor,
        # Faust creates its own topics (leader, changelogs) only where the applications create topics:
        # in Kubernetes they are KafkaTopics (shared.topics.STREAM_TOPICS).
        topic_allow_declare=apps_create_topics(settings),
        web_enabled=True,
        web_host=settings.http_host,
        web_port=settings.http_port,
        web_in_thread=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        table_standby_replicas=0,
    )
    options.update(overrides)
    bound_fetch_wait(settings.stream_fetch_max_wait_ms)
    app = faust.App(f"changai-{service}", **options)

    @app.page("/livez")
    async def livez(web, request):
        return web.json({"status": "ok", "service": service})

    @app.page("/metrics")
    async def metrics(web, request):
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


async def parse_or_dead_letter(
    app: faust.App, event: faust.EventT, wanted: set[str] | None = None
) -> tuple[CloudEvent, EventData] | None:
    """The CloudEvent and its typed data, or None (dead-lettered, unknown, or not wanted)."""
    message = event.message
    try:
        ce = decode(message.value)
        if wanted is not None and ce.type not in wanted:
            return None
        return ce, parse_data(ce)
    except UnknownEventType:
        return None
    except InvalidEvent as exc:
        raw = message.headers or []  # Faust gives a list of pairs or a mapping
        headers: list[tuple[str, bytes]] = list(raw.items()) if isinstance(raw, Mapping) else list(raw)
        headers += [
            ("changai-dlq-reason", str(exc).encode()[:1000]),
            ("changai-dlq-consumer", app.conf.id.encode()),
            ("changai-dlq-topic", message.topic.encode()),
            ("changai-dlq-partition", str(message.partition).encode()),
            ("changai-dlq-offset", str(message.offset).encode()),
        ]
        await app.producer.send_and_wait(
            dlq_topic(message.topic), message.key, message.value, partition=None, timestamp=None, headers=headers
        )
        DEAD_LETTERS.labels(message.topic).inc()
        log.warning("record sent to dead letters: %s", exc)
        return None


def run_worker(app: faust.App, settings: Settings) -> None:
    from faust.worker import Worker

    from shared import logging as changai_logging

    # Web host and port come from the app's configuration (create_stream_app). Logging: ours (JSON, scrubbed,
    # repeats held back), or Faust would replace it with its own plain-text handler.
    if not apps_create_topics(settings):  # the app's own topics are KafkaTopics here: wait for them
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(
                wait_for_topics(
                    settings.kafka_bootstrap,
                    [t.name for t in stream_topics(app.conf.id, tuple(app.tables))],
                    settings.topic_wait_s,
                )
            )
        finally:
            loop.close()
    name = settings.service if settings.service.endswith("worker") else f"{settings.service}-worker"
    logging_config = changai_logging.dict_config(name, settings.log_level, settings.log_repeat_window_s)
    Worker(app, loglevel=settings.log_level.lower(), logging_config=logging_config).execute_from_commandline()
