"""What the intake reads from Kafka.

* The owning services' outcomes (``changai.<service>.command.applied.v1`` / ``.rejected.v1`` on
  ``membership.events``, ``training.events`` and ``funding.events``): each becomes its event's status
  (accepted → applied / rejected), a batch per partition in one transaction; a redelivered outcome finds
  the event decided and changes nothing.
* The Kafka intake topics (``intake.<kind>``): upstream systems that produce to Kafka themselves. Each
  record is checked exactly as over HTTP (``usecases.accept``) against the source its CloudEvent names
  (Kafka ACLs, per source user, are what stop one system writing as another); a record refused goes to
  ``intake.<kind>.dlq`` with the problem in its headers, and the offsets move on only after the batch's
  transaction has committed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from services.intake import domain, metrics, store, usecases, wire
from services.intake.settings import IntakeSettings
from shared.clock import now_cn
from shared.consumer import EventConsumer, KafkaLoop
from shared.errors import DomainError
from shared.events import CloudEvent, EventData
from shared.events.intake import OUTCOME_TOPICS, OUTCOMES, AppliedOutcome, CommandKeys, RejectedOutcome
from shared.kafka import dead_letter, make_consumer, make_producer

log = logging.getLogger(__name__)


def outcome_consumer(pool: asyncpg.Pool, bootstrap: str, group_id: str) -> EventConsumer:
    async def handle(items: list[tuple[CloudEvent, EventData]]) -> None:
        outcomes = [data for _, data in items if isinstance(data, AppliedOutcome | RejectedOutcome)]
        async with pool.acquire() as conn, conn.transaction():
            decided = await usecases.record_outcomes(conn, outcomes, now_cn())
        for row in decided:
            t = metrics.type_label(row["type"])
            if row["status"] == "applied":
                metrics.APPLIED.labels(row["source"], t).inc()
            else:
                reason = orjson.loads(row["problem"])["type"].rsplit("/", 1)[-1]
                metrics.REJECTED.labels(row["source"], t, reason).inc()
            lag = store.lag_seconds(row["event_time"], row["decided_at"])
            if lag is not None:
                metrics.LAG.labels(row["source"], t).observe(max(lag, 0.0))

    return EventConsumer(
        bootstrap,
        group_id,
        list(OUTCOME_TOPICS),
        batch_handler=handle,
        event_types={cls.event_type for cls in OUTCOMES},
    )


class KafkaIntake(KafkaLoop):
    """The consumer group of the Kafka intake topics (started, stopped and restarted by ``KafkaLoop``)."""

    def __init__(self, pool: asyncpg.Pool, settings: IntakeSettings, keys: CommandKeys):
        super().__init__(settings.intake_kafka_group_id)
        self.pool, self.settings, self.keys = pool, settings, keys
        self.topics = [t.strip() for t in settings.intake_kafka_topics.split(",") if t.strip()]

    async def _run(self) -> None:
        self.producer = producer = make_producer(self.settings.kafka_bootstrap)
        await producer.start()
        self.consumer = consumer = make_consumer(
            self.settings.kafka_bootstrap, self.settings.intake_kafka_group_id, *self.topics
        )
        await consumer.start()
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                await self.handle(records, producer)
                await consumer.commit({tp: records[-1].offset + 1})

    async def handle(self, records, producer: AIOKafkaProducer) -> None:
        items: list[domain.Incoming | DomainError] = []
        for record in records:
            try:
                if record.value is not None and len(record.value) > self.settings.intake_max_event_bytes:
                    raise wire.event_too_large(self.settings.intake_max_event_bytes)
                items.append(wire.parse_kafka(record.headers, record.key, record.value))
            except DomainError as exc:
                items.append(exc)
        uris = {i.source for i in items if isinstance(i, domain.Incoming)}
        async with self.pool.acquire() as conn, conn.transaction():
            sources = {r["source"]: store.source_of(r) for r in await store.sources_by_uri(conn, list(uris))}

            def source_for(event: domain.Incoming) -> domain.Source:
                found = sources.get(event.source)
                if found is None:
                    raise DomainError(
                        "no source is registered under this URI",
                        kind="unregistered-source",
                        title="The source is not registered",
                    )
                return found

            accepted = await usecases.accept(
                conn,
                items,
                source_for,
                channel="kafka",
                now=now_cn(),
                max_future=timedelta(seconds=self.settings.intake_max_future_s),
                keys=self.keys,
            )
        for record, result in zip(records, accepted.results, strict=True):
            label = result.source if result.source is not None and result.source in sources else "unregistered"
            metrics.count(label, "kafka", [result])
            if result.outcome == "rejected":
                await dead_letter(
                    producer, record, orjson.dumps(result.problem).decode(), self.settings.intake_kafka_group_id
                )
