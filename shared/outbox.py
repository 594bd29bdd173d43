"""Transactional outbox: events written with the domain change, published by a relay.

``await outbox.add(conn, event)`` inside the caller's transaction stores the exact
CloudEvent bytes, and the table's insert trigger queues the row in ``outbox_pending``
(its seq and lane) in the same transaction. The :class:`OutboxRelay` publishes the queued
rows in order with an idempotent producer, woken by LISTEN/NOTIFY with polling as the
fallback, and marks them sent by deleting them from the queue (the event rows are never
rewritten).
Several relays (replicas) share the work through ``FOR UPDATE SKIP LOCKED`` on
lanes: a key always falls in the same lane and a lane is held by one relay at a
time, so each aggregate's events reach Kafka in the order they were written. The
relays count each other (an advisory lock each holds, seen in ``pg_locks``) and each
takes at most its share of the lanes that have rows waiting, in random order: alone
all 16, two 8 each, so replicas share a backlog instead of one holding every lane.
Kafka being down delays events; it never loses them and never fails the write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import uuid
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from asyncpg.pgproto.pgproto import UUID as PgUUID
from prometheus_client import Counter, Gauge, Histogram

from shared.events import CONTENT_TYPE, CloudEvent, EventData, encode, encode_value, envelope, json_time
from shared.events.envelope import new_traceparents
from shared.kafka import make_producer
from shared.logging import trace_id_var
from shared.timing import wait_set, within

log = logging.getLogger(__name__)

LANES = 16
BACKLOG = Gauge("changai_outbox_backlog", "Outbox rows not yet published", ["service"])
OLDEST = Gauge("changai_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row", ["service"])
PUBLISHED = Counter("changai_outbox_published_total", "Outbox rows published to Kafka", ["service"])
PUBLISH_FAILURES = Counter("changai_outbox_publish_failures_total", "Relay batches that failed to publish", ["service"])
PUBLISH_DELAY = Histogram(
    "changai_outbox_publish_delay_seconds",
    "Time from the write to its event being acknowledged by Kafka",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
_HEADERS = [("content-type", CONTENT_TYPE.encode())]
# Topics whose records are not CloudEvents (a service's internal records written through its outbox)
# and the content type they are labelled with instead: ``register_content_type``.
_TOPIC_HEADERS: dict[str, list[tuple[str, bytes]]] = {}


def register_content_type(topic: str, content_type: str) -> None:
    """Label the records of ``topic`` as ``content_type`` (they are not CloudEvents)."""
    _TOPIC_HEADERS[topic] = [("content-type", content_type.encode())]


def content_type_headers(topic: str) -> list[tuple[str, bytes]]:
    return _TOPIC_HEADERS.get(topic, _HEADERS)


# Each running relay holds this advisory lock (shared mode) on its LISTEN connection: the relays of a
# database count each other by it, and the share of one is 16 lanes / relays.
PRESENCE_KEY = 0x6F7574626F78  # "outbox"
RELAYS_PRESENT = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND classid::bigint = {PRESENCE_KEY >> 32} AND objid::bigint = {PRESENCE_KEY & 0xFFFFFFFF} AND objsubid = 1"
)
# The waiting rows are the ``outbox_pending`` queue (seq, lane), filled by the outbox's insert trigger in the
# writer's transaction. A cycle is three round trips: BEGIN; one statement that locks its lanes, takes their
# oldest rows out of the queue and reads their events; COMMIT once Kafka has acknowledged them. Taking them
# out is marking them sent: until the commit no one else sees it, and a relay that fails or dies before it
# (Kafka down, timed out, killed) rolls it back, so the rows wait again (the outbox rows, ~800 bytes each,
# are never rewritten). In the statement:
# - ``l``: lanes with rows waiting (one index probe each), in random order so that replicas pick different
#   ones, at most $1 of them (this relay's share), skipping those another relay holds;
# - all 16 (alone, or the others idle): the oldest waiting rows, whatever their lane, by the queue's key;
# - some: the oldest rows of each, an equal share of the $2 rows each, by one short range scan of the
#   queue's (lane, seq) index a lane rather than one sort of those lanes' whole backlog;
# each branch gated on the lane count (a one-time filter: the other is not run). Order matters only within
# a key, hence within a lane (the relay sorts the rows by seq). What the relay reads of a row: the key as
# bytes and the write time as epoch seconds, as Kafka and the delay histogram want them. Each event is one
# primary-key probe of the outbox (``OFFSET 0`` keeps it a probe per queued seq: the planner cannot turn it
# into a join that scans or sorts the outbox, whatever its statistics say).
_TAKE = (
    "WITH l AS MATERIALIZED (SELECT lane FROM outbox_lanes l WHERE EXISTS "
    "(SELECT 1 FROM outbox_pending p WHERE p.lane = l.lane) ORDER BY random() LIMIT $1 FOR UPDATE SKIP LOCKED), "
    "n AS MATERIALIZED (SELECT count(*)::int AS n FROM l), "
    "s AS (SELECT seq FROM (SELECT seq FROM outbox_pending WHERE (SELECT n FROM n) = "
    f"{LANES} ORDER BY seq LIMIT $2) a "
    "UNION ALL "
    "SELECT p.seq FROM l CROSS JOIN LATERAL (SELECT seq FROM outbox_pending WHERE lane = l.lane "
    f"AND (SELECT n FROM n) < {LANES} ORDER BY seq "
    "LIMIT ($2 + (SELECT n FROM n) - 1) / greatest((SELECT n FROM n), 1)) p), "
    "d AS (DELETE FROM outbox_pending WHERE seq = ANY (ARRAY (SELECT seq FROM s)) RETURNING seq) "
    "SELECT d.seq, o.* FROM d CROSS JOIN LATERAL (SELECT topic, convert_to(key, 'UTF8') AS key, value, "
    "extract(epoch FROM created_at)::float8 AS created FROM outbox o WHERE o.seq = d.seq OFFSET 0) o"
)
# The backlog gauges: the queue's size, and the age of its oldest row (by seq: one probe, not a scan).
_BACKLOG = (
    "SELECT count(*) AS n, extract(epoch FROM clock_timestamp() - "
    "(SELECT created_at FROM outbox WHERE seq = min(p.seq))) AS age FROM outbox_pending p"
)


def lane_of(key: str) -> int:
    return zlib.crc32(key.encode()) % LANES


def _row(event: CloudEvent, topic: str) -> tuple:
    key, value, _ = encode(event)
    k = key.decode()
    return (uuid.UUID(event.id), topic, k, lane_of(k), event.type, value)


async def add(
    conn: asyncpg.Connection, data: EventData, *, trace_id: str | None = None, time: datetime | None = None
) -> CloudEvent:
    """Store one event in the caller's transaction; returns its envelope."""
    event = envelope(data, trace_id=trace_id, time=time)
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, lane, event_type, value) VALUES ($1, $2, $3, $4, $5, $6)",
        *_row(event, data.topic),
    )
    return event


