"""Metrics projection: domain events → Faust tables → Prometheus metrics.

``python -m services.projection worker``   project every domain topic and every dead-letter topic
``python -m services.projection rebuild``  reset the state and replay from the beginning (``rebuild.py``)
``python -m services.projection dashboards [--check]``  write (or check) deploy/grafana/dashboards/*.json

The Faust app owns the state: two tables with changelog topics (``counters``: per
source partition and metric family; ``aggregates``: per aggregate id, see
``domain.py``), their recovery on start and on rebalance, the partition assignment
among workers, the producer and the web server (``/livez``, ``/readyz``, ``/metrics``).

Records are read in batches by ``SourceReader``: an aiokafka consumer bound to
the source partitions whose numbers match the table partitions Faust made active
on this worker (tables and topics are co-partitioned by number). Faust's
per-message stream pipeline was measured at about 2,500 events/s on this machine
even with ``take_events`` and an empty agent (see README.md, "Metrics projection"), far below
what the state needs; the batch reader does the same job in bulk.

A batch is applied to the state, the changed records are written to the changelogs
and acknowledged by Kafka, and only then is each partition's resume mark
(``<topic>|<partition>|@done``) written. A restart recovers the tables and resumes
every partition after its mark; records whose offsets are not above a record's own
watermark are skipped, so nothing is counted twice (and nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores.memory import Store as MemoryStore
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from services.projection.domain import DOMAIN_TOPICS, Projection, base_topic
from services.projection.exposition import FiguresCollector, Renderer, figures_registry
from services.projection.settings import ProjectionSettings, dead_letter_topics
from shared.consumer import drop_lag, report_lag
from shared.events import InvalidEvent, UnknownEventType, decode, parse_data
from shared.kafka import DEAD_LETTERS, connection, dlq_topic, kafka_security, read_to_end
from shared.timing import within
from shared.topics import apps_create_topics

log = logging.getLogger(__name__)

SCRAPE_SECONDS = Gauge(
    "changai_projection_scrape_duration_seconds", "Time the previous /metrics scrape of the projection took to render"
)
BATCH_EVENTS = Gauge("changai_projection_last_batch_events", "Records in the last batch the projection applied")
READY = Gauge("changai_projection_ready", "1 once the tables are recovered and the projection is applying events")

_CONSUMER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TABLES = ("counters", "aggregates")


def changelog_configs(settings: ProjectionSettings) -> dict[str, str]:
    """Compacted often (the tables rewrite the same keys all the time); with replicas, a write waits for two."""
    return {
        "min.cleanable.dirty.ratio": "0.1",
        "segment.ms": "600000",
        "min.insync.replicas": str(min(2, settings.stream_replication_factor)),
    }


def changelog_topics(app_id: str) -> list[str]:
    return [f"{app_id}-{name}-changelog" for name in TABLES]


COLLECTOR = FiguresCollector()
FIGURES = figures_registry(COLLECTOR)  # the reference rendering; /metrics uses RENDERER (same text, cached)
RENDERER = Renderer()
_FAUST_METRICS = None


def _faust_monitor():
    global _FAUST_METRICS
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    if _FAUST_METRICS is None:
        _FAUST_METRICS = FaustMetrics.create(REGISTRY, "changai_faust")
    return PrometheusMonitor(metrics=_FAUST_METRICS)


class SourceReader:
    """Reads the assigned source partitions in batches and applies them to the projection."""

    def __init__(self, worker: ProjectionWorker, partitions: set[int]):
        self.worker = worker
        self.partitions = partitions
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task | None = None
        self._stopping = False

    def assignment(self) -> list[TopicPartition]:
        s = self.worker.settings
        tps = [TopicPartition(t, p) for t in s.source_topics() for p in sorted(self.partitions)]
        if 0 in self.partitions:
            tps += [TopicPartition(t, 0) for t in s.dlq_topics()]
        return tps

    async def start(self) -> None:
        s = self.worker.settings
        self.consumer = AIOKafkaConsumer(
            **connection(s.kafka_bootstrap),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=s.projection_batch_max,
            fetch_max_wait_ms=s.projection_fetch_wait_ms,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            client_id=f"{s.projection_app_id}-reader",
        )
        await self.consumer.start()
        tps = self.assignment()
        self.consumer.assign(tps)
        proj, prefix = self.worker.projection, self.worker.prefix
        dlq = set(s.dlq_topics())
        firsts = await self.consumer.beginning_offsets(tps)
        self.worker.prime_until = {}
        for tp in tps:
            resume = proj.resume_offset(base_topic(tp.topic, prefix), tp.partition)
            # Start a window's worth of records before the resume mark: those are read for their event
            # ids only (domain.RecentIds), so a duplicate after a restart is still recognised.
            start = resume if tp.topic in dlq else max(firsts.get(tp, 0), resume - s.projection_dedupe_window, 0)
            if start < resume:
                self.worker.prime_until[tp] = resume
            self.consumer.seek(tp, start)
        self.worker.parked = await self._already_parked()
        self.task = asyncio.create_task(self._run(), name="projection-reader")
        log.info("projection reading %d partitions from their resume marks", len(tps))

    async def _already_parked(self) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of the records this projection dead-lettered before (e.g. before a
        rebuild): read from the dead-letter topics' headers, so a replay parks no record twice."""
        s = self.worker.settings
        parked: set[tuple[str, int, int]] = set()
        try:
            async for r in read_to_end(s.kafka_bootstrap, [TopicPartition(t, 0) for t in s.dlq_topics()]):
                h = {k: _text(v) for k, v in (r.headers or [])}
                if h.get("changai-dlq-consumer") == s.projection_app_id:
                    with contextlib.suppress(KeyError, ValueError):  # a header missing or not a number: not ours
                        parked.add(
                            (h["changai-dlq-topic"], int(h["changai-dlq-partition"]), int(h["changai-dlq-offset"]))
                        )
        except TimeoutError:
            # Carry on rather than never becoming ready: at worst a replayed invalid record is parked twice.
            log.warning("dead-letter topics not read to their end; %d earlier dead letters known", len(parked))
        return parked

    async def stop(self) -> None:
        """Finish the batch in hand (its records and marks written), then stop."""
        self._stopping = True
        if self.task:
            try:
                await within(asyncio.shield(self.task), 30)
            except Exception:  # noqa: BLE001 - TimeoutError included
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
        if self.consumer:
            await self.consumer.stop()

    async def _run(self) -> None:
        s = self.worker.settings
        consumer = self.consumer
        assert consumer is not None, "start() makes the consumer before it starts this task"
        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=s.projection_batch_max)
                if not batches:
                    continue
                n = await self.worker.apply_records(batches)
                await self.worker.flush()
                BATCH_EVENTS.set(n)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("projection batch failed; re-reading from the resume marks")
                await asyncio.sleep(1)
                await self._rewind()

    async def _rewind(self) -> None:
        proj, prefix = self.worker.projection, self.worker.prefix
        consumer = self.consumer
        assert consumer is not None, "only _run rewinds, after start() made the consumer"
        for tp in consumer.assignment():
            consumer.seek(tp, proj.resume_offset(base_topic(tp.topic, prefix), tp.partition))


