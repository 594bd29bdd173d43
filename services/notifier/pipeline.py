"""The notifier's pipeline, independent of Faust: route → render → deliver, retries, digests.

``consumers.py`` feeds these stages from Kafka. Each is safe to run again on the same input
(Kafka delivers at least once):

* route: who gets the event (the read model says which branches and regions it concerns;
  subscriptions and owners say which channels); each delivery's id is derived from the event
  and the channel, so routing an event twice yields the same deliveries. The read model's
  member and session rows are written behind, many a statement. Events of a bulk operation
  (an import) are counted into digests for the channels that did not ask for every row.
* render: what each channel is sent (the event itself for webhooks, the templates for robots
  and e-mail), as a record of the deliver topic keyed by channel. Writes nothing.
* deliver: one task per channel with its own queue and budget (ADR 0006): the head of the queue
  in memory, the rest in PostgreSQL (read back in order), so no channel waits behind another's
  backlog; robots' budgets are per robot key, in PostgreSQL. A claim (one database call)
  creates the delivery's row on first sight (one per event × channel: a unique index) and
  moves it to ``sending`` with a lease under a row lock, so one attempt at a time reaches the
  receiver; the outcome and its events are written in one transaction, through the outbox.
* retries and deferrals wait in PostgreSQL with their due time; the channel's task takes them
  then, ahead of its backlog; a poll over the due-time indexes finds those of channels a worker
  took over (restart, rebalance) and lapsed leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
from prometheus_client import Counter, Gauge, Histogram

from services.notifier import domain, outbound, store, topics, vault
from services.notifier.domain import ROBOTS, TEST_TYPE, Channel, ChannelIndex, Outcome, Target
from services.notifier.render import Names, Renderer
from services.notifier.settings import NotifierSettings
from shared import outbox, regions
from shared.events import CloudEvent, EventData, encode, envelope
from shared.events import membership as m
from shared.events import reform as rf
from shared.events import training as t
from shared.events.notifier import ChannelPaused, ChannelResumed, DeliveryFailed, DeliverySucceeded, NoticeDigest
from shared.timing import wait_set

log = logging.getLogger(__name__)

ROUTED = Counter("changai_notifier_routed_total", "Deliveries created by routing events", ["event_type"])
ATTEMPTS = Counter("changai_notifier_attempts_total", "Delivery attempts by outcome", ["kind", "outcome"])
DELIVERED = Counter("changai_notifier_delivered_total", "Notices delivered", ["kind"])
DEAD = Counter("changai_notifier_dead_letters_total", "Deliveries whose attempts were exhausted", ["kind"])
PAUSED = Counter("changai_notifier_channels_paused_total", "Channels paused for failing", ["kind"])
LATENCY = Histogram(
    "changai_notifier_delivery_latency_seconds",
    "From the domain event's time to the receiver's acknowledgement",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
ATTEMPT_SECONDS = Histogram(
    "changai_notifier_attempt_seconds",
    "Duration of one call to a receiver",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
STAGE = Histogram(
    "changai_notifier_stage_seconds",
    "Time spent per pipeline step",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
LAG = Histogram(
    "changai_notifier_lag_seconds",
    "From the domain event's time to each point of the pipeline",
    ["point"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
# The children of the fixed labels, looked up once: ``labels()`` takes a lock and builds a key each
# call, several times per routed event (profiled).
STAGE_OF = {name: STAGE.labels(name) for name in ("route", "render", "claim", "send", "record")}
LAG_AT = {point: LAG.labels(point) for point in ("route", "rendered", "deliver", "claimed", "sent")}
QUEUED = Gauge("changai_notifier_queued", "Deliveries waiting in this worker's channel queues")
WAITING = Gauge("changai_notifier_retries_waiting", "Records of the retired retry topics this worker holds until due")
SPILLED = Counter(
    "changai_notifier_backlog_written_total",
    "Deliveries of channels with a backlog written to PostgreSQL to wait their turn there",
)
DISPATCHED = Counter(
    "changai_notifier_dispatched_total",
    "Deliveries taken by a channel's task, by the path that "
    "brought them: first (from Kafka), backlog (PostgreSQL), due (a retry or deferral at its time), "
    "lease (a lapsed attempt)",
    ["via"],
)
DUE_LATENESS = Histogram(
    "changai_notifier_due_lateness_seconds",
    "How late a retry or deferral was taken, against its due time",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DIGESTED = Counter(
    "changai_notifier_digested_total",
    "Events of bulk operations counted into digests instead of a notice each",
    ["event_type"],
)
DIGESTS = Counter(
    "changai_notifier_digests_total",
    "Digest notices made (one per channel, batch and type, each quiet period or max age)",
    ["event_type"],
)
OVER_BUDGET = Counter(
    "changai_notifier_robot_over_budget_total",
    "Notices dead-lettered because their robot stayed over its budget too long",
    ["kind"],
)
BULK = Counter(
    "changai_notifier_bulk_lane_total",
    "Rows of bulk operations (an import, a roster, a batch of payments) written straight to their channel's "
    "queue in PostgreSQL for channels that asked for each row (the bulk lane: not on the deliver topic)",
)
HANDED = Counter(
    "changai_notifier_handed_over_total",
    "Deliveries handed straight to their channel's task in this worker (it owns the channel): no Kafka hop",
)
YIELDED = Counter(
    "changai_notifier_bulk_yielded_total",
    "Times bulk work (an import's events, a channel's backlog) waited a moment for quiet notices to pass",
)
SEED_NS = uuid.UUID("a3f0c1d2-7b5e-4e8a-9c3f-5eed0c4a77e1")


def outbox_row(data: EventData) -> tuple:
    """An event as an outbox row (what ``shared.outbox.add`` writes), for a statement of our own."""
    event = envelope(data)
    key, value, _ = encode(event)
    return (uuid.UUID(event.id), data.topic, key.decode(), outbox.lane_of(key.decode()), event.type, value)


def _now() -> datetime:
    return datetime.now(UTC)


# -- channels in memory ------------------------------------------------------------------


def channel_from_row(row, key: bytes) -> Channel:
    config = row["config"]
    config = orjson.loads(config) if isinstance(config, str) else (config or {})
    quiet = row["quiet_hours"]
    quiet = orjson.loads(quiet) if isinstance(quiet, str) else quiet
    try:
        secrets = vault.open_(key, row["id"], bytes(row["secrets"]))
    except Exception:  # noqa: BLE001 - a blob under another key: the channel cannot send, say so once
        log.error("channel secrets cannot be decrypted (wrong CHANGAI_DATA_KEY?)", extra={"channel_id": str(row["id"])})
        secrets = {}
    return Channel(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        owner_kind=row["owner_kind"],
        owner_branch_id=row["owner_branch_id"],
        owner_unit_id=row.get("owner_unit_id"),
        owner_region=row["owner_region"],
        scope=row["scope"],
        event_types=list(row["event_types"]),
        locale=row["locale"],
        status=row["status"],
        config=config,
        secrets=secrets,
        quiet_hours=quiet,
    )


class ChannelCache:
    """Every channel, secrets decrypted in memory only; kept current by LISTEN/NOTIFY."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, key: bytes):
        self.pool, self.dsn, self.key = pool, dsn, key
        self.index = ChannelIndex()
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task | None = None
        self._dirty: set[uuid.UUID] = set()
        self._unknown: dict[uuid.UUID, float] = {}

    async def start(self, refresh_s: float = 30.0) -> None:
        await self.reload()
        try:
            self._listener = await asyncpg.connect(self.dsn)
            await self._listener.add_listener("notifier_channels", self._notified)
        except Exception:  # noqa: BLE001 - the periodic reload still works
            log.warning("LISTEN notifier_channels unavailable; channels refresh every %s s", refresh_s)
        self._task = asyncio.create_task(self._refresh_loop(refresh_s), name="notifier-channel-refresh")

    def _notified(self, _conn, _pid, _channel, payload: str) -> None:
        try:
            self._dirty.add(uuid.UUID(payload))
        except ValueError:
            return
        asyncio.get_running_loop().create_task(self._reload_dirty())

    async def _reload_dirty(self) -> None:
        while self._dirty:
            channel_id = self._dirty.pop()
            await self.reload_one(channel_id)

    async def _refresh_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.reload()
            except Exception:
                log.warning("channel refresh failed", exc_info=True)

    async def reload(self) -> None:
        async with self.pool.acquire() as conn:
            rows = await store.all_channels(conn)
        self.index = ChannelIndex(channel_from_row(r, self.key) for r in rows)

    async def reload_one(self, channel_id: uuid.UUID) -> Channel | None:
        async with self.pool.acquire() as conn:
            row = await store.get_channel(conn, channel_id)
        if row is None:
            self.index.remove(channel_id)
            return None
        ch = channel_from_row(row, self.key)
        self.index.put(ch)
        self._unknown.pop(channel_id, None)
        return ch

    def get(self, channel_id: uuid.UUID) -> Channel | None:
        return self.index.by_id.get(channel_id)

    async def get_or_load(self, channel_id: uuid.UUID) -> Channel | None:
        """The channel, loading it if this worker has not seen it yet. Ids not in the database are
        remembered for a while (records of another deployment sharing the topics cost nothing)."""
        ch = self.get(channel_id)
        if ch is not None:
            return ch
        if self._unknown.get(channel_id, 0.0) > time.monotonic():
            return None
        ch = await self.reload_one(channel_id)
        if ch is None:
            self._unknown[channel_id] = time.monotonic() + 30.0
            if len(self._unknown) > 10000:
                self._unknown.clear()
        return ch

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._listener:
            await self._listener.close()