# Up to this many rows go in as one INSERT of arrays (one round trip); more go by COPY, which costs a round
# trip more but is cheaper per row for an import's thousands.
COPY_FROM = 64
_ROW_COLUMNS = ["event_id", "topic", "key", "lane", "event_type", "value"]


def insert_where(first: int, condition: str) -> str:
    """An INSERT of encoded rows (``add_encoded``'s, as six arrays: parameters ``$first`` .. ``$first+5``) that
    keeps those for which ``condition`` holds of the row's event id ``r.e`` (e.g. ``r.e IN (SELECT ... FROM
    inserted)``): for a data-modifying CTE that stores a change and its events in one statement, one round
    trip and atomic without a transaction of its own."""
    p = [f"${first + i}" for i in range(6)]
    return (
        "INSERT INTO outbox (event_id, topic, key, lane, event_type, value)"
        f" SELECT e, t, k, l, y, v FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::text[], {p[3]}::smallint[],"
        f" {p[4]}::text[], {p[5]}::bytea[]) WITH ORDINALITY AS r(e, t, k, l, y, v, n) WHERE {condition} ORDER BY n"
    )


async def _store_rows(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    if len(rows) > COPY_FROM:
        await conn.copy_records_to_table("outbox", records=rows, columns=_ROW_COLUMNS)
    elif rows:
        await conn.execute(
            "INSERT INTO outbox (event_id, topic, key, lane, event_type, value)"
            " SELECT e, t, k, l, y, v FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[],"
            " $6::bytea[]) WITH ORDINALITY AS r(e, t, k, l, y, v, n) ORDER BY n",  # seq in the given order
            *(list(column) for column in zip(*rows, strict=True)),
        )
    return len(rows)


def encode_many(
    items: Sequence[EventData],
    *,
    trace_id: str | None = None,
    update: Mapping[str, Any] | None = None,
    trace_ids: Sequence[str | None] | None = None,
) -> list[tuple]:
    """Outbox rows of many events, each value byte for byte what ``encode(envelope(d))`` gives, without a
    CloudEvent model an event (that cost ~14x the payload's own dump): one random draw for all the event
    ids and traceparents, one time for the batch. ``update`` sets payload fields on the events whose type
    has them (a bulk path's batch id), as ``model_copy(update=...)`` would. A test holds the bytes equal.
    ``trace_ids``: each event's own trace (a consumer's batch, ``add_traced``) instead of one for all."""
    n = len(items)
    if not n:
        return []
    when = json_time(datetime.now(UTC))
    traceparents = (
        new_traceparents(trace_id, n) if trace_ids is None else [new_traceparents(t, 1)[0] for t in trace_ids]
    )
    raw = bytearray(os.urandom(16 * n))  # the event ids (version 4), 16 bytes at a time for the batch
    raw[6::16] = bytes(raw[6::16]).translate(_VERSION_4)
    raw[8::16] = bytes(raw[8::16]).translate(_VARIANT)
    ids = bytes(raw)
    rows = []
    for i, d in enumerate(items):
        cls = type(d)
        data = d.model_dump(mode="json")
        if update:
            for name, value in update.items():
                if name in data:
                    data[name] = value
        event_id = PgUUID(ids[16 * i : 16 * i + 16])
        key = data[cls.subject_field]
        if not isinstance(key, str):  # a subject that is not a string or an id in JSON
            key = d.subject()
        value = encode_value(cls, data, subject=key, event_id=str(event_id), time=when, traceparent=traceparents[i])
        rows.append((event_id, cls.topic, key, lane_of(key), cls.event_type, value))
    return rows


_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))  # translate tables: a UUID's version and variant bits
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))