class ProjectionWorker:
    """The Faust app, its tables and the state they hold."""

    def __init__(self, settings: ProjectionSettings):
        self.settings = s = settings
        self.prefix = settings.projection_topic_prefix
        datadir = Path(s.data_dir) / "projection"
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            s.projection_app_id,
            broker=f"kafka://{s.kafka_bootstrap}",
            broker_credentials=kafka_security().faust_credentials(),
            store="memory://",  # tables are rebuilt from their changelog topics on start
            datadir=str(datadir),
            autodiscover=False,
            key_serializer="raw",
            value_serializer="raw",
            topic_partitions=6,
            topic_replication_factor=s.stream_replication_factor,
            topic_allow_declare=apps_create_topics(s),  # no topic created in Kubernetes (shared.topics)
            web_enabled=True,
            web_host=s.http_host,
            web_bind=s.http_host,
            web_port=s.http_port,
            web_in_thread=False,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            broker_session_timeout=s.projection_session_timeout_s,
            broker_heartbeat_interval=max(1.0, s.projection_session_timeout_s / 4),
            table_standby_replicas=0,
        )
        if s.projection_faust_sensors:
            self.app.monitor = _faust_monitor()
        schema: faust.Schema[str, Any] = faust.Schema(
            key_type=str, value_type=None, key_serializer="json", value_serializer="json"
        )
        self.tables = {
            name: self.app.Table(
                name,
                partitions=6,
                default=None,
                schema=schema,
                recovery_buffer_size=10000,
                extra_topic_configs=changelog_configs(s),
            )
            for name in TABLES
        }
        self.projection = Projection(
            self._store("counters"), self._store("aggregates"), dedupe_window=s.projection_dedupe_window
        )
        COLLECTOR.projection = RENDERER.projection = self.projection
        self.tables["counters"].on_recover(self._recovered)
        self.app.on_partitions_revoked.connect(self._revoked)
        self.reader: SourceReader | None = None
        self.parked: set[tuple[str, int, int]] = set()
        self.prime_until: dict[TopicPartition, int] = {}  # records below: read for their ids only
        self._known_sources = {t.removesuffix(".dlq") for t in dead_letter_topics()}
        self._ready = False
        self._reader_lock = asyncio.Lock()
        self.app.timer(1.0)(self._report_lag)
        self.app.service(self._stopper_service())
        self._pages()

    def _store(self, name: str) -> MutableMapping[str, dict]:
        store = self.tables[name].data
        assert isinstance(store, MemoryStore), "the tables are configured with store='memory://'"
        return store.data  # the memory store's dict (Faust recovers into it)

    # -- assignment, recovery, revocation --------------------------------------------------
    def active_partitions(self) -> set[int]:
        actives = self.app.assignor.assigned_actives()
        names = {self.tables[t].changelog_topic.get_topic_name() for t in TABLES}
        per_table = [{tp.partition for tp in actives if tp.topic == n} for n in names]
        return set.intersection(*per_table) if per_table else set()

    async def _recovered(self) -> None:
        async with self._reader_lock:
            if self.reader is not None:
                await self.reader.stop()
                self.reader = None
            partitions = self.active_partitions()
            proj = self.projection
            proj.counters, proj.aggregates = self._store("counters"), self._store("aggregates")
            started = time.perf_counter()
            assigned = {(t, p) for t in DOMAIN_TOPICS for p in partitions}
            assigned |= {(t, 0) for t in dead_letter_topics()} if 0 in partitions else set()
            proj.rebuild(lambda topic, p: (topic, p) in assigned)
            log.info(
                "projection state rebuilt from the tables in %.1f ms: %d counter records, %d aggregates; partitions %s",
                (time.perf_counter() - started) * 1000,
                len(proj.counters),
                len(proj.aggregates),
                sorted(partitions),
            )
            if partitions:
                self.reader = SourceReader(self, partitions)
                await self.reader.start()
            self._ready = True
            READY.set(1)

    async def _revoked(self, app: faust.App, /, *_revoked: Any, **_kwargs: Any) -> None:
        """mode calls a handler as fun(sender, *args, signal=..., **kwargs): the sender is positional."""
        async with self._reader_lock:
            self._ready = False
            READY.set(0)
            drop_lag(self.settings.projection_app_id)  # until the next assignment's report
            if self.reader is not None:
                await self.reader.stop()
                self.reader = None

    def _stopper_service(self):
        worker = self

        class ReaderStopper(Service):
            async def on_stop(self) -> None:
                if worker.reader is not None:
                    await worker.reader.stop()
                    worker.reader = None

        return ReaderStopper

    # -- applying --------------------------------------------------------------------------
    async def apply_records(self, batches: dict) -> int:
        proj, prefix = self.projection, self.prefix
        dlq_topics = set(self.settings.dlq_topics())
        n = 0
        for tp, records in batches.items():
            topic = base_topic(tp.topic, prefix)
            partition = tp.partition
            if tp.topic in dlq_topics:
                for record in records:
                    self._apply_dead_letter(topic, record)
            else:
                prime = self.prime_until.get(tp, -1)
                for record in records:
                    if record.offset < prime:  # before the resume mark: applied already, only its id matters
                        self._remember(topic, partition, record)
                        continue
                    try:
                        ce = decode(record.value)
                        data = parse_data(ce)
                    except UnknownEventType:
                        proj.skip(topic, partition, record.offset, "unknown_type")
                        continue
                    except InvalidEvent as exc:
                        if (
                            not proj.applied(topic, partition, record.offset, "skipped")
                            and (record.topic, partition, record.offset) not in self.parked
                        ):
                            await self._dead_letter(record, str(exc))
                        proj.skip(topic, partition, record.offset, "invalid")
                        continue
                    proj.apply(topic, partition, record.offset, record.key.decode() if record.key else None, ce, data)
            if records[-1].offset >= self.prime_until.get(tp, -1):
                proj.mark_done(topic, partition, records[-1].offset)
            n += len(records)
        return n

    def _remember(self, topic: str, partition: int, record) -> None:
        try:
            event_id = orjson.loads(record.value).get("id")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return  # not an event: it was skipped or dead-lettered, it has no id to repeat
        if isinstance(event_id, str):
            self.projection.seen(topic, partition, record.offset, event_id)

    def _apply_dead_letter(self, dlq: str, record) -> None:
        headers = {k: v for k, v in (record.headers or [])}
        source = base_topic(_text(headers.get("changai-dlq-topic")), self.prefix)
        if source not in self._known_sources:
            source = dlq.removesuffix(".dlq")
        consumer = _text(headers.get("changai-dlq-consumer"))
        if not _CONSUMER_NAME.match(consumer):
            consumer = "unknown"
        self.projection.apply_dead_letter(
            dlq, record.partition, record.offset, source, consumer, record.timestamp / 1000
        )

    async def _dead_letter(self, record, reason: str) -> None:
        """Park an invalid record in <topic>.dlq with the reason (as shared.kafka.dead_letter does)."""
        headers = [
            *(record.headers or []),
            ("changai-dlq-reason", reason.encode()[:1000]),
            ("changai-dlq-consumer", self.settings.projection_app_id.encode()),
            ("changai-dlq-topic", record.topic.encode()),
            ("changai-dlq-partition", str(record.partition).encode()),
            ("changai-dlq-offset", str(record.offset).encode()),
        ]
        await self.app.producer.send_and_wait(dlq_topic(record.topic), record.key, record.value, None, None, headers)
        self.parked.add((record.topic, record.partition, record.offset))
        DEAD_LETTERS.labels(record.topic).inc()
        log.warning("record sent to dead letters: %s", reason)

    async def flush(self) -> None:
        """Write the changed records, wait for Kafka, then write the partitions' resume marks."""
        for tables in (("counters", "aggregates"), ("done",)):
            pending = []
            for name in tables:
                table = self.tables["aggregates" if name == "aggregates" else "counters"]
                topic = table.changelog_topic.get_topic_name()
                for key, record in self.projection.take_dirty(name):
                    partition = record["p"] if name == "aggregates" else int(key.rsplit("|", 2)[1])
                    pending.append(
                        await self.app.producer.send(
                            topic, orjson.dumps(key), orjson.dumps(record), partition, None, None
                        )
                    )
            if pending:
                await asyncio.gather(*pending)

    # -- lag and pages -----------------------------------------------------------------------
    async def _report_lag(self) -> None:
        reader = self.reader
        if reader is None or reader.consumer is None:
            return
        held, lags = [], {}
        for tp in reader.consumer.assignment():
            topic = base_topic(tp.topic, self.prefix)
            held.append((topic, tp.partition))
            end = reader.consumer.highwater(tp)
            if end is None:
                continue
            done = self.projection.progress.get((topic, tp.partition), -1)
            lags[(topic, tp.partition)] = end - done - 1
        report_lag(self.settings.projection_app_id, held, lags)  # drops the partitions given up

    def _pages(self) -> None:
        app = self.app
        worker = self

        @app.page("/livez")
        async def livez(web, request):
            return web.json({"status": "ok", "service": "projection"})

        @app.page("/readyz")
        async def readyz(web, request):
            return web.json({"ready": worker._ready}, status=200 if worker._ready else 503)

        @app.page("/metrics")
        async def metrics(web, request):
            started = time.perf_counter()
            body = generate_latest(REGISTRY) + RENDERER.render()
            SCRAPE_SECONDS.set(time.perf_counter() - started)
            return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def build(settings: ProjectionSettings | None = None) -> ProjectionWorker:
    return ProjectionWorker(settings or ProjectionSettings())


