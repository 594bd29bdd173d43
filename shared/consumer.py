"""A consume loop for services that apply others' events to their own database.

Records are parsed as CloudEvents and validated against the registry. A record
that cannot be parsed or validated goes to ``<topic>.dlq`` with the reason and
never blocks its partition; an event type this build does not know is skipped
(a newer producer may add types). The handler runs the effect, normally in one
transaction with ``inbox.claim``; offsets are committed only after it returns, so
a crash means redelivery, and the inbox makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter, Gauge

from shared.events import CloudEvent, EventData, InvalidEvent, UnknownEventType, decode, parse_data
from shared.events.envelope import trace_id_of
from shared.kafka import dead_letter, make_consumer, make_producer
from shared.logging import trace_id_var

log = logging.getLogger(__name__)

Handler = Callable[[CloudEvent, EventData], Awaitable[None]]
# Applies a partition's batch in one go (one transaction), for consumers that must keep up with bulk imports.
BatchHandler = Callable[[list[tuple[CloudEvent, EventData]]], Awaitable[None]]

CONSUMED = Counter("changai_events_consumed_total", "Events applied by a consumer", ["consumer", "topic"])
LAG = Gauge("changai_consumer_lag", "Records behind the end of the partition", ["consumer", "topic", "partition"])
LAST_EVENT = Gauge(
    "changai_consumer_last_event_timestamp_seconds", "Time of the last event applied", ["consumer", "topic"]
)
_LAG_HELD: dict[str, set[tuple[str, str]]] = {}  # consumer -> (topic, partition) label sets this process reports


def report_lag(consumer: str, held, lags: dict[tuple[str, int], int]) -> None:
    """Set the lag of the partitions this process holds (``held``; ``lags`` those whose end is known) and
    remove the series of the ones it gave up in a rebalance: another replica reports them now, and a frozen
    value left here would be summed with its (and keep the lag alerts firing)."""
    now = {(topic, str(partition)) for topic, partition in held}
    for topic, partition_label in _LAG_HELD.get(consumer, set()) - now:
        with contextlib.suppress(KeyError):  # already gone
            LAG.remove(consumer, topic, partition_label)
    for (topic, partition), lag in lags.items():
        LAG.labels(consumer, topic, str(partition)).set(max(lag, 0))
    _LAG_HELD[consumer] = now


def drop_lag(consumer: str) -> None:
    """This process holds no partition of ``consumer`` any more (revoked, stopped, restarting)."""
    report_lag(consumer, (), {})


class KafkaLoop:
    """A consumer group's member as a background task: ``start`` runs ``_run`` (which makes ``self.consumer``
    and ``self.producer``); when it fails, its clients are closed and it runs again after ``retry_backoff``
    seconds, until ``stop``."""

    def __init__(self, name: str, retry_backoff: float = 1.0):
        self.name = name
        self.retry_backoff = retry_backoff
        self._task: asyncio.Task | None = None
        self.consumer: AIOKafkaConsumer | None = None  # made by each run, None between runs
        self.producer: AIOKafkaProducer | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        for client in (self.consumer, self.producer):
            if client is not None:
                await client.stop()
        self.consumer = self.producer = None

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer stopped; restarting", extra={"consumer": self.name})
                await self._close()
                await asyncio.sleep(self.retry_backoff)

    async def _run(self) -> None:
        raise NotImplementedError


class EventConsumer(KafkaLoop):
    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: list[str],
        handler: Handler | None = None,
        *,
        batch_handler: BatchHandler | None = None,
        event_types: set[str] | None = None,
        retry_backoff: float = 1.0,
    ):
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        super().__init__(group_id, retry_backoff)
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = topics
        self.handler = handler
        self.batch_handler = batch_handler
        self.event_types = event_types

    async def _close(self) -> None:
        drop_lag(self.group_id)  # stopped or restarting: it holds no partition now
        await super()._close()

    async def _run(self) -> None:
        self.producer = producer = make_producer(self.bootstrap)
        await producer.start()
        self.consumer = consumer = make_consumer(self.bootstrap, self.group_id, *self.topics)
        await consumer.start()
        last_lag = 0.0
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                if self.batch_handler is not None:
                    await self._handle_batch(records)
                else:
                    for record in records:
                        await self._handle(record)
                await consumer.commit({tp: records[-1].offset + 1})
            if time.monotonic() - last_lag > 2:
                last_lag = time.monotonic()
                await self._report_lag(consumer)

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        held = consumer.assignment()
        lags = {}
        for tp in held:
            end = consumer.highwater(tp)
            if end is None:
                continue
            lags[(tp.topic, tp.partition)] = end - await consumer.position(tp)
        report_lag(self.group_id, [(tp.topic, tp.partition) for tp in held], lags)

    async def _parse(self, record) -> tuple[CloudEvent, EventData] | None:
        """The event and its data, or None: dead-lettered, unknown, or not wanted."""
        try:
            event = decode(record.value)
            if self.event_types is not None and event.type not in self.event_types:
                return None
            return event, parse_data(event)
        except UnknownEventType:
            return None
        except InvalidEvent as exc:
            await dead_letter(self.producer, record, str(exc), self.group_id)
            return None

    async def _retrying(self, call, what: dict) -> None:
        # A failing handler (database down) is retried in place: skipping would lose events.
        while True:
            try:
                await call()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler failed; retrying", extra={"consumer": self.group_id, **what})
                await asyncio.sleep(self.retry_backoff)

    async def _handle_batch(self, records) -> None:
        batch_handler = self.batch_handler
        assert batch_handler is not None, "_run calls _handle_batch only for a batch handler"
        items = [parsed for record in records if (parsed := await self._parse(record)) is not None]
        if items:
            await self._retrying(lambda: batch_handler(items), {"first_event_id": items[0][0].id, "events": len(items)})
        CONSUMED.labels(self.group_id, records[-1].topic).inc(len(items))
        LAST_EVENT.labels(self.group_id, records[-1].topic).set(records[-1].timestamp / 1000)

    async def _handle(self, record) -> None:
        parsed = await self._parse(record)
        if parsed is None:
            return
        event, data = parsed
        handler = self.handler
        assert handler is not None, "__init__ requires a handler when there is no batch handler"
        token = trace_id_var.set(trace_id_of(event.traceparent))
        try:
            await self._retrying(lambda: handler(event, data), {"event_id": event.id, "event_type": event.type})
        finally:
            trace_id_var.reset(token)
        CONSUMED.labels(self.group_id, record.topic).inc()
        LAST_EVENT.labels(self.group_id, record.topic).set(record.timestamp / 1000)


async def wait_assigned(consumer: EventConsumer, timeout: float = 30.0) -> None:
    """Until the group has given this consumer its partitions (tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consumer.consumer is not None and consumer.consumer.assignment():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"consumer {consumer.group_id} got no partitions")


__all__ = ["BatchHandler", "EventConsumer", "Handler", "KafkaLoop", "TopicPartition", "wait_assigned"]


class CommandConsumer(EventConsumer):
    """``EventConsumer`` reading the intake's command types (``shared.events.intake.COMMANDS``) instead of the
    domain catalogue: what membership, training and funding read from their ``<service>.commands`` topic."""

    async def _parse(self, record):
        from pydantic import ValidationError

        from shared.events.intake import COMMANDS

        try:
            event = decode(record.value)
            cls = COMMANDS.get(event.type)
            if cls is None:
                return None  # a command type of a newer intake: not this build's
            return event, cls.model_validate(event.data)
        except InvalidEvent as exc:
            await dead_letter(self.producer, record, str(exc), self.group_id)
        except ValidationError as exc:
            await dead_letter(
                self.producer, record, f"command does not match its type: {exc.errors()[0]['msg']}", self.group_id
            )
        return None