async def seed_channels(pool: asyncpg.Pool, settings: NotifierSettings) -> list[uuid.UUID]:
    """``CHANGAI_NOTIFIER_WEBHOOKS`` (region → URL) as federation webhook channels that hear
    everything under their region, signed with ``CHANGAI_NOTIFIER_WEBHOOK_SECRET``."""
    key = settings.data_key_bytes()
    made = []
    for region, url in (settings.notifier_webhooks or {}).items():
        r = regions.get(str(region))
        if r is None:
            log.error("CHANGAI_NOTIFIER_WEBHOOKS names an unknown region; skipped", extra={"region": region})
            continue
        channel_id = uuid.uuid5(SEED_NS, f"webhook:{region}")
        wanted = {
            "url": url,
            "signing": [{"secret": settings.notifier_webhook_secret.get_secret_value(), "expires_at": None}],
        }
        async with pool.acquire() as conn, conn.transaction():
            row = await store.get_channel(conn, channel_id, lock=True)
            if row is not None:
                try:
                    if vault.open_(key, channel_id, bytes(row["secrets"])) == wanted:
                        made.append(channel_id)
                        continue
                except Exception:  # noqa: BLE001 - re-seal under the current key
                    pass
            await store.upsert_seed_channel(
                conn,
                id=channel_id,
                region=r.code,
                name=f"{r.name} webhook (settings)",
                secrets=vault.seal(key, channel_id, wanted),
                config={"url": domain.mask_url(url)},
            )
        made.append(channel_id)
    return made


# -- read model and routing -----------------------------------------------------------------


READ_MODEL_TYPES = frozenset(
    {
        m.BranchEstablished.event_type,
        m.BranchUpdated.event_type,
        m.BranchMerged.event_type,
        m.BranchDissolved.event_type,
        m.MemberJoined.event_type,
        m.MemberTransferred.event_type,
        t.SessionScheduled.event_type,
        t.SessionCompleted.event_type,
        rf.UnitRegistered.event_type,
    }
)


class ReadModel:
    """Branches (names, regions, parents), and who member- and session-level events concern."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 60.0, linger_s: float = 0.1):
        self.pool, self.ttl, self.linger = pool, ttl_s, linger_s
        self._lineage: dict[uuid.UUID, tuple[float, list]] = {}
        self._names: dict[uuid.UUID, tuple[float, str]] = {}
        self._sessions: OrderedDict[uuid.UUID, uuid.UUID | None] = OrderedDict()
        # Member → branch and session → organiser are written behind, many a statement: a bulk
        # import's member.joined events then cost no round trip each, so routing keeps pace with
        # them and a quiet channel's event does not wait behind them. An event is acknowledged
        # only once what it wrote is committed (``last_write``); readers flush first.
        self._members: dict[uuid.UUID, uuid.UUID] = {}
        self._organisers: dict[uuid.UUID, uuid.UUID | None] = {}
        self._batch: asyncio.Future | None = None
        self._lock = asyncio.Lock()
        self.last_write: asyncio.Future | None = None
        self._flushes: set[asyncio.Future] = set()  # held until done: the loop keeps only weak references

    def _flush_soon(self) -> None:
        fut = asyncio.ensure_future(self.flush())
        self._flushes.add(fut)
        fut.add_done_callback(self._flushes.discard)

    def _behind(self) -> asyncio.Future:
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(self.linger, self._flush_soon)
        if len(self._members) + len(self._organisers) >= 2000:
            self._flush_soon()
        return self._batch

    async def flush(self) -> None:
        """Commit what was written behind (and wait for a write in flight)."""
        async with self._lock:
            if self._batch is None:
                return
            batch, members, organisers = self._batch, self._members, self._organisers
            self._batch, self._members, self._organisers = None, {}, {}
            delay = 0.2
            while True:
                try:
                    # No transaction: each statement is an idempotent upsert, atomic by itself, and
                    # a failure writes both again; BEGIN and COMMIT would be two more round trips.
                    async with self.pool.acquire() as conn:
                        await store.set_member_branches(conn, members)
                        await store.set_session_organisers(conn, organisers)
                    break
                except asyncio.CancelledError:
                    batch.cancel()
                    raise
                except Exception:
                    log.warning("writing the read model failed; retrying", exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)
            batch.set_result(None)

    async def apply(self, conn, data: EventData) -> None:
        self.last_write = None
        if isinstance(data, (m.BranchEstablished, m.BranchUpdated)):
            await store.upsert_branch(conn, data.branch_id, data.name, data.region_code, data.parent_id, str(data.kind))
            self._forget(data.branch_id)
        elif isinstance(data, m.BranchMerged):
            await store.set_branch_status(conn, data.branch_id, data.region_code, "merged")
        elif isinstance(data, m.BranchDissolved):
            await store.set_branch_status(conn, data.branch_id, data.region_code, "dissolved")
        elif isinstance(data, m.MemberJoined):
            self._members[data.member_id] = data.branch_id
            self.last_write = self._behind()
        elif isinstance(data, m.MemberTransferred):
            self._members[data.member_id] = data.to_branch_id
            self.last_write = self._behind()
        elif isinstance(data, rf.UnitRegistered):  # a reform member unit: a channel may name it as owner
            await store.upsert_reform_unit(conn, data.unit_id, data.name)
        elif isinstance(data, (t.SessionScheduled, t.SessionCompleted)):
            organiser = domain.as_uuid(data.organiser_id) if str(data.organiser_kind) == "branch" else None
            if self._sessions.get(data.session_id, ...) != organiser:  # completed after scheduled: known
                if organiser is not None or data.session_id not in self._organisers:
                    self._organisers[data.session_id] = organiser
                self.last_write = self._behind()
                self._sessions[data.session_id] = organiser
                if len(self._sessions) > 100_000:
                    self._sessions.popitem(last=False)

    def _forget(self, branch_id: uuid.UUID) -> None:
        self._names.pop(branch_id, None)
        self._lineage.clear()  # a parent change moves whole subtrees

    async def lineage(self, conn, branch_ids: set[uuid.UUID]) -> tuple[dict, dict]:
        """(ancestors by branch, region by branch) for these branches."""
        now = time.monotonic()
        missing = [b for b in branch_ids if b not in self._lineage or self._lineage[b][0] < now]
        if missing:
            rows = await store.branch_lineage(conn, missing)
            found: dict[uuid.UUID, list] = {b: [] for b in missing}
            for r in rows:
                found.setdefault(r["start"], []).append(r)
            for b, chain in found.items():
                self._lineage[b] = (now + self.ttl, chain)
                for r in chain:
                    if r["name"]:
                        self._names[r["id"]] = (now + self.ttl, r["name"])
        ancestors, regions_ = {}, {}
        for b in branch_ids:
            chain = self._lineage[b][1]
            ancestors[b] = [r["id"] for r in chain if r["depth"] > 0]
            for r in chain:
                regions_[r["id"]] = r["region_code"]
        return ancestors, regions_

    async def names(self, conn, branch_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        now = time.monotonic()
        out, missing = {}, []
        for b in branch_ids:
            hit = self._names.get(b)
            if hit and hit[0] > now:
                out[b] = hit[1]
            else:
                missing.append(b)
        if missing:
            for b, name in (await store.branch_names(conn, missing)).items():
                self._names[b] = (now + self.ttl, name)
                out[b] = name
        return out


def branch_ids_in(data: EventData) -> set[uuid.UUID]:
    """Every id in the event that may name a branch (for names in the notice)."""
    found = set()
    for name in (*domain.BRANCH_FIELDS, "parent_id", "organiser_id", "beneficiary_id"):
        value = domain.field_of(data, name)
        if (b := domain.as_uuid(value)) is not None:
            found.add(b)
    return found


class LazyConnection:
    """A pooled connection taken only when a query is made (routing usually needs none)."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool, self.conn = pool, None

    async def __aenter__(self) -> LazyConnection:
        return self

    async def __aexit__(self, *exc) -> None:
        if self.conn is not None:
            await self.pool.release(self.conn)

    async def _get(self):
        if self.conn is None:
            self.conn = await self.pool.acquire()
        return self.conn

    async def execute(self, *args, **kwargs):
        return await (await self._get()).execute(*args, **kwargs)

    async def fetch(self, *args, **kwargs):
        return await (await self._get()).fetch(*args, **kwargs)

    async def fetchrow(self, *args, **kwargs):
        return await (await self._get()).fetchrow(*args, **kwargs)

    async def fetchval(self, *args, **kwargs):
        return await (await self._get()).fetchval(*args, **kwargs)