async def ensure_changelogs(settings: ProjectionSettings) -> list[str]:
    """Create the tables' changelog topics before Faust starts.

    Faust declares them itself, but a topic created in the same start-up can be missing
    from the metadata of the first assignment; its partitions are then never assigned and
    the worker reads nothing (seen after a rebuild). Created first, they are always there."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from shared.topics import wait_for_topics

    if not apps_create_topics(settings):  # Kubernetes: KafkaTopics own them (shared.topics.STREAM_APPS)
        await wait_for_topics(
            settings.kafka_bootstrap,
            [*changelog_topics(settings.projection_app_id), f"{settings.projection_app_id}-__assignor-__leader"],
            settings.topic_wait_s,
        )
        return []
    admin = AIOKafkaAdminClient(**connection(settings.kafka_bootstrap), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in changelog_topics(settings.projection_app_id) if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker created them first
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            6,
                            settings.stream_replication_factor,
                            topic_configs={"cleanup.policy": "compact", **changelog_configs(settings)},
                        )
                        for t in missing
                    ]
                )
        deadline = time.monotonic() + 30
        while set(missing) - set(await admin.list_topics()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return missing
    finally:
        await admin.close()


def run_worker(settings: ProjectionSettings) -> None:
    from faust.worker import Worker

    from shared import logging as changai_logging

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(ensure_changelogs(settings))
    finally:
        loop.close()
    worker = build(settings)
    # The web host and port come from the app's configuration; logging is the platform's (JSON, scrubbed,
    # repeated aiokafka lines held back), not Faust's plain-text handler.
    Worker(
        worker.app,
        loglevel=settings.log_level.lower(),
        logging_config=changai_logging.dict_config("projection", settings.log_level, settings.log_repeat_window_s),
    ).execute_from_commandline()


def main(argv: list[str]) -> None:
    role = argv[0] if argv else "worker"
    if role == "worker":
        run_worker(ProjectionSettings())
    elif role == "rebuild":
        from services.projection.rebuild import main as rebuild_main

        raise SystemExit(rebuild_main(argv[1:]))
    elif role == "dashboards":
        from services.projection.dashboards import main as dashboards_main

        raise SystemExit(dashboards_main(argv[1:]))
    else:
        raise SystemExit(f"unknown role {role!r}; use: worker | rebuild | dashboards")


if __name__ == "__main__":
    main(sys.argv[1:])
