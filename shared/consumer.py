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
from datetime import date
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from shared import inbox, outbox
from shared.clock import today_cn
from shared.errors import DomainError
from shared.events import CloudEvent, EventData, InvalidEvent, UnknownEventType, decode, parse_data
from shared.events.envelope import trace_id_of
from shared.events.intake import COMMANDS, rejection
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


__all__ = [
    "BatchHandler",
    "CommandConsumer",
    "EventConsumer",
    "Handler",
    "KafkaLoop",
    "TopicPartition",
    "apply_each_once",
    "apply_one",
    "command_consumer",
    "commands_part",
    "new_commands",
    "refused",
    "wait_assigned",
]


class CommandConsumer(EventConsumer):
    """``EventConsumer`` reading the intake's command types (``shared.events.intake.COMMANDS``) instead of the
    domain catalogue: what membership, training and funding read from their ``<service>.commands`` topic.
    ``commands``: the types this service applies (another type on its topic is skipped like an unknown one)."""

    def __init__(self, *args, commands: tuple[type[EventData], ...] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands = commands

    async def _parse(self, record):
        try:
            event = decode(record.value)
            cls = COMMANDS.get(event.type)
            if cls is None or (self.commands is not None and cls not in self.commands):
                return None  # a command type of a newer intake, or not this service's
            return event, cls.model_validate(event.data)
        except InvalidEvent as exc:
            await dead_letter(self.producer, record, str(exc), self.group_id)
        except ValidationError as exc:
            await dead_letter(
                self.producer, record, f"command does not match its type: {exc.errors()[0]['msg']}", self.group_id
            )
        return None


# -- applying the intake's commands (membership, training, funding) -------------------------------------
# A refusal of a command: what the owning service's API would have answered with a 4xx (a domain rule, or
# data the use case checks again). Anything else (the database down) is not an answer: the batch is retried.
REFUSALS: tuple[type[Exception], ...] = (DomainError, ValidationError)

Applied = TypeVar("Applied", bound=EventData)
Rejected = TypeVar("Rejected", bound=EventData)
Command = TypeVar("Command", bound=EventData)
# A service's use of a partition's batch of commands, inside the batch's transaction: (conn, items, today).
ApplyCommands = Callable[[asyncpg.Connection, list[tuple[CloudEvent, Any]], date], Awaitable[Any]]


def refused(rejected: type[Rejected], event: CloudEvent, cmd: Any, exc: Exception) -> Rejected:
    """The rejected outcome of ``cmd``: its common fields and the RFC 9457 problem (``intake.rejection``)."""
    return rejected(**cmd.outcome_fields(event.id), **rejection(exc))


async def new_commands(
    conn: asyncpg.Connection, consumer: str, items: list[tuple[CloudEvent, Command]]
) -> list[tuple[CloudEvent, Command]]:
    """The commands of a batch not applied before, in order: one inbox claim for the batch (in the caller's
    transaction, so the claim commits with the effect), a command id twice in the batch once."""
    claimed = await inbox.claim_many(conn, consumer, [event.id for event, _ in items])
    fresh = []
    for event, cmd in items:
        if event.id in claimed:
            claimed.discard(event.id)
            fresh.append((event, cmd))
    return fresh


async def apply_one(
    conn: asyncpg.Connection,
    event: CloudEvent,
    cmd: Any,
    apply: Callable[[asyncpg.Connection, CloudEvent, Any], Awaitable[Applied]],
    rejected: type[Rejected],
) -> Applied | Rejected:
    """``apply``'s applied outcome, or the rejected one for a refusal; a savepoint, so a refusal undoes this
    command only."""
    try:
        async with conn.transaction():
            return await apply(conn, event, cmd)
    except REFUSALS as exc:
        return refused(rejected, event, cmd, exc)


async def apply_each_once(
    conn: asyncpg.Connection,
    consumer: str,
    items: list[tuple[CloudEvent, Any]],
    apply: Callable[[asyncpg.Connection, CloudEvent, Any], Awaitable[Applied]],
    rejected: type[Rejected],
) -> list[Applied | Rejected]:
    """Inside the caller's transaction (a partition's batch): each command not applied before, in order, each
    in its savepoint (``apply_one``); every outcome goes to the outbox with the batch. Returns the outcomes."""
    outcomes = [
        await apply_one(conn, event, cmd, apply, rejected) for event, cmd in await new_commands(conn, consumer, items)
    ]
    await outbox.emit(conn, *outcomes)
    return outcomes


def command_consumer(
    pool: asyncpg.Pool,
    bootstrap: str,
    group_id: str,
    topic: str,
    commands: tuple[type[EventData], ...],
    apply_commands: ApplyCommands,
) -> CommandConsumer:
    """The consumer of a service's command topic: a partition's batch in one transaction, given to
    ``apply_commands`` with today's date (offsets committed after it, so a crash means redelivery)."""

    async def handle(items: list[tuple[CloudEvent, EventData]]) -> None:
        if not items:
            return
        async with pool.acquire() as conn, conn.transaction():
            await apply_commands(conn, list(items), today_cn())

    return CommandConsumer(bootstrap, group_id, [topic], batch_handler=handle, commands=commands)


def commands_part(
    topic: str,
    group_id: str,
    commands: tuple[type[EventData], ...],
    apply_commands: Callable[[Any], ApplyCommands],
):
    """A ``create_app`` part: the command consumer, started with the API and stopped with it
    (``app.state.commands``). ``apply_commands(app)`` gives the service's batch apply (it may need the app's
    state, membership's vault)."""

    async def part(app) -> Callable[[], Awaitable[None]]:
        consumer = command_consumer(
            app.state.db, app.state.settings.kafka_bootstrap, group_id, topic, commands, apply_commands(app)
        )
        consumer.start()
        app.state.commands = consumer
        return consumer.stop

    return part