DELIVERY_NS = uuid.UUID("d3c1b5e4-2f6a-4e0b-8a7d-6c9e1f2b3a40")


def delivery_id(event_id: str, channel_id: uuid.UUID) -> uuid.UUID:
    """The one delivery of an event to a channel: the same id however often the event is routed."""
    return uuid.uuid5(DELIVERY_NS, f"{event_id}/{channel_id}")


class Router:
    def __init__(self, pool: asyncpg.Pool, channels: ChannelCache, model: ReadModel):
        self.pool, self.channels, self.model = pool, channels, model
        self.digester: Digester | None = None

    def wants(self, event_type: str | None) -> bool:
        """Whether an event needs parsing: the read model learns from it, or a channel may hear it.
        (A record that is not even JSON is parsed, so that it goes to the dead letters.)"""
        if event_type is None:
            return True
        return event_type in READ_MODEL_TYPES or self.channels.index.anyone_hears(event_type)

    async def route(
        self, ce: CloudEvent, data: EventData, raw: bytes | None = None
    ) -> tuple[list[dict], list[asyncio.Future]]:
        """Apply the read model; the deliveries of this event (one per channel, ids derived from
        the event and the channel, so routing the same event again yields the same deliveries),
        and what the event must wait for before it is acknowledged (its read-model write, digests)."""
        LAG_AT["route"].observe(max(0.0, (_now() - ce.time).total_seconds()))
        with STAGE_OF["route"].time():
            index = self.channels.index
            async with LazyConnection(self.pool) as conn:  # most events need no database at all
                await self.model.apply(conn, data)
                written = self.model.last_write  # read now: other topics' agents route meanwhile
                chosen = await self._targets(conn, ce, data, index)
        held = [written] if written is not None else []
        digester = self.digester
        batch = batch_of(data) if digester is not None and chosen else None
        # a bulk operation: a digest for each channel that did not ask for every row
        if digester is not None and batch is not None:
            each = []
            for tg in chosen:
                if wants_each(tg.channel, ce.type):
                    each.append(tg)
                else:
                    held.append(digester.add(tg.channel, batch, ce, data, tg.branch_id, raw))
            chosen = each
        if chosen:
            ROUTED.labels(ce.type).inc(len(chosen))
        # A bulk operation's rows for the channels that asked for each one take the bulk lane
        # (straight to the channel's queue in PostgreSQL), never the deliver topic: see Deliverer.take_bulk.
        return [
            {
                "d": str(delivery_id(ce.id, tg.channel.id)),
                "c": str(tg.channel.id),
                "b": str(tg.branch_id) if tg.branch_id else None,
                "f": str(tg.fallback_for) if tg.fallback_for else None,
                **({"bulk": True} if batch is not None else {}),
            }
            for tg in chosen
        ], held

    async def _targets(self, conn, ce: CloudEvent, data: EventData, index: ChannelIndex) -> list[Target]:
        if ce.type in domain.NOT_ROUTED or not index.by_id or not index.anyone_hears(ce.type):
            return []
        if isinstance(data, ChannelPaused):
            paused = self.channels.get(data.channel_id) or await self.channels.reload_one(data.channel_id)
            if paused is None:
                return []
            regions_: dict[uuid.UUID, str] = {}
            if paused.owner_branch_id:
                _, regions_ = await self.model.lineage(conn, {paused.owner_branch_id})
            return domain.paused_notice_targets(self.channels.index, paused, regions_)
        if isinstance(data, ChannelResumed):
            ch = self.channels.get(data.channel_id) or await self.channels.reload_one(data.channel_id)
            if ch is None or ch.status != "active" or not domain.subscribed(ch.event_types, ce.type):
                return []
            return [Target(ch, ch.owner_branch_id)]
        c = domain.concern(ce.type, data)
        if c.members or c.sessions:
            await self.model.flush()  # what was written behind is read here
        if c.members:
            c.branches.update(await store.members_branches(conn, list(c.members)))
        if c.sessions:
            c.branches.update(await store.sessions_branches(conn, list(c.sessions)))
        ancestors, branch_regions = await self.model.lineage(conn, c.branches) if c.branches else ({}, {})
        return domain.targets(index, ce.type, c, ancestors, branch_regions)


# -- rendering ---------------------------------------------------------------------------------
FALLBACK_NOTE = {
    "zh-CN": "（此通知原应发往「{name}」，该渠道已暂停，暂由本渠道代收；请核对配置后恢复该渠道。）",
    "en": '(This notice was meant for "{name}", which is paused; this channel stands in. '
    "Please fix and resume that channel.)",
}


def deliver_record(delivery_id, channel_id, event_type: str | None, event_time: datetime, **extra) -> dict:
    """A record of the deliver topic. From the render stage it carries the whole delivery (``i``
    event id, ``b`` branch, ``r`` region, ``f`` fallback for, ``p`` payload); later ones (retries,
    resends, sweeps) only name an existing delivery."""
    return {"d": str(delivery_id), "c": str(channel_id), "e": event_type, "t": event_time.timestamp(), **extra}


def routed_fields(record: dict) -> dict | None:
    """The delivery as the render stage made it, to create its row on the first claim."""
    if not record.get("i") or record.get("p") is None:
        return None
    return {
        "event_id": uuid.UUID(record["i"]),
        "event_type": record["e"],
        "event_time": datetime.fromtimestamp(record["t"], UTC),
        "branch_id": uuid.UUID(record["b"]) if record.get("b") else None,
        "region": record.get("r"),
        "fallback_for": uuid.UUID(record["f"]) if record.get("f") else None,
        "payload": record["p"].encode(),
    }


class RenderStage:
    def __init__(self, pool: asyncpg.Pool, channels: ChannelCache, model: ReadModel, renderer: Renderer):
        self.pool, self.channels, self.model, self.renderer = pool, channels, model, renderer

    async def render(
        self, ce: CloudEvent, data: EventData, raw: bytes, deliveries: list[dict]
    ) -> list[tuple[bytes, bytes]]:
        """Each delivery's payload, as records for the deliver topic, keyed by channel."""
        return [(r["c"].encode(), orjson.dumps(r)) for r in await self.records(ce, data, raw, deliveries)]

    async def records(self, ce: CloudEvent, data: EventData, raw: bytes, deliveries: list[dict]) -> list[dict]:
        """Each delivery's payload, as deliver records (:func:`deliver_record`)."""
        with STAGE_OF["render"].time():
            records = await self._render(ce, data, raw, deliveries)
        LAG_AT["rendered"].observe(max(0.0, (_now() - ce.time).total_seconds()))
        return records

    async def _render(self, ce: CloudEvent, data: EventData, raw: bytes, deliveries: list[dict]) -> list[dict]:
        kinds = {ch.kind for d in deliveries if (ch := self.channels.get(uuid.UUID(d["c"])))}
        names = Names()
        if kinds - {"webhook"}:  # webhooks get the event itself: no names needed
            async with self.pool.acquire() as conn:
                names = Names(
                    branches=await self.model.names(conn, branch_ids_in(data)),
                    channels={ch.id: ch.name for ch in self.channels.index.by_id.values()}
                    if ce.type.startswith("changai.notifier.")
                    else {},
                )
        region = domain.field_of(data, "region_code") or domain.field_of(data, "owner_region")
        records = []
        cache: dict[tuple, bytes] = {}
        for d in deliveries:
            ch = await self.channels.get_or_load(uuid.UUID(d["c"]))
            if ch is None:
                continue
            fallback = d.get("f")
            key = (ch.kind, ch.locale, ch.config.get("format"), ch.config.get("keyword"), fallback)
            if key not in cache:
                cache[key] = self._payload(ce, data, raw, ch, names, fallback)
            records.append(
                deliver_record(
                    d["d"], d["c"], ce.type, ce.time, i=ce.id, b=d.get("b"), r=region, f=fallback, p=cache[key].decode()
                )
            )
        return records

    def _payload(
        self, ce: CloudEvent, data: EventData, raw: bytes, ch: Channel, names: Names, fallback: str | None
    ) -> bytes:
        if ch.kind == "webhook":
            return raw  # the event itself, byte for byte as published
        note = None
        if fallback:
            paused = self.channels.get(uuid.UUID(fallback))
            note = FALLBACK_NOTE.get(ch.locale, FALLBACK_NOTE["zh-CN"]).format(
                name=paused.name if paused else fallback[:8]
            )
        try:
            notice = self.renderer.notice(ce.type, data, ch.locale, names, event_time=ce.time, note=note)
        except Exception:
            log.exception("template failed; sending a plain notice", extra={"event_type": ce.type})
            from services.notifier.render import Notice

            notice = Notice(ce.type, ch.locale, ce.type, f"{ce.subject or ce.id}", [], note)
        body = self.renderer.layout(
            notice, ch.kind, ch.config.get("format", "markdown"), keyword=ch.config.get("keyword")
        )
        return orjson.dumps(body)


# -- digests of bulk operations ----------------------------------------------------------------

DIGEST_NS = uuid.UUID("0d1e5a7c-3b9f-4c21-8e6a-d19e57c0a7b3")


