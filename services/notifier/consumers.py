"""The notifier worker: faust-streaming agents route → render → deliver.

    domain topics ──route, render──▶ notifier.deliver ──deliver──▶ one task per channel ──▶ receivers
                   (digests of bulk   │   (keyed by channel;      ▲ │ its queue's tail, retries and
                    operations)       │    other workers'         │ ▼ deferrals wait in PostgreSQL
                                      │    channels)              │
                                      └── channels this worker owns: handed over in process

Every agent acknowledges a record only when what it produced from it is safely stored or
acknowledged by Kafka, so a crash means the record is read again; the delivery rows in
Postgres make a second reading harmless. Agents never die on an error: they retry in place.
``notifier.retry.*`` and ``notifier.deferred`` are no longer written (ADR 0006); their agent
drains what an older version left there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import faust
import httpx
import orjson

from services.notifier import outbound, pipeline, topics
from services.notifier.render import Renderer
from services.notifier.settings import NotifierSettings
from shared import migrate
from shared.outbox import OutboxRelay, murmur2
from shared.streams import create_stream_app, parse_or_dead_letter

log = logging.getLogger(__name__)

# Tasks the worker starts and does not await: the event loop keeps only weak references to tasks,
# so each is held here until it is done (else a collected task could vanish mid-flight).
_background: set[asyncio.Future] = set()
T = TypeVar("T")


def _keep(fut: asyncio.Future) -> None:
    _background.add(fut)
    fut.add_done_callback(_background.discard)


def _ready(value: T | None) -> T:
    """A resource ``Resources.start()`` sets: every agent and task waits for ``ready`` before using one."""
    if value is None:
        raise RuntimeError("the notifier worker's resources are not started")
    return value


def _raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", internal=False
    )


class LingeringRelay(OutboxRelay):
    """The worker's outbox holds outcome events, retry records and dead letters: none is urgent
    to the millisecond, and at hundreds of notices a second publishing each row on its own (the
    relay wakes on every insert) costs more than the notices. So each batch waits a little for
    company first."""

    linger_s = 0.2  # at 0.05 s a flooded channel's outcomes were a relay cycle (3 round trips) each few notices

    async def publish_batch(self) -> int:
        await asyncio.sleep(self.linger_s)
        return await super().publish_batch()


@dataclass
class Resources:
    settings: NotifierSettings
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pool: asyncpg.Pool | None = None
    http: httpx.AsyncClient | None = None
    relay: OutboxRelay | None = None
    channels: pipeline.ChannelCache | None = None
    model: pipeline.ReadModel | None = None
    router: pipeline.Router | None = None
    renderer: Renderer | None = None
    render: pipeline.RenderStage | None = None
    deliverer: pipeline.Deliverer | None = None
    due: pipeline.DueQueue | None = None
    error: str | None = None

    async def start(self, forward) -> None:
        s = self.settings
        await migrate.prepare(s, "notifier")  # applies, or only checks where a Job migrates (Kubernetes)
        # No session state is ever changed on these connections (settings are transaction-local),
        # so a connection goes back to the pool without a reset query: one round trip less per use.
        self.pool = await asyncpg.create_pool(
            s.database_url, min_size=2, max_size=max(4, s.db_pool_max), reset=_keep_session
        )
        await pipeline.seed_channels(self.pool, s)
        self.http = outbound.http_client(s)  # checked addresses, pooled by host name, CA bundle
        self.relay = LingeringRelay(
            self.pool,
            s.kafka_bootstrap,
            "notifier",
            dsn=s.database_url,
            poll_interval=s.outbox_poll_interval_s,
            batch_size=s.outbox_batch_size,
        )
        self.relay.start()
        self.channels = pipeline.ChannelCache(self.pool, s.database_url, s.data_key_bytes())
        await self.channels.start()
        self.model = pipeline.ReadModel(self.pool)
        self.renderer = Renderer()
        self.router = pipeline.Router(self.pool, self.channels, self.model)
        self.render = pipeline.RenderStage(self.pool, self.channels, self.model, self.renderer)
        self.deliverer = pipeline.Deliverer(s, self.pool, self.http, self.channels, self.renderer)
        self.due = pipeline.DueQueue(forward)
        self.router.digester = pipeline.Digester(s, self.channels, self.render, forward)
        self.router.digester.hand_over = self.deliverer.hand_over
        self.ready.set()


async def _keep_session(conn: asyncpg.Connection) -> None:
    return None


async def _retrying(what: str, fn, *args):
    """Run ``fn`` until it succeeds (a database or broker away for a while must not kill an agent)."""
    delay = 0.2
    while True:
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying in %.1f s", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _send_all(
    topic: faust.TopicT, event, records: list[tuple[bytes, bytes]], held: list[asyncio.Future] | None = None
) -> None:
    """Send what was made from ``event`` and acknowledge it once Kafka has every record (and what
    else it waits for is done: ``held``, its read-model write and digests); a record Kafka refused
    is sent again (with back-off) until it is taken, so none is dropped."""
    held = [f for f in (held or []) if f is not None and not f.done()]
    if not records:
        if not held:
            event.ack()
        else:

            async def later() -> None:
                await asyncio.gather(*held)
                event.ack()

            _keep(asyncio.ensure_future(later()))
        return
    futures = [await topic.send(key=k, value=v, headers=list(topics.DELIVERY_HEADERS)) for k, v in records]

    async def settle() -> None:
        for (key, value), fut in zip(records, futures, strict=True):
            delay = 0.5
            while True:
                try:
                    await fut
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("a record was not acknowledged by Kafka; sending it again", exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    try:
                        fut = await topic.send(key=key, value=value, headers=list(topics.DELIVERY_HEADERS))
                    except Exception:  # noqa: BLE001
                        fut = asyncio.get_running_loop().create_future()
                        fut.set_exception(RuntimeError("send failed"))
        if held:
            await asyncio.gather(*held)
        event.ack()

    _keep(asyncio.ensure_future(settle()))


def _buffered(stream) -> Callable[[], int]:
    """How many records wait in an agent's buffer (Faust's queue of the stream's channel)."""

    def size() -> int:
        try:
            return int(stream.channel.queue.qsize())
        except Exception:  # noqa: BLE001 - a stream without a queue: nothing to wait for
            return 0

    return size