async def add_many(conn: asyncpg.Connection, items: Iterable[EventData], *, trace_id: str | None = None) -> int:
    """Store many events in the caller's transaction, in order (bulk writes); returns how many."""
    return await _store_rows(conn, encode_many(list(items), trace_id=trace_id))


async def add_traced(conn: asyncpg.Connection, items: Iterable[tuple[EventData, str | None]]) -> int:
    """``add_many`` with each event under its own trace id, in one statement: a consumer's batch, where each
    event continues the trace of the event it answers (``(data, trace_id)`` pairs, in order)."""
    pairs = list(items)
    return await _store_rows(conn, encode_many([d for d, _ in pairs], trace_ids=[t for _, t in pairs]))


async def add_encoded(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """Store events the caller has already encoded (bulk imports that build the CloudEvent bytes
    themselves). Each row is ``(event_id: UUID, topic, key, lane, event_type, value)``, with
    ``lane == lane_of(key)`` and ``value`` the exact record value ``encode`` gives."""
    return await _store_rows(conn, rows)


async def emit(conn: asyncpg.Connection, *events: EventData) -> list[EventData]:
    """A use case's events into the outbox, in this transaction and in order, with the request's or the
    consumed event's trace id (the one way every service writes its events; returns them)."""
    if len(events) == 1:
        await add(conn, events[0], trace_id=trace_id_var.get())
    elif events:
        await add_many(conn, events, trace_id=trace_id_var.get())
    return list(events)


_SEQ = itemgetter(0)
_WORDS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and aiokafka's default partitioner), a 32-bit word a step
    and masking once per step: ~1.5× faster than ``aiokafka.partitioner.murmur2`` and equal to it
    (a test holds them equal)."""
    length = len(data)
    m = 0x5BD1E995
    h = 0x9747B28C ^ length
    n4 = length >> 2
    words = _WORDS.get(n4)
    if words is None:
        words = _WORDS[n4] = struct.Struct(f"<{n4}I")
    for k in words.unpack_from(data):
        k = k * m & 0xFFFFFFFF
        h = (h * m ^ (k ^ k >> 24) * m) & 0xFFFFFFFF
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[-1] << 16
        if rest >= 2:
            h ^= data[n4 * 4 + 1] << 8
        h ^= data[n4 * 4]
        h = h * m & 0xFFFFFFFF
    h ^= h >> 13
    h = h * m & 0xFFFFFFFF
    return h ^ h >> 15


def observe_many(child, values: list[float]) -> None:
    """``Histogram.observe`` for many values at once: counted per bucket first, then one increment per
    bucket (a relay batch of 20,000 rows costs 20,000 comparisons, not 20,000 locked increments)."""
    bounds, buckets, total = (getattr(child, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:  # another prometheus_client layout: the plain way
        for v in values:
            child.observe(v)
        return
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect_left(bounds, v)] += 1  # observe() counts v in the first bucket whose bound is >= v
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    total.inc(sum(values))


class OutboxRelay:
    """Publishes the outbox. A batch that comes back full makes the next one twice as large, up
    to ``max_batch_size`` (a bulk import of 100,000s of rows then costs tens of round trips,
    not thousands); a batch that is not full brings the size back to ``batch_size``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bootstrap: str,
        service: str,
        *,
        dsn: str | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 2000,
        publish_timeout: float = 30.0,
        max_batch_size: int = 20000,
    ):
        self.pool = pool
        self.bootstrap = bootstrap
        self.service = service
        self.dsn = dsn
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.max_batch_size = max(batch_size, max_batch_size)
        self._next_batch = batch_size
        self.publish_timeout = publish_timeout
        self.producer: AIOKafkaProducer | None = None
        self.last_publish_ok: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None
        self._checked_in = 0.0  # in the first cycle, then every CHECK_IN_S at most
        self.lane_share = LANES  # of the lanes, how many this relay takes at most (16 / relays)
        self._backlog_checked = 0.0

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener:
            await self._listener.close()
        if self.producer:
            await self.producer.stop()

    async def connect(self) -> None:
        """Listen for new rows and start the producer now, rather than in the first cycle (optional)."""
        if self._listener is None:
            await self._listen()
        await self._ensure_producer()

    def wake(self) -> None:
        self._wake.set()

    CHECK_IN_S = 5.0

    async def _check_in(self) -> None:
        """Every ``CHECK_IN_S`` at most (not on every batch): re-open LISTEN and this relay's presence if
        their connection was lost (a database restart or failover: without it, new rows would wait for
        the poll, and the other relays would count this one out), and count the relays for this one's
        share of the lanes (a relay that starts or stops is noticed within that time)."""
        now = time.monotonic()
        if now - self._checked_in < self.CHECK_IN_S:
            return
        self._checked_in = now
        if self._listener is None or self._listener.is_closed():
            old, self._listener = self._listener, None
            if old is not None:
                try:
                    if self.dsn:
                        old.terminate()
                    else:
                        await self.pool.release(old)
                except Exception:  # noqa: BLE001 - it is gone either way
                    pass
            await self._listen()
            if self._listener is not None and not self._listener.is_closed():
                log.info("outbox LISTEN re-established")
                self._wake.set()  # rows written while it was away were not announced
        async with self.pool.acquire() as conn:
            relays = await conn.fetchval(RELAYS_PRESENT)
        self.lane_share = -(-LANES // max(relays, 1))

    async def _listen(self) -> None:
        try:
            self._listener = await (asyncpg.connect(self.dsn) if self.dsn else self.pool.acquire())
            await self._listener.add_listener("outbox", lambda *_: self._wake.set())
            await self._listener.execute("SELECT pg_advisory_lock_shared($1)", PRESENCE_KEY)
        except Exception:  # polling still works without it (and the others then count this relay out)
            log.warning("outbox LISTEN unavailable; relying on polling", exc_info=True)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = make_producer(self.bootstrap)
            try:
                await producer.start()
            except BaseException:  # also cancelled mid-start (shutdown): never leave it unclosed
                await producer.stop()
                raise
            self.producer = producer
        return self.producer

    async def _run(self) -> None:
        if self._listener is None:
            await self._listen()
        backoff = 0.5
        while True:
            try:
                await self._check_in()
                limit = self._next_batch
                published = await self._publish(limit)
                full = published >= limit
                self._next_batch = min(limit * 2, self.max_batch_size) if full else self.batch_size
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — last resort: the relay outlives any failure and retries
                PUBLISH_FAILURES.labels(self.service).inc()
                log.warning("outbox publish failed; will retry", extra={"error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            await self._update_backlog()
            if published:
                continue  # more may be waiting (in this relay's lanes or the ones it did not take): no pause
            self._wake.clear()
            await wait_set(self._wake, self.poll_interval)

    async def _update_backlog(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_checked < 1.0:
            return
        self._backlog_checked = now
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_BACKLOG)
        BACKLOG.labels(self.service).set(row["n"])
        OLDEST.labels(self.service).set(float(row["age"] or 0))

    # -- the work --------------------------------------------------------
    async def publish_batch(self) -> int:
        """Publish up to one batch from the lanes this relay can lock; returns rows published."""
        limit = self._next_batch
        published = await self._publish(limit)
        self._next_batch = min(limit * 2, self.max_batch_size) if published >= limit else self.batch_size
        return published

    async def _publish(self, limit: int) -> int:
        """One cycle: lock the free lanes, take up to ``limit`` of their rows out of the queue, publish
        them in order, and commit (marks them sent, releases the lanes) once Kafka has them all."""
        producer = await self._ensure_producer()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_TAKE, self.lane_share, limit)
            if not rows:
                return 0
            rows.sort(key=_SEQ)  # each lane's rows in the order they were written
            acked = asyncio.gather(*await self._send(producer, rows))
            try:
                await within(acked, self.publish_timeout)
            except BaseException:  # timed out or stopped: its outcome no longer matters, nor is it an error
                acked.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise
            # Leaving the block commits: the rows, taken out of the queue by _TAKE, are marked sent.
        now = time.time()
        observe_many(PUBLISH_DELAY.labels(self.service), [now - r["created"] for r in rows])
        PUBLISHED.labels(self.service).inc(len(rows))
        self.last_publish_ok = time.monotonic()
        return len(rows)

    async def _send(self, producer: AIOKafkaProducer, rows: list) -> list[asyncio.Future]:
        """Enqueue the rows as record batches, one open batch per partition, in seq order.

        The partition is the one the producer's default partitioner picks for the key
        (murmur2, as every Kafka client), so a key's partition never depends on the path.
        Batches of a partition are handed over in order and the idempotent producer keeps
        that order, so each key's records reach Kafka in the order they were written."""
        futures: list[asyncio.Future] = []
        builders: dict[tuple[str, int], BatchBuilder] = {}
        partitions: dict[str, list[int]] = {}
        for r in rows:
            topic = r["topic"]
            parts = partitions.get(topic)
            if parts is None:
                parts = partitions[topic] = sorted(await producer.partitions_for(topic))
            key = r["key"]
            tp = (topic, parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)])
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = producer.create_batch()
            headers = _TOPIC_HEADERS.get(topic, _HEADERS)
            if builder.append(timestamp=None, key=key, value=r["value"], headers=headers) is None:
                futures.append(await producer.send_batch(builder, tp[0], partition=tp[1]))
                builder = builders[tp] = producer.create_batch()
                builder.append(timestamp=None, key=key, value=r["value"], headers=headers)  # a new batch takes one
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    async def drain(self, timeout: float = 30.0) -> None:
        """Publish until nothing is left (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.publish_batch() == 0:
                async with self.pool.acquire() as conn:
                    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox_pending)"):
                        return
            await asyncio.sleep(0)
        raise TimeoutError("outbox not drained in time")