def batch_of(data: EventData) -> tuple[str, uuid.UUID] | None:
    """The bulk operation an event belongs to, if any: a member import (``import_id``), or any
    event carrying a ``batch_id`` (a roster upload, a batch of payments)."""
    # import_id is a UUID in the event model (membership.py): as_uuid only narrows its type
    import_id = domain.as_uuid(domain.field_of(data, "import_id"))
    if import_id:
        return "membership.import", import_id
    batch_id = domain.as_uuid(domain.field_of(data, "batch_id"))
    if batch_id:
        return f"{data.topic.removesuffix('.events')}.batch", batch_id
    return None


def wants_each(ch: Channel, event_type: str) -> bool:
    """A channel asks for a notice per row of a bulk operation by subscribing to the type itself
    (``changai.membership.member.joined.v1``); ``*`` or a prefix gets digests."""
    return event_type in ch.event_types


@dataclass
class DigestBucket:
    channel_id: uuid.UUID
    batch_kind: str
    batch_id: uuid.UUID
    event_type: str
    first_event_id: str
    first_time: datetime
    last_time: datetime
    branch_id: uuid.UUID | None
    count: int = 0
    by_region: dict = field(default_factory=dict)
    branches: set = field(default_factory=set)
    opened: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)
    first: tuple | None = None  # (event, data, raw) of its first event: a batch of one is told as that notice
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Digester:
    """Bulk operations told to a channel as digests (counts, regions, the import's report), not a
    notice per row. Events of a batch are counted per channel and type; a digest goes out when the
    batch has been quiet for ``notifier_digest_quiet_s`` (usually: the import ended) or has run
    ``notifier_digest_max_s`` since its last digest. The events are acknowledged only once their
    digest is on the deliver topic, so a crash counts them again rather than losing them."""

    def __init__(
        self,
        settings: NotifierSettings,
        channels: ChannelCache,
        render: RenderStage,
        send: Callable[[bytes, bytes], Awaitable[None]],
    ):
        self.settings, self.channels, self.render, self.send = settings, channels, render, send
        self.buckets: dict[tuple, DigestBucket] = {}
        self.task: asyncio.Task | None = None
        # Deliverer.hand_over: digests for channels this worker owns skip the deliver topic too
        self.hand_over: Callable[[list[dict]], Awaitable[tuple[list[dict], list[asyncio.Future]]]] | None = None

    def add(
        self,
        ch: Channel,
        batch: tuple[str, uuid.UUID],
        ce: CloudEvent,
        data: EventData,
        branch_id: uuid.UUID | None,
        raw: bytes | None = None,
    ) -> asyncio.Future:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="notifier-digests")
        key = (ch.id, batch[1], ce.type)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = DigestBucket(ch.id, batch[0], batch[1], ce.type, ce.id, ce.time, ce.time, branch_id)
            if raw is not None:
                b.first = (ce, data, raw)
        b.count += 1
        b.last_time = max(b.last_time, ce.time)
        region = domain.field_of(data, "region_code") or "—"
        b.by_region[region] = b.by_region.get(region, 0) + 1
        if branch := domain.as_uuid(domain.field_of(data, "branch_id") or domain.field_of(data, "organiser_id")):
            b.branches.add(branch)
        b.touched = time.monotonic()
        DIGESTED.labels(ce.type).inc()
        return b.done

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.notifier_digest_quiet_s / 2))
            now = time.monotonic()
            for key, b in list(self.buckets.items()):
                quiet = now - b.touched >= self.settings.notifier_digest_quiet_s
                if quiet or now - b.opened >= self.settings.notifier_digest_max_s:
                    del self.buckets[key]
                    await self._flush(b, final=quiet)

    async def _send_records(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            delay = 0.5
            while True:
                try:
                    await self.send(key, value)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("sending a digest failed; will try again", exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)

    async def _flush(self, b: DigestBucket, *, final: bool) -> None:
        ch = await self.channels.get_or_load(b.channel_id)
        if ch is None:
            b.done.set_result(None)
            return
        if b.count == 1 and b.first is not None:
            # A batch of one (one session's roster, a single payment) is told as the notice itself.
            ce1, data1, raw1 = b.first
            one = [
                {"d": str(delivery_id(ce1.id, ch.id)), "c": str(ch.id), "b": str(b.branch_id) if b.branch_id else None}
            ]
            await self._deliver(b, await self.render.records(ce1, data1, raw1, one))
            return
        report = None
        if b.batch_kind == "membership.import" and self.settings.notifier_import_report_url:
            report = self.settings.notifier_import_report_url.format(id=b.batch_id)
        data = NoticeDigest(
            batch_kind=b.batch_kind,
            batch_id=b.batch_id,
            event_type=b.event_type,
            count=b.count,
            by_region=dict(b.by_region),
            branches=len(b.branches),
            first_time=b.first_time,
            last_time=b.last_time,
            report_url=report,
            final=final,
        )
        # The same events (after a crash, read again) make the same digest: the same id, sent once.
        event_id = str(
            uuid.uuid5(DIGEST_NS, f"{b.channel_id}/{b.batch_id}/{b.event_type}/{b.first_event_id}/{b.count}")
        )
        ce = envelope(data, event_id=event_id)
        _, raw, _ = encode(ce)
        records = await self.render.records(
            ce,
            data,
            raw,
            [{"d": str(delivery_id(ce.id, ch.id)), "c": str(ch.id), "b": str(b.branch_id) if b.branch_id else None}],
        )
        await self._deliver(b, records)
        DIGESTS.labels(b.event_type).inc()
        log.info(
            "digest sent",
            extra={"channel_id": str(ch.id), "event_type": b.event_type, "count": b.count, "final": final},
        )

    async def _deliver(self, b: DigestBucket, records: list[dict]) -> None:
        """To the channel's task when this worker owns it, else onto the deliver topic; the batch's
        events are acknowledged (``b.done``) once the digest is stored for good either way."""
        held: list[asyncio.Future] = []
        if self.hand_over is not None:
            records, held = await self.hand_over(records)
        await self._send_records([(r["c"].encode(), orjson.dumps(r)) for r in records])
        if not held:
            b.done.set_result(None)
            return

        def stored(_: asyncio.Future) -> None:
            if not b.done.done():
                b.done.set_result(None)

        asyncio.gather(*held).add_done_callback(stored)


# -- quiet work first ----------------------------------------------------------------------------


class Urgency:
    """Quiet work goes first: bulk work (routing an import's events, sending a channel's backlog)
    waits while a notice that is not part of a backlog is on its way through this worker.

    One worker is one event loop: routing 100,000 members and sending one channel's backlog share
    its CPU with the trickle of other channels' notices, turn by turn, and on a loaded machine
    each turn is long. So before each unit of bulk work, :meth:`bulk_turn` waits (up to
    ``max_wait_s``, so a bulk operation always moves on) while anything quiet is pending: records
    in the buffers of the other agents (registered by the consumers), or notices queued for
    channels without a backlog. While the import's agent waits, its buffer fills and Faust takes
    its topic out of the fetch, so the consumer hands over the other topics' records at once."""

    def __init__(self, max_wait_s: float = 0.2, tick_s: float = 0.005):
        self.max_wait_s, self.tick_s = max_wait_s, tick_s
        self.buffers: dict[str, Callable[[], int]] = {}  # agent (topic) -> records waiting in its buffer
        self.in_bulk: set[str] = set()  # agents whose last event was of a bulk operation: their buffers are bulk
        self.queued: Callable[[], bool] = lambda: False  # a first attempt waits in a channel's queue
        # Quiet work past the queues: an event being routed and rendered, a first attempt or a retry
        # being claimed and sent. Counted too, or bulk work would take the loop (and the database)
        # back at every await of the quiet notice's own path, between its buffer and its receiver.
        # Each for its first ``hold_s`` only: a slow receiver (up to the attempt timeout) or a database
        # away must not hold an import back for that long.
        self.hold_s = 0.5
        self._flights: dict[int, float] = {}  # a piece of quiet work -> when it started (monotonic)
        self._seq = itertools.count()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Around a piece of quiet work that awaits: bulk work waits meanwhile (at most ``max_wait_s``
        a unit, and for the first ``hold_s`` of the piece)."""
        token = next(self._seq)
        self._flights[token] = time.monotonic()
        try:
            yield
        finally:
            self._flights.pop(token, None)

    @property
    def in_flight(self) -> int:
        """Pieces of quiet work still holding bulk work back."""
        since = time.monotonic() - self.hold_s
        return sum(1 for started in self._flights.values() if started > since)

    def pending(self, agents: bool = True) -> bool:
        if self.in_flight > 0 or self.queued():
            return True
        return agents and any(size() > 0 for name, size in self.buffers.items() if name not in self.in_bulk)

    async def bulk_turn(self, *, agents: bool = True) -> None:
        """Wait while quiet work is pending. ``agents``: count the agents' buffers too (routing an
        import's event gives way to other topics' events; a backlog's notice only to first attempts
        already in a channel's queue and to the deliver agent's records)."""
        deadline = time.monotonic() + self.max_wait_s
        while self.pending(agents) and time.monotonic() < deadline:
            YIELDED.inc()
            await asyncio.sleep(self.tick_s)


# -- delivering --------------------------------------------------------------------------------


@dataclass
class Item:
    delivery_id: uuid.UUID
    record: dict
    ack: Callable[[], Awaitable[None]]
    via: str = "first"  # first (from Kafka) | backlog (read back from PostgreSQL) | due (retry, deferral) | lease
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def event_type(self) -> str | None:
        return self.record.get("e")

    @property
    def channel_id(self) -> uuid.UUID:
        return uuid.UUID(self.record["c"])


async def _nothing() -> None:
    return None


@dataclass
class ChannelState:
    """One channel's place in this worker: its queue in memory (the head of it; the rest waits in
    PostgreSQL), its own budget, its own task. Nothing of one channel waits behind another's."""

    channel_id: uuid.UUID
    window: domain.SlidingWindow
    robot: str | None = None  # the robot (hash of kind and key) whose budget it shares
    queue: deque = field(default_factory=deque)
    ids: set = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cooldown_until: float = 0.0
    backlogged: bool = False
    spilling: bool = False  # new deliveries go to PostgreSQL (behind those already there)
    spill_pending: int = 0  # handed to the spiller, not yet written
    drained: bool = False  # every backlog row written so far is read: wait for the spiller to write more
    cursor: tuple | None = None  # (next_attempt_at, id) of the last backlog row read into memory
    next_due: float = float("inf")  # epoch s: a retry, deferral or backlog in PostgreSQL is due then
    over_budget_since: float | None = None  # epoch s: its robot refused or had no room since, without a success
    # retries this worker scheduled, (due epoch s, seq, item): taken at their time straight from here,
    # without reading them back from PostgreSQL first (which stays the way after a restart)
    retries: list = field(default_factory=list)
    # how long one attempt occupies the channel (claim, send, record), a moving average: a retry due
    # sooner than that is waited for rather than started behind a new notice
    cycle_s: float = 0.05
    task: asyncio.Task | None = None