def _peek_type(value: bytes | None) -> str | None:
    try:
        return orjson.loads(value).get("type") if value else None
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _once(event):
    """An acknowledgement that counts once however often it is called."""
    done: list[bool] = []

    async def ack() -> None:
        if not done:
            done.append(True)
            event.ack()

    return ack


def fair_fetch_order() -> None:
    """Hand out aiokafka's buffered partitions side by side.

    aiokafka hands out what it has fetched partition by partition in the order the data came
    (``Fetcher._records``), taking up to ``max_records`` from the first partition first: while a
    flooded topic has megabytes buffered, a quiet topic's record fetched after them is handed out
    only once they are. Here each call takes an equal share of ``max_records`` from every buffered
    partition, so every batch holds some of each, and Faust's round robin over topics hands a quiet
    channel's event over near the start of the next batch: it waits for a batch of an import's
    events, never for the import (issue 15). A partition holding an error is left to aiokafka's own
    path. Reaches into aiokafka 0.14's private ``_records``, as ``shared.streams.bound_fetch_wait``
    reaches into Faust (ADR 0003)."""
    from aiokafka.consumer import fetcher

    cls = fetcher.Fetcher
    original = getattr(cls.fetched_records, "__wrapped__", cls.fetched_records)

    async def fetched_records(self, partitions, timeout=0, max_records=None):
        buffered = [
            tp
            for tp, held in self._records.items()  # aiokafka's private buffer: see the docstring
            if (not partitions or tp in partitions) and isinstance(held, fetcher.FetchResult)
        ]
        if max_records is None or len(buffered) < 2:
            return await original(self, partitions, timeout=timeout, max_records=max_records)
        share = max(1, max_records // len(buffered))
        drained: dict = {}
        for tp in buffered:
            drained.update(await original(self, {tp}, timeout=0, max_records=share))
        if drained:
            return drained
        return await original(self, partitions, timeout=timeout, max_records=max_records)

    functools.update_wrapper(fetched_records, original, assigned=(), updated=())  # sets __wrapped__ only
    setattr(cls, "fetched_records", fetched_records)  # noqa: B010 - a deliberate patch, as in shared.streams


def build_worker(settings: NotifierSettings) -> tuple[faust.App, Resources]:
    fair_fetch_order()
    app = create_stream_app(
        settings.notifier_app_id,
        settings,
        consumer_auto_offset_reset=settings.notifier_auto_offset_reset,
        stream_wait_empty=False,  # deliveries wait in channel queues and retries until due: never block a rebalance
        broker_commit_livelock_soft_timeout=24 * 3600.0,
        producer_linger_ms=settings.notifier_producer_linger_ms,
        broker_session_timeout=settings.notifier_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.notifier_session_timeout_s / 3),
        # The web port serves /livez, /readyz and /metrics, on the settings' host (127.0.0.1 unless
        # told otherwise, like the APIs); Faust's own views (/router/, /table/, its statistics and
        # graph) show the cluster's layout and answer table queries: operators need none of them.
        web_bind=settings.http_host,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        # One consumer feeds every agent, a fetched batch at a time, record by record (Faust hands each
        # record over with a task or two). Batches of at most 100 records, an equal share from every
        # buffered partition (fair_fetch_order), so a quiet topic's record is in the next batch
        # whatever a flooded topic has buffered, and a batch is handed over quickly; 100 is within the
        # room an agent buffer keeps above its high-water mark (4,096 / 1.25), so a batch never meets a
        # full buffer, which would block the consumer for every topic (a flooded topic's agent over
        # that mark is taken out of the fetch).
        broker_max_poll_records=100,
    )
    res = Resources(settings)
    deliver_topic = _raw_topic(app, topics.DELIVER)
    waiting_topic = _raw_topic(app, topics.DEFERRED, *topics.RETRIES)

    async def forward(key: bytes, value: bytes) -> None:
        fut = await deliver_topic.send(key=key, value=value, headers=list(topics.DELIVERY_HEADERS))
        await fut

    # Asked for every delivery routed (and every row of a bulk operation): the assignment is read
    # again at most every 0.5 s (and at every call while a rebalance runs and the first after it), a
    # channel's partition once — reading both each time cost ~1 ms a call under load (profiled).
    assigned: dict = {"at": float("-inf"), "n": 0, "mine": frozenset(), "rebalancing": False}
    partition_of: dict[uuid.UUID, int] = {}

    def owns(channel_id: uuid.UUID) -> bool:
        """Whether this worker owns the channel: its partition of the deliver topic is assigned here."""
        now = time.monotonic()
        rebalancing = bool(app.rebalancing)
        if now - assigned["at"] > 0.5 or rebalancing or assigned["rebalancing"]:
            consumer = app.consumer
            n = (consumer.topic_partitions(topics.DELIVER) if consumer else None) or 0
            mine = frozenset(tp.partition for tp in consumer.assignment() if tp.topic == topics.DELIVER) if n else ()
            if n != assigned["n"]:
                partition_of.clear()
            assigned.update(at=now, n=n, mine=mine, rebalancing=rebalancing)
        if not assigned["n"]:
            return False
        partition = partition_of.get(channel_id)
        if partition is None:
            if len(partition_of) > 100_000:
                partition_of.clear()
            partition = partition_of[channel_id] = (murmur2(str(channel_id).encode()) & 0x7FFFFFFF) % assigned["n"]
        return partition in assigned["mine"]

    @app.task
    async def start_resources() -> None:
        try:
            await _retrying("starting the notifier's resources", res.start, forward)
            _ready(res.deliverer).owns = owns
        except Exception as exc:
            res.error = repr(exc)
            raise
        _keep(asyncio.ensure_future(_ready(res.due).run()))
        log.info("notifier worker ready", extra={"channels": len(_ready(res.channels).index.by_id)})

    async def route(stream):
        """Route (who gets it) and render (what each channel is sent), then re-key by channel.

        Both steps run here, one after the other: a Kafka hop between them would add a hop's
        latency and buy nothing (rendering is CPU work on data already in hand). The hop that
        matters is the next one, onto the deliver topic keyed by channel. One agent per domain
        topic: a bulk import's thousands of membership events do not hold up a funding or
        training event behind them in one agent's buffer."""
        await res.ready.wait()
        name = next(iter(getattr(stream.channel, "topics", ())), str(id(stream)))
        urgency = _ready(res.deliverer).urgency
        urgency.buffers[name] = _buffered(stream)
        async for event in stream.noack().events():
            if not _ready(res.router).wants(_peek_type(event.message.value)):
                event.ack()  # nobody hears it and the read model needs nothing from it: no parsing
                continue
            parsed = await parse_or_dead_letter(app, event)
            if parsed is None:
                event.ack()
                continue
            ce, data = parsed
            bulk_event = pipeline.batch_of(data) is not None
            # a quiet event holds bulk work back while it is routed, rendered and handed over
            with contextlib.nullcontext() if bulk_event else urgency.quiet():
                deliveries, held = await _retrying(
                    "routing an event", _ready(res.router).route, ce, data, event.message.value
                )
                records: list[tuple[bytes, bytes]] = []
                fan_out = [d for d in deliveries if not d.get("bulk")]
                if fan_out:
                    rendered = await _retrying(
                        "rendering notices", _ready(res.render).records, ce, data, event.message.value, fan_out
                    )
                    # The channels this worker owns get theirs at once, in process; the deliver topic
                    # carries only what other workers' channels are sent.
                    others, stored = await _ready(res.deliverer).hand_over(rendered)
                    held.extend(stored)
                    records = [(r["c"].encode(), orjson.dumps(r)) for r in others]
            bulk = [d for d in deliveries if d.get("bulk")]
            if bulk:  # a bulk operation's rows for channels that want each: the bulk lane, not the deliver topic
                rows = await _retrying(
                    "rendering bulk notices", _ready(res.render).records, ce, data, event.message.value, bulk
                )
                held.append(await _retrying("queueing bulk notices", _ready(res.deliverer).take_bulk, rows))
            await _send_all(deliver_topic, event, records, held)
            if bulk_event:
                urgency.in_bulk.add(name)
                await urgency.bulk_turn()  # an import's next event waits for quiet ones to pass
            else:
                urgency.in_bulk.discard(name)

    for source in topics.DOMAIN_SOURCES:
        app.agent(_raw_topic(app, source), name=f"route-{source}")(route)

    @app.agent(deliver_topic)
    async def deliver(stream):
        await res.ready.wait()
        _ready(res.deliverer).urgency.buffers[topics.DELIVER] = _buffered(stream)
        async for event in stream.noack().events():
            try:
                record = orjson.loads(event.message.value)
                delivery_id, channel_id = uuid.UUID(record["d"]), uuid.UUID(record["c"])
            except Exception:  # noqa: BLE001
                log.warning("unreadable deliver record skipped")
                event.ack()
                continue

            await _retrying(
                "queueing a delivery", _ready(res.deliverer).submit, delivery_id, channel_id, record, _once(event)
            )

    @app.agent(waiting_topic)
    async def wait_until_due(stream):
        await res.ready.wait()
        async for event in stream.noack().events():
            try:
                record = orjson.loads(event.message.value)
            except Exception:  # noqa: BLE001
                event.ack()
                continue

            ack = _once(event)
            try:
                known = await _ready(res.channels).get_or_load(uuid.UUID(record["c"])) is not None
            except Exception:  # noqa: BLE001 - cannot tell: keep it
                known = True
            if not known:
                await ack()  # not a channel of this deployment
                continue
            _ready(res.due).add(event.message.key or b"", record, ack)

    @app.timer(interval=settings.notifier_sweep_interval_s)
    async def due_work() -> None:
        """The channels this worker owns with work due in PostgreSQL that it did not schedule
        itself (after a restart or a rebalance): retries, deferrals, backlogs, lapsed leases."""
        if res.ready.is_set() and not app.rebalancing:
            try:
                await _ready(res.deliverer).poll()
            except Exception:
                log.warning("looking for due deliveries failed", exc_info=True)

    @app.page("/readyz")
    async def readyz(web, request):
        assigned = bool(app.consumer and app.consumer.assignment()) if res.ready.is_set() else False
        ok = res.ready.is_set() and assigned and not app.rebalancing
        return web.json(
            {
                "status": "ok" if ok else "starting",
                "resources": res.ready.is_set(),
                "assigned": assigned,
                "rebalancing": bool(app.rebalancing),
                "error": res.error,
            },
            status=200 if ok else 503,
        )

    @app.page("/channels/{channel_id}")
    async def channel_known(web, request, channel_id: str):
        """Whether this worker knows a channel, as it routes by it (status, subscriptions; never its
        settings or secrets). A channel is learnt by NOTIFY when it is written, a moment after the
        API's answer: whoever needs the worker to route by a channel it just created or changed
        (the integration tests) waits for this page to show it, not for a while."""
        try:
            ch = _ready(res.channels).get(uuid.UUID(channel_id)) if res.ready.is_set() else None
        except ValueError:
            ch = None
        if ch is None:
            return web.json({"known": False}, status=404)
        return web.json({"id": str(ch.id), "known": True, "status": ch.status, "event_types": list(ch.event_types)})

    return app, res


async def ensure_topics(settings: NotifierSettings, timeout: float = 120.0) -> None:
    """The notifier's topics exist before its consumer subscribes (broker auto-creation is off)."""
    from shared.topics import TOPICS
    from shared.topics import ensure_topics as create

    wanted = tuple(t for t in TOPICS if t.name.startswith("notifier.") or t.name in topics.DOMAIN_SOURCES)
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            await create(settings.kafka_bootstrap, wanted)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            log.warning("Kafka not reachable to create the notifier's topics; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