def robot_of(ch: Channel | None) -> str | None:
    """A robot's identity for its budget: WeCom and DingTalk count messages per key / access
    token, whichever channels use it. A hash, never the key."""
    if ch is None or ch.kind not in ROBOTS:
        return None
    key = ch.secrets.get("key") if ch.kind == "wecom" else ch.secrets.get("token")
    if not key:
        return None
    return hashlib.sha256(f"{ch.kind}:{key}".encode()).hexdigest()[:32]


class GroupCommit:
    """Successful attempts of every channel, recorded together: whoever arrives while a batch is
    being written waits for the next one, so under load many outcomes share one round trip and
    one commit, and alone an outcome is written at once. ``record`` returns when its row is
    committed (the caller acknowledges its Kafka record only then)."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 200):
        self.pool, self.max_batch = pool, max_batch
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def record(self, args: tuple) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="notifier-group-commit")
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((args, fut))
        self.wake.set()
        await fut

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                try:
                    async with self.pool.acquire() as conn:
                        await store.delivered_many(conn, [args for args, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each caller retries its own
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)


class Spiller:
    """Writes the deliveries of channels with a backlog to PostgreSQL, many rows a statement, and
    only then acknowledges their Kafka records: the deliver topic is read as fast as rows can be
    written, whatever any receiver's pace, so a record for an idle channel never waits behind
    another channel's backlog."""

    def __init__(self, pool: asyncpg.Pool, max_rows: int = 2000, linger_s: float = 0.1):
        self.pool, self.max_rows, self.linger_s = pool, max_rows, linger_s
        self.pending: list[tuple[tuple, Callable[[], Awaitable[None]], ChannelState | None]] = []
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.task: asyncio.Task | None = None
        self.on_written: Callable[[ChannelState], None] = lambda st: None

    async def add(self, row: tuple, ack: Callable[[], Awaitable[None]], st: ChannelState | None) -> None:
        """``st``: the channel's state when this worker owns it (else its owner finds the rows by its poll)."""
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="notifier-spiller")
        while len(self.pending) >= self.max_rows * 4:  # back-pressure: Kafka waits, memory does not grow
            self.room.clear()
            await self.room.wait()
        if st is not None:
            st.spill_pending += 1
        self.pending.append((row, ack, st))
        self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                if len(self.pending) < self.max_rows:
                    # Rows come an event at a time (an import is routed event by event): without a
                    # moment's wait each statement held one or two rows, a round trip each (1,877
                    # statements for a 3,000-row bulk lane, profiled). Nothing here is urgent: these
                    # rows queue behind a backlog, and their events are acknowledged once written.
                    await asyncio.sleep(self.linger_s)
                batch, self.pending = self.pending[: self.max_rows], self.pending[self.max_rows :]
                self.room.set()
                delay = 0.2
                while True:
                    try:
                        async with self.pool.acquire() as conn:
                            await store.spill(conn, [row for row, _, _ in batch])
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("writing a channel's backlog failed; retrying")
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10)
                SPILLED.inc(len(batch))
                for _, ack, st in batch:
                    if st is not None:
                        st.spill_pending -= 1
                    await ack()
                for st in {id(st): st for _, _, st in batch if st is not None}.values():
                    self.on_written(st)


def spill_row(delivery_id: uuid.UUID, record: dict) -> tuple | None:
    """A deliver record as a delivery row for :func:`store.spill` (None: it names an existing row)."""
    routed = routed_fields(record)
    if routed is None:
        return None
    return (
        delivery_id,
        routed["event_id"],
        routed["event_type"],
        routed["event_time"],
        uuid.UUID(record["c"]),
        routed["branch_id"],
        routed["region"],
        routed["fallback_for"],
        routed["payload"],
    )


class Deliverer:
    """One task per channel: budget, quiet hours, claim, send, record — in the channel's order.

    Each channel holds at most ``notifier_max_queued_per_channel`` deliveries in memory; beyond
    that they wait in PostgreSQL (:class:`Spiller`) and are read back in order. Retries and
    deferrals wait there too, with their due time: the channel's task takes them at that time,
    ahead of its backlog (the worker that records a retry owns the channel; after a restart or a
    rebalance :meth:`poll` finds them by the due-time index)."""

    def __init__(
        self,
        settings: NotifierSettings,
        pool: asyncpg.Pool,
        http: httpx.AsyncClient,
        channels: ChannelCache,
        renderer: Renderer,
    ):
        self.settings, self.pool, self.http, self.channels, self.renderer = settings, pool, http, channels, renderer
        self.states: dict[uuid.UUID, ChannelState] = {}
        self._creating: dict[uuid.UUID, asyncio.Lock] = {}
        self._seq = itertools.count()  # ties in a channel's retry heap
        self.recorder = GroupCommit(pool)
        self.spiller = Spiller(pool)
        self.spiller.on_written = self._backlog_written
        # Whether this worker owns a channel (its partition of notifier.deliver): only the owner
        # schedules a channel's retries and backlog, so its budget is kept in one place.
        self.owns: Callable[[uuid.UUID], bool] = lambda channel_id: True
        self.urgency = Urgency()
        self.urgency.queued = self.first_attempt_waiting

    def first_attempt_waiting(self) -> bool:
        """Whether a channel without a backlog has a notice queued for its first attempt or a retry at
        its time (queued in the last 2 s: a channel kept busy by a slow receiver does not hold bulk
        work up for longer)."""
        recent = time.monotonic() - 2.0
        return any(
            st.queue
            and not st.spilling
            and not st.backlogged
            and st.queue[0].via in ("first", "due")
            and st.queue[0].queued_at > recent
            for st in self.states.values()
        )

    async def submit(
        self, delivery_id: uuid.UUID, channel_id: uuid.UUID, record: dict, ack: Callable[[], Awaitable[None]]
    ) -> None:
        if record.get("t"):
            LAG_AT["deliver"].observe(max(0.0, time.time() - record["t"]))
        st = self.states.get(channel_id)
        if st is None:
            if await self.channels.get_or_load(channel_id) is None:
                await ack()  # not a channel of this deployment
                return
            st = await self._state(channel_id)
        if delivery_id in st.ids:
            await ack()  # already waiting here: a duplicate record
            return
        if st.spilling or len(st.queue) >= self.settings.notifier_max_queued_per_channel:
            st.spilling = True
            row = spill_row(delivery_id, record)
            if row is None:  # a resend, test or release names a row that is already there ('ready')
                await ack()
                self._due(st, time.time())
            else:
                await self.spiller.add(row, ack, st)
            return
        st.queue.append(Item(delivery_id, record, ack))
        st.ids.add(delivery_id)
        QUEUED.inc()
        st.wake.set()

    async def hand_over(self, records: list[dict]) -> tuple[list[dict], list[asyncio.Future]]:
        """Deliver records (from the render stage, or a digest) for the channels this worker owns go
        straight to their channel's task: no hop through ``notifier.deliver``, where a quiet channel's
        notice waited its turn in the consumer with everything else (issue 15). Returns the records
        for the channels other workers own (for the deliver topic) and, for those handed over, a
        future each, done when the delivery is stored for good: its first attempt's outcome recorded
        (delivered, a retry or a deferral in PostgreSQL) or its row written to the channel's backlog.
        The event they came from is acknowledged only then, so a crash before reads it again and
        routes it to the same delivery ids (one per event × channel): nothing lost, nothing doubled.
        A record that cannot be handed over (the database away) takes the deliver topic instead."""
        loop = asyncio.get_running_loop()
        rest: list[dict] = []
        held: list[asyncio.Future] = []
        for record in records:
            channel_id = uuid.UUID(record["c"])
            if not self.owns(channel_id):
                rest.append(record)
                continue
            stored = loop.create_future()

            async def ack(stored: asyncio.Future = stored) -> None:
                if not stored.done():
                    stored.set_result(None)

            try:
                await self.submit(uuid.UUID(record["d"]), channel_id, record, ack)
            except asyncio.CancelledError:
                raise
            except Exception:  # the deliver topic is the way that needs no database
                log.warning("handing a delivery to its channel failed; it takes the deliver topic", exc_info=True)
                rest.append(record)
                continue
            HANDED.inc()
            held.append(stored)
        return rest, held

    def _backlog_written(self, st: ChannelState) -> None:
        # Read back what was written even while more is on its way (a bulk import's rows keep
        # coming for minutes): the spiller writes one statement at a time, so rows written later
        # sort after the cursor and are read in their turn.
        st.drained = False
        st.wake.set()

    async def take_bulk(self, records: list[dict]) -> asyncio.Future:
        """The bulk lane: the rows of a bulk operation (an import, a roster, a batch of payments) for
        the channels that asked for each row are written straight to those channels' queues in
        PostgreSQL, many a statement, never onto the deliver topic. So a 100,000-member import adds
        no record in front of a quiet channel's notice on ``notifier.deliver``: the cost of the fan-out
        is one row each in a bulk write, and the flooded channel reads its rows back at its own pace.
        Returns a future done when every row is written (the event is acknowledged then)."""
        done = asyncio.get_running_loop().create_future()
        left = len(records)
        if not left:
            done.set_result(None)
            return done

        async def written() -> None:
            nonlocal left
            left -= 1
            if left == 0 and not done.done():
                done.set_result(None)

        for record in records:
            delivery = uuid.UUID(record["d"])
            channel_id = uuid.UUID(record["c"])
            row = spill_row(delivery, record)
            if row is None:
                await written()
                continue
            st = None
            if self.owns(channel_id):
                st = self.states.get(channel_id)
                if st is None and await self.channels.get_or_load(channel_id) is not None:
                    st = await self._state(channel_id)
                if st is not None and not st.spilling:
                    st.spilling, st.cursor = True, None  # its newer deliveries queue behind these, in order
            BULK.inc()
            await self.spiller.add(row, written, st)
        return done

    def _due(self, st: ChannelState, at: float) -> None:
        """Something of this channel waits in PostgreSQL from ``at`` (epoch s) on."""
        if at < st.next_due:
            st.next_due = at
            st.wake.set()

    async def _state(self, channel_id: uuid.UUID) -> ChannelState:
        lock = self._creating.setdefault(channel_id, asyncio.Lock())
        async with lock:
            if channel_id in self.states:
                return self.states[channel_id]
            ch = await self.channels.get_or_load(channel_id)
            limit, window = self.settings.budget(ch.kind if ch else "webhook")
            robot = robot_of(ch)
            # A margin over the robot's own window: our clock starts at the send, theirs at the receipt.
            st = ChannelState(
                channel_id, domain.SlidingWindow(0 if robot else limit, window * 1.02 + 0.05), robot=robot
            )
            if limit > 0 and not robot:
                async with self.pool.acquire() as conn:
                    st.window.preload(await store.recent_sends(conn, channel_id, window))
            st.task = asyncio.create_task(self._run(st), name=f"notifier-channel-{channel_id}")
            self.states[channel_id] = st
            return st

    async def poll(self) -> int:
        """Channels this worker owns with work due in PostgreSQL (a retry or deferral due, a lapsed
        lease, a backlog): their tasks are told when. The path after a restart or a rebalance; a
        running worker schedules its own retries as it records them."""
        horizon = max(1.0, self.settings.notifier_sweep_interval_s * 2)
        async with self.pool.acquire() as conn:
            rows = await store.due_channels(conn, horizon)
        n = 0
        for r in rows:
            channel_id = r["channel_id"]
            if not self.owns(channel_id):
                continue
            st = self.states.get(channel_id)
            if st is None:
                if await self.channels.get_or_load(channel_id) is None:
                    continue
                st = await self._state(channel_id)
            if r["backlog"] and not st.spilling:
                st.spilling, st.cursor = True, None  # its newer deliveries are in PostgreSQL: keep them in order
            if r["backlog"]:
                st.drained = False
            self._due(st, r["due"] or time.time())
            n += 1
        return n

    async def stop(self) -> None:
        tasks = [st.task for st in self.states.values() if st.task]
        if self.spiller.task:
            tasks.append(self.spiller.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refill(self, st: ChannelState) -> None:
        """Take what is due of this channel from PostgreSQL: retries, deferrals and lapsed leases
        first (ahead of everything queued), then its backlog in order, as far as memory allows."""
        cap = self.settings.notifier_max_queued_per_channel
        room = max(0, cap - len(st.queue)) if st.spilling else 0
        pending_before = st.spill_pending
        st.next_due = float("inf")
        async with self.pool.acquire() as conn:
            due_now, backlog, later = await store.due_of_channel(conn, st.channel_id, ready=room, after=st.cursor)
        front = []
        for r in due_now:
            if r["id"] not in st.ids:
                via = "lease" if r["status"] == "sending" else "due"
                front.append(
                    Item(
                        r["id"],
                        deliver_record(r["id"], r["channel_id"], r["event_type"], r["event_time"], due=r["due"]),
                        _nothing,
                        via,
                    )
                )
        for item in reversed(front):
            st.queue.appendleft(item)
            st.ids.add(item.delivery_id)
        added = 0
        for r in backlog:
            if r["id"] not in st.ids:
                st.queue.append(
                    Item(
                        r["id"],
                        deliver_record(r["id"], r["channel_id"], r["event_type"], r["event_time"]),
                        _nothing,
                        "backlog",
                    )
                )
                st.ids.add(r["id"])
                added += 1
        if backlog:
            st.cursor = (backlog[-1]["next_attempt_at"], backlog[-1]["id"])
        QUEUED.inc(len(front) + added)
        st.drained = st.spilling and len(backlog) < room
        if st.spilling and len(backlog) < room and st.spill_pending == 0 and pending_before == 0:
            st.spilling = False  # the backlog is all in memory now: new deliveries queue here again
            st.cursor, st.drained = None, False
        if len(due_now) >= 500:
            st.next_due = time.time()
        if later is not None:
            self._due(st, later)

    def _take_retries(self, st: ChannelState) -> None:
        """The retries this worker scheduled that are due now, to the front of the channel's queue."""
        now = time.time()
        due = []
        while st.retries and st.retries[0][0] <= now:
            item = heapq.heappop(st.retries)[2]
            if item.delivery_id not in st.ids:
                due.append(item)
        for item in reversed(due):
            item.queued_at = time.monotonic()
            st.queue.appendleft(item)
            st.ids.add(item.delivery_id)
        QUEUED.inc(len(due))

    def _refill_wanted(self, st: ChannelState) -> bool:
        if st.queue and st.queue[0].via == "due":
            return False  # a retry at its time goes first; what else is due is read after it
        if st.next_due <= time.time():
            return True
        return st.spilling and not st.drained and len(st.queue) <= self.settings.notifier_max_queued_per_channel // 2

    async def _run(self, st: ChannelState) -> None:
        while True:
            if st.retries and st.retries[0][0] <= time.time():
                self._take_retries(st)
            if self._refill_wanted(st):
                try:
                    await self._refill(st)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("reading a channel's queue failed", extra={"channel_id": str(st.channel_id)})
                    st.next_due = time.time() + 1.0
            if not st.queue:
                st.backlogged = False
                st.wake.clear()
                if self._refill_wanted(st):
                    continue
                due = min(st.next_due, st.retries[0][0]) if st.retries else st.next_due
                wait = min(300.0, max(0.0, due - time.time()))
                if (
                    not await wait_set(st.wake, wait)
                    and not st.queue
                    and not st.retries
                    and st.next_due == float("inf")
                    and not st.spilling
                    and st.spill_pending == 0
                ):
                    self.states.pop(st.channel_id, None)
                    return
                continue
            if st.retries and st.queue[0].via != "due":
                # A retry of this channel falls due within one attempt's time: it goes first, rather than
                # late behind a notice started now (which then waits at most that long). Before any budget
                # is taken: a robot's slot is not spent on a wait.
                ahead = st.retries[0][0] - time.time()
                if 0 < ahead <= min(st.cycle_s, 0.5):
                    await asyncio.sleep(ahead)
                    continue
            now = time.monotonic()
            if st.cooldown_until > now:
                st.backlogged = True
                await asyncio.sleep(min(st.cooldown_until - now, max(0.01, st.next_due - time.time())))
                continue
            wait = st.window.wait_time()
            if wait > 0:
                st.backlogged = True
                await asyncio.sleep(min(wait, max(0.01, st.next_due - time.time())))
                continue
            ch = self.channels.get(st.channel_id)
            if st.robot and ch is not None:
                if await self._expire_over_budget(st, ch):
                    continue
                async with self.pool.acquire() as conn:
                    wait = await store.robot_take(
                        conn,
                        st.robot,
                        self.settings.notifier_robot_rate,
                        self.settings.notifier_robot_window_s * 1.02 + 0.05,
                    )
                if wait > 0:
                    st.backlogged = True
                    st.over_budget_since = st.over_budget_since or time.time()
                    await asyncio.sleep(min(wait, max(0.01, st.next_due - time.time())))
                    continue
            if st.spilling or st.queue[0].via == "backlog":
                # a backlog's notice: quiet channels' first attempts go first
                await self.urgency.bulk_turn(agents=False)
                if not st.queue:
                    continue
            batch = [st.queue.popleft()]
            if (
                st.backlogged
                and ch is not None
                and ch.kind in ROBOTS
                and self.settings.notifier_merge_bursts
                and st.queue
            ):
                while st.queue and len(batch) < 50:
                    batch.append(st.queue.popleft())
            for item in batch:
                DISPATCHED.labels(item.via).inc()
                if item.via == "due" and item.record.get("due"):
                    DUE_LATENESS.observe(max(0.0, time.time() - item.record["due"]))
            started = time.monotonic()
            try:
                back = await self._process(st, ch, batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery step failed; retrying", extra={"channel_id": str(st.channel_id)})
                back = batch
                await asyncio.sleep(1.0)
            else:
                st.cycle_s = 0.8 * st.cycle_s + 0.2 * (time.monotonic() - started)
            for item in reversed(back):
                st.queue.appendleft(item)
            done = [i for i in batch if i not in back]
            for item in done:
                st.ids.discard(item.delivery_id)
            QUEUED.dec(len(done))

    async def _expire_over_budget(self, st: ChannelState, ch: Channel) -> bool:
        """A robot over its budget for longer than ``notifier_robot_max_wait_s`` (its notices already
        merged into digests): the notices waiting longer are dead letters (logged, on the DLQ, a
        ``delivery.failed`` event, counted for the operators' alert) rather than a loop forever."""
        limit = self.settings.notifier_robot_max_wait_s
        if limit <= 0 or st.over_budget_since is None or time.time() - st.over_budget_since < limit:
            return False
        cutoff = time.time() - limit
        old = [i for i in st.queue if (i.record.get("t") or time.time()) < cutoff]
        if not old:
            return False
        for item in old:
            st.queue.remove(item)
        send_id = uuid.uuid4()
        claims = []
        for item in old:
            decision, claim = await self._claim(ch, item, send_id)
            if decision == "claimed":
                claims.append(claim)
        if claims:
            await self._finish(
                ch,
                claims,
                Outcome(
                    "permanent",
                    error=f"robot over budget: waited more than {int(limit)} s for a place in its "
                    f"{self.settings.notifier_robot_rate} messages a {int(self.settings.notifier_robot_window_s)} s",
                ),
                send_id,
                over_budget=True,
            )
            OVER_BUDGET.labels(ch.kind).inc(len(claims))
            log.warning(
                "robot over budget: notices dead-lettered",
                extra={"channel_id": str(ch.id), "kind": ch.kind, "count": len(claims)},
            )
        for item in old:
            st.ids.discard(item.delivery_id)
            await item.ack()
        QUEUED.dec(len(old))
        return True

    def _defer_until(self, ch: Channel | None, event_type: str | None) -> datetime | None:
        if ch is None or not ch.quiet_hours or not event_type:
            return None
        if event_type in self.settings.notifier_critical_types:
            return None
        return domain.quiet_until(_now(), ch.quiet_hours)

    async def _claim(self, ch: Channel | None, item: Item, send_id: uuid.UUID | None):
        with STAGE_OF["claim"].time():
            return await self._claim_now(ch, item, send_id)

    async def _claim_now(self, ch: Channel | None, item: Item, send_id: uuid.UUID | None):
        defer_until = self._defer_until(ch, item.event_type)
        async with self.pool.acquire() as conn:
            decision, claim = await store.claim(
                conn,
                item.delivery_id,
                item.channel_id,
                lease_s=self.settings.lease_s,
                send_id=send_id,
                routed=routed_fields(item.record),
                defer_until=defer_until,
                deferred_topic=None,
            )
        if decision == "deferred" and defer_until is not None:
            st = self.states.get(item.channel_id)
            if st is not None:
                self._due(st, defer_until.timestamp())
        return decision, claim

    async def _process(self, st: ChannelState, ch: Channel | None, batch: list[Item]) -> list[Item]:
        """Attempt the batch (one notice, or a digest of several); returns items to put back."""
        if ch is None:
            ch = await self.channels.get_or_load(st.channel_id)
        if ch is None:  # the channel is not in the database (not ours): nothing to send
            for item in batch:
                await item.ack()
            return []
        back: list[Item] = []
        if len(batch) > 1:
            payloads = {i.delivery_id: i.record["p"].encode() for i in batch if i.record.get("p") is not None}
            missing = [i.delivery_id for i in batch if i.delivery_id not in payloads]
            if missing:
                async with self.pool.acquire() as conn:
                    payloads.update(await store.peek_payloads(conn, missing))
            bodies = [orjson.loads(payloads[i.delivery_id]) for i in batch if i.delivery_id in payloads]
            _, fits = self.renderer.digest(
                ch.kind, ch.config.get("format", "markdown"), ch.locale, bodies, keyword=ch.config.get("keyword")
            )
            with_payload = [i for i in batch if i.delivery_id in payloads]
            back = with_payload[max(fits, 1) :]
            batch = [i for i in batch if i not in back]
        send_id = uuid.uuid4()
        claims = []
        # A quiet channel's first attempt or retry holds bulk work back until it is sent (not while
        # it is recorded: its receiver has it then).
        quiet = not st.spilling and not st.backlogged and batch[0].via in ("first", "due")
        with self.urgency.quiet() if quiet else contextlib.nullcontext():
            for item in batch:
                decision, claim = await self._claim(ch, item, send_id)
                if decision == "claimed":
                    claims.append((item, claim))
                else:
                    await item.ack()
            if not claims:
                return back
            LAG_AT["claimed"].observe(max(0.0, (_now() - claims[0][1].event_time).total_seconds()))
            with STAGE_OF["send"].time():
                outcome, body_claims = await self._send(ch, [c for _, c in claims])
        answered = _now()
        LAG_AT["sent"].observe(max(0.0, (answered - claims[0][1].event_time).total_seconds()))
        with STAGE_OF["record"].time():
            await self._finish(ch, body_claims, outcome, send_id, answered=answered)
        if outcome.result != "throttled":
            st.window.record()
            if outcome.delivered:
                st.over_budget_since = None
        else:
            st.cooldown_until = time.monotonic() + (outcome.retry_after_s or 60.0)
            st.over_budget_since = st.over_budget_since or time.time()
        for item, _ in claims:
            await item.ack()
        return back

    async def _send(self, ch: Channel | None, claims: list[store.Claim]) -> tuple[Outcome, list[store.Claim]]:
        s = self.settings
        timeout = s.notifier_attempt_timeout_s
        if ch is None or not ch.secrets:
            return Outcome("retry", error="channel not available to this worker"), claims
        if len(claims) > 1:
            bodies = [orjson.loads(c.payload) for c in claims]
            digest, _n = self.renderer.digest(
                ch.kind, ch.config.get("format", "markdown"), ch.locale, bodies, keyword=ch.config.get("keyword")
            )
            body = orjson.dumps(digest)
        else:
            body = claims[0].payload
        claim = claims[0]
        started = time.perf_counter()
        if ch.kind == "webhook":
            msg_id = str(claim.event_id) if claim.event_type != TEST_TYPE else str(claim.delivery_id)
            outcome = await outbound.send_webhook(
                self.http,
                ch.secrets["url"],
                ch.secrets.get("signing", []),
                msg_id,
                body,
                timeout=timeout,
                allow_private=s.outbound_allow_private,
            )
        elif ch.kind == "wecom":
            outcome = await outbound.send_wecom(
                self.http,
                s.notifier_wecom_url,
                ch.secrets["key"],
                body,
                timeout=timeout,
                throttle_s=s.notifier_wecom_throttle_s,
            )
        elif ch.kind == "dingtalk":
            outcome = await outbound.send_dingtalk(
                self.http,
                s.notifier_dingtalk_url,
                ch.secrets["token"],
                ch.secrets.get("secret"),
                body,
                timeout=timeout,
                blocked_s=s.notifier_dingtalk_blocked_s,
            )
        else:
            message_id = f"<{claim.event_id}.{claim.channel_id}@changai.notifier>"
            outcome = await outbound.send_email(
                s, ch.secrets.get("to", []), orjson.loads(body), message_id, timeout=timeout
            )
        ATTEMPT_SECONDS.labels(ch.kind).observe(time.perf_counter() - started)
        return outcome, claims

    async def _finish(
        self,
        ch: Channel,
        claims: list[store.Claim],
        o: Outcome,
        send_id: uuid.UUID,
        *,
        over_budget: bool = False,
        answered: datetime | None = None,
    ) -> None:
        """Record the outcome of one request for every notice it carried, in one transaction,
        retrying until the database takes it (the attempt happened: it must be in the log).
        ``answered``: when the receiver answered (a retry's delay counts from then)."""
        delay = 0.5
        while True:
            try:
                retries = await self._record(ch, claims, o, send_id, over_budget=over_budget, since=answered)
                st = self.states.get(ch.id)
                if retries and st is not None:
                    # this worker owns the channel: its retries wait in its own task, taken at their
                    # time from memory; the due time in PostgreSQL stays the way back after a restart
                    for due, c in retries:
                        record = deliver_record(c.delivery_id, c.channel_id, c.event_type, c.event_time, due=due)
                        item = Item(c.delivery_id, record, _nothing, "due")
                        heapq.heappush(st.retries, (due, next(self._seq), item))
                    self._due(st, min(due for due, _ in retries))
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording an attempt failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _record(
        self,
        ch: Channel,
        claims: list[store.Claim],
        o: Outcome,
        send_id: uuid.UUID,
        *,
        over_budget: bool = False,
        since: datetime | None = None,
    ) -> list[tuple[float, store.Claim]]:
        """Returns the retries it scheduled: (due epoch s, claim)."""
        s = self.settings
        retried: list[tuple[float, store.Claim]] = []
        digest_of = len(claims) if len(claims) > 1 else None
        outcome_name = (
            "expired"
            if over_budget
            else {"delivered": "delivered", "retry": "failed", "throttled": "throttled", "permanent": "refused"}[
                o.result
            ]
        )
        now = _now()
        paused_now = None
        if o.delivered and len(claims) == 1:
            c = claims[0]
            event = None
            if c.event_type != TEST_TYPE:
                event = outbox_row(
                    DeliverySucceeded(
                        delivery_id=c.delivery_id,
                        event_id=c.event_id,
                        event_type=c.event_type,
                        channel_id=c.channel_id,
                        channel_kind=ch.kind,
                        owner_region=ch.owner_region,
                        attempts=c.n,
                        latency_ms=max(0, int((now - c.event_time).total_seconds() * 1000)),
                    )
                )
            await self.recorder.record(
                store.delivered_args(
                    c,
                    status_code=o.status_code,
                    errcode=o.errcode,
                    error=o.error,
                    latency_ms=o.latency_ms,
                    payload_hash=o.body_hash,
                    send_id=send_id,
                    event=event,
                )
            )
            ATTEMPTS.labels(ch.kind, outcome_name).inc()
            DELIVERED.labels(ch.kind).inc()
            LATENCY.labels(ch.kind).observe(max(0.0, (now - c.event_time).total_seconds()))
            return retried
        robot = robot_of(ch)
        async with self.pool.acquire() as conn, conn.transaction():
            if o.result == "throttled" and robot:
                # The robot refused for sending too fast: every channel of it waits (DingTalk blocks
                # the robot for 10 minutes; sending into the block would only extend it).
                await store.block_robot(conn, robot, o.retry_after_s or 60.0, o.errcode)
            channel_failing = False
            for c in claims:
                test = c.event_type == TEST_TYPE
                await store.finish_attempt(
                    conn,
                    c,
                    outcome=outcome_name,
                    status_code=o.status_code,
                    errcode=o.errcode,
                    error=o.error,
                    latency_ms=o.latency_ms,
                    payload_hash=o.body_hash,
                    digest_of=digest_of,
                    send_id=send_id,
                )
                if o.delivered:
                    await store.mark_delivered(conn, c, status_code=o.status_code, errcode=o.errcode)
                    if not test:
                        latency_ms = max(0, int((now - c.event_time).total_seconds() * 1000))
                        await outbox.add(
                            conn,
                            DeliverySucceeded(
                                delivery_id=c.delivery_id,
                                event_id=c.event_id,
                                event_type=c.event_type,
                                channel_id=c.channel_id,
                                channel_kind=ch.kind,
                                owner_region=ch.owner_region,
                                attempts=c.n,
                                latency_ms=latency_ms,
                            ),
                        )
                    continue
                if o.result == "throttled" and not test:
                    due = await store.mark_retry(
                        conn,
                        c,
                        delay_s=o.retry_after_s or 60.0,
                        counts=False,
                        status_code=o.status_code,
                        errcode=o.errcode,
                        error=o.error,
                        since=since,
                    )
                    retried.append((due.timestamp(), c))
                    continue
                failures = c.failures + 1
                delay = (
                    None
                    if (o.result == "permanent" or test)
                    else domain.retry_delay(
                        s.schedule(ch.kind), failures, jitter=s.notifier_retry_jitter, retry_after_s=o.retry_after_s
                    )
                )
                if not test and not over_budget:
                    channel_failing = True
                if delay is not None:
                    due = await store.mark_retry(
                        conn,
                        c,
                        delay_s=delay,
                        counts=True,
                        status_code=o.status_code,
                        errcode=o.errcode,
                        error=o.error,
                        since=since,
                    )
                    retried.append((due.timestamp(), c))
                    continue
                await store.mark_dead(conn, c, status_code=o.status_code, errcode=o.errcode, error=o.error)
                if test:
                    continue
                await outbox.add(
                    conn,
                    DeliveryFailed(
                        delivery_id=c.delivery_id,
                        event_id=c.event_id,
                        event_type=c.event_type,
                        channel_id=c.channel_id,
                        channel_kind=ch.kind,
                        owner_region=ch.owner_region,
                        attempts=c.n,
                        last_error=(o.error or "failed")[:500],
                    ),
                )
                await store.enqueue(
                    conn,
                    topics.DEAD,
                    str(c.channel_id),
                    {
                        "delivery_id": str(c.delivery_id),
                        "event_id": str(c.event_id),
                        "event_type": c.event_type,
                        "channel_id": str(c.channel_id),
                        "channel_kind": ch.kind,
                        "attempts": c.n,
                        "last_status_code": o.status_code,
                        "last_errcode": o.errcode,
                        "last_error": o.error,
                        "payload_hash": o.body_hash,
                        "dead_at": now.isoformat(),
                    },
                )
                DEAD.labels(ch.kind).inc()
            if o.delivered and not all(c.event_type == TEST_TYPE for c in claims):
                await store.channel_succeeded(conn, ch.id)
            elif channel_failing:
                failing_for = await store.channel_failed(conn, ch.id)
                reason = None
                if o.pause:
                    reason = o.error or "the receiver refused the channel's configuration"
                elif failing_for >= s.notifier_pause_after_s:
                    reason = f"failing for {int(failing_for)} s; last error: {o.error or 'unknown'}"
                if reason:
                    paused_now = await store.pause_channel(conn, ch.id, reason)
                    if paused_now:
                        await outbox.add(
                            conn,
                            ChannelPaused(
                                channel_id=ch.id,
                                channel_kind=ch.kind,
                                owner_region=ch.owner_region,
                                reason=reason[:500],
                            ),
                        )
        ATTEMPTS.labels(ch.kind, outcome_name).inc(len(claims))
        if o.delivered:
            DELIVERED.labels(ch.kind).inc(len(claims))
            for c in claims:
                LATENCY.labels(ch.kind).observe(max(0.0, (now - c.event_time).total_seconds()))
        if paused_now:
            PAUSED.labels(ch.kind).inc()
            ch.status = "paused"
            log.warning("channel paused", extra={"channel_id": str(ch.id), "kind": ch.kind})
        return retried


# -- retries and deferrals ---------------------------------------------------------------------


class DueQueue:
    """Records of the retry and deferral topics, held until due, then forwarded to the
    deliver topic and only then acknowledged (a crash means they are read again)."""

    def __init__(self, forward: Callable[[bytes, bytes], Awaitable[None]]):
        self.forward = forward
        self.heap: list = []
        self.seq = itertools.count()
        self.wake = asyncio.Event()

    def add(self, key: bytes, record: dict, ack: Callable[[], Awaitable[None]]) -> None:
        due = float(record.get("due") or 0.0)
        heapq.heappush(self.heap, (due, next(self.seq), key, record, ack))
        WAITING.inc()
        self.wake.set()

    async def run(self) -> None:
        while True:
            if not self.heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            due = self.heap[0][0]
            delay = due - time.time()
            if delay > 0:
                self.wake.clear()
                await wait_set(self.wake, min(delay, 60.0))
                continue
            _, _, key, record, ack = heapq.heappop(self.heap)
            forwarded = {k: v for k, v in record.items() if k not in ("due",)}
            backoff = 0.5
            while True:
                try:
                    await self.forward(key, orjson.dumps(forwarded))
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("forwarding a retry failed; will try again", exc_info=True)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10)
            WAITING.dec()
            await ack()
