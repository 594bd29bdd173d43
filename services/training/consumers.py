"""What training does with others' events: the read model of members and branches, and the intake's commands.

``membership.events`` → ``members`` / ``branches`` tables, enough to refuse enrolling someone
who is not an active member and to know a member's branch and region. Every event is applied
in one transaction with its inbox row (``shared.inbox.claim``), so redelivery changes nothing.

Two ways in, one set of rules (``store.membership_statement``):

* steady state: ``shared.consumer.EventConsumer`` (parse, validate, dead letters), one event per
  transaction;
* catching up (a fresh service on a long topic, a rebuild): a batched replay, one transaction
  per batch with the same inbox rows, an order of magnitude faster. The service catches up this
  way in the background when it starts, then hands over to the live consumer.

Rebuild (``python -m services.training rebuild-members``): empties the read model and its inbox
rows, starts a new *generation*, and replays the topic from the beginning. The consumer group is
named after the generation (``<group>-g<N>``), so a new generation starts from offset 0; a
running service notices the new generation (every apply checks it under a share lock) and moves
to the new group by itself.

Commands from the intake (``training.commands``, ``changai.command.training.attendance.v1``): a training
provider's attendance report, applied through the SAME use case as the API's attendance route
(``usecases.record_attendance``, and ``usecases.start_session`` first when the session has not started,
as a roster does), with an actor built from the source's region scope, so a session outside it is not
found (404, the one region rule). The trainee is found in the member read model by membership's lookup
hash (no ID number reaches training). Each command is applied once (the inbox claim, by command id, in the
transaction of its effect) and its outcome goes on ``training.events`` (``changai.training.command.
applied.v1`` / ``.rejected.v1``) for the intake to answer the source.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.training import domain, store, usecases
from shared.consumer import EventConsumer, apply_each_once
from shared.consumer import commands_part as shared_commands_part
from shared.errors import Conflict, NotFound
from shared.events import CloudEvent, EventData, InvalidEvent, UnknownEventType, decode, parse_data
from shared.events.intake import AttendanceCommand, TrainingCommandApplied, TrainingCommandRejected
from shared.events.membership import (
    BranchDissolved,
    BranchEstablished,
    BranchMerged,
    BranchUpdated,
    MemberJoined,
    MemberLapsed,
    MemberLeft,
    MemberLookup,
    MemberSkillLevelChanged,
    MemberTransferred,
)
from shared.kafka import connection
from shared.timing import wait_set

log = logging.getLogger(__name__)

TOPIC = "membership.events"
INBOX_CONSUMER = "training.members"
CATCH_UP_ATTEMPTS = 6  # ~30 s of retries (Kafka still starting) before the live consumer does it alone
EVENT_TYPES = {
    c.event_type
    for c in (
        MemberJoined,
        MemberTransferred,
        MemberLeft,
        MemberLapsed,
        MemberSkillLevelChanged,
        MemberLookup,  # a lookup hash a member's member.joined lacked (membership's publish-lookups)
        BranchEstablished,
        BranchUpdated,
        BranchMerged,
        BranchDissolved,
    )
}


class StaleGeneration(Exception):
    """The read model was reset for a rebuild after this consumer started."""


def group_id(prefix: str, generation: int) -> str:
    return f"{prefix}-g{generation}"


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic`` (fresh metadata: a consumer that has not subscribed has none cached)."""
    # aiokafka has no public call for an unsubscribed topic's partitions (pinned: tests/unit/test_library_pins.py)
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
    found = cluster.partitions_for_topic(topic)
    if not found:
        raise RuntimeError(f"topic {topic} not found")
    return [TopicPartition(topic, p) for p in sorted(found)]


# ---------------------------------------------------------------------------- applying
async def apply_batch(conn: asyncpg.Connection, generation: int, items: list[tuple[uuid.UUID, EventData]]) -> int:
    """Inside the caller's transaction: apply events in order, each unless applied before; returns how many."""
    if not items:
        return 0
    if await store.model_generation(conn, share_lock=True) != generation:
        raise StaleGeneration()
    claimed = await store.claim_many(conn, INBOX_CONSUMER, [i for i, _ in items])
    todo = []
    for event_id, data in items:
        if event_id in claimed:
            claimed.discard(event_id)  # a duplicate inside the batch is applied once
            todo.append(data)
    await store.apply_membership_events(conn, todo)
    return len(todo)


async def replay(
    conn: asyncpg.Connection,
    bootstrap: str,
    group: str,
    topic: str,
    generation: int,
    *,
    from_beginning: bool,
    batch: int = 2000,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Apply ``topic`` in batches from the group's committed offsets (or the beginning) to the end
    offsets seen now, then commit those offsets for the group (best effort: a live member of the
    group keeps its own position, and the inbox makes the overlap harmless)."""
    consumer = AIOKafkaConsumer(
        **connection(bootstrap),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=batch,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    applied = skipped = invalid = 0
    committed = True
    try:
        partitions = await topic_partitions(consumer, topic)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            for tp in partitions:
                offset = await consumer.committed(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
        end = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > await consumer.position(tp)}
        last_report = time.monotonic()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch)
            for tp, records in batches.items():
                items = []
                for record in records:
                    if record.offset >= end[tp]:
                        break
                    try:
                        event = decode(record.value)
                        if event.type not in EVENT_TYPES:
                            skipped += 1
                            continue
                        items.append((uuid.UUID(event.id), parse_data(event)))
                    except (InvalidEvent, UnknownEventType, ValueError):
                        invalid += 1  # the live consumer parks these in the dead-letter topic
                async with conn.transaction():
                    n = await apply_batch(conn, generation, items)
                applied += n
                skipped += len(items) - n
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            if progress and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                progress(f"... {applied} events applied, {len(remaining)} partition(s) still replaying")
        try:
            await consumer.commit({tp: end[tp] for tp in partitions})
        except Exception as exc:  # noqa: BLE001 - the group has a live member: it keeps its own position
            committed = False
            log.info(
                "replay offsets not committed; the group's live member keeps its position",
                extra={"group": group, "error": exc.__class__.__name__},
            )
    finally:
        await consumer.stop()
    return {"applied": applied, "skipped": skipped, "invalid": invalid, "committed": committed}


# ---------------------------------------------------------------------------- the live part
class MemberReadModel:
    """Started with the API (a ``parts`` entry of ``create_app``): catches up in batches in the
    background, then follows the topic with ``EventConsumer``; moves to a new generation by itself."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bootstrap: str,
        group_prefix: str,
        *,
        topic: str = TOPIC,
        check_interval: float = 5.0,
        catch_up: bool = True,
    ):
        self.pool = pool
        self.bootstrap = bootstrap
        self.group_prefix = group_prefix
        self.topic = topic
        self.check_interval = check_interval
        self.catch_up = catch_up
        self.generation: int | None = None
        self.consumer: EventConsumer | None = None
        self.caught_up: dict | None = None
        self._stale = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="training-members")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.consumer:
            await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow_generation()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("member read model failed; restarting")
                if self.consumer:
                    await self.consumer.stop()
                    self.consumer = None
                await asyncio.sleep(self.check_interval)

    async def _follow_generation(self) -> None:
        """Catch up and follow the current generation until a rebuild starts a new one."""
        self.generation = await store.model_generation(self.pool)
        self._stale.clear()
        group = group_id(self.group_prefix, self.generation)
        for attempt in range(CATCH_UP_ATTEMPTS if self.catch_up else 0):
            started = time.monotonic()
            try:
                async with self.pool.acquire() as conn:
                    self.caught_up = await replay(
                        conn, self.bootstrap, group, self.topic, self.generation, from_beginning=False
                    )
                log.info(
                    "member read model caught up",
                    extra={"group": group, **self.caught_up, "seconds": round(time.monotonic() - started, 2)},
                )
                break
            except StaleGeneration:
                return
            except Exception:
                last = attempt == CATCH_UP_ATTEMPTS - 1
                log.warning(
                    "batched catch-up failed; " + ("the live consumer takes over" if last else "retrying"),
                    exc_info=True,
                )
                if not last:
                    await asyncio.sleep(min(2**attempt, 10))
        self.consumer = EventConsumer(
            self.bootstrap, group, [self.topic], batch_handler=self._handle_batch, event_types=EVENT_TYPES
        )
        self.consumer.start()
        log.info("member read model consumer started", extra={"generation": self.generation, "group": group})
        while True:
            await wait_set(self._stale, self.check_interval)
            try:
                current = await store.model_generation(self.pool)
            except Exception:
                log.warning("cannot read the read model's generation", exc_info=True)
                continue
            if current != self.generation:
                log.info(
                    "member read model was reset; moving to the new generation",
                    extra={"old": self.generation, "new": current},
                )
                await self.consumer.stop()
                self.consumer = None
                return

    async def _handle_batch(self, items: list[tuple[CloudEvent, EventData]]) -> None:
        """A partition's batch in one transaction: the live consumer keeps up with bulk imports."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                assert self.generation is not None  # set before the consumer starts
                await apply_batch(conn, self.generation, [(uuid.UUID(e.id), d) for e, d in items])
        except StaleGeneration:
            # Not applied, offset not committed: wait here until this consumer is replaced.
            self._stale.set()
            await asyncio.Event().wait()


def read_model_part(group_prefix: str, topic: str = TOPIC):
    async def part(app) -> Callable[[], Awaitable[None]]:
        model = MemberReadModel(app.state.db, app.state.settings.kafka_bootstrap, group_prefix, topic=topic)
        await model.start()
        app.state.members = model
        return model.stop

    return part


# ---------------------------------------------------------------------------- rebuild
async def rebuild(
    dsn: str,
    bootstrap: str,
    group_prefix: str,
    *,
    topic: str = TOPIC,
    batch: int = 2000,
    progress: Callable[[str], None] = print,
) -> dict:
    """Truncate the read model and its inbox rows, start a new generation, and replay the topic
    from the beginning to the end offsets seen at the start under the new generation's group.

    A running service moves to the new group by itself; while it is still replaying too, both
    apply safely (inbox rows + per-partition order), and its offsets win.
    """
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            generation = await store.reset_member_model(conn, INBOX_CONSUMER)
        group = group_id(group_prefix, generation)
        progress(f"read model emptied; generation {generation}, consumer group {group}, replaying {topic}")
        counts = await replay(
            conn, bootstrap, group, topic, generation, from_beginning=True, batch=batch, progress=progress
        )
        await store.mark_rebuilt(conn)
        members = await conn.fetchval("SELECT count(*) FROM members")
        active = await conn.fetchval("SELECT count(*) FROM members WHERE status = 'active'")
        branches = await conn.fetchval("SELECT count(*) FROM branches")
    finally:
        await conn.close()
    result = {
        "generation": generation,
        "group": group,
        **counts,
        "members": members,
        "active_members": active,
        "branches": branches,
        "seconds": round(time.monotonic() - started, 2),
    }
    progress(f"rebuilt: {result}")
    return result


# ---------------------------------------------------------------------------- commands from the intake
COMMANDS_INBOX = "training.commands"  # the inbox's consumer name
_ALREADY = frozenset({"attended", "passed", "failed"})  # an enrolment that has its attendance already


async def _attend(conn: asyncpg.Connection, event: CloudEvent, cmd: AttendanceCommand, today) -> TrainingCommandApplied:
    actor = cmd.acting_as("training:write")
    session = await usecases.get_session(conn, cmd.session_id, actor)  # outside the scope: 404
    member = await store.member_by_hash(conn, bytes.fromhex(cmd.member_hash))
    if member is None:
        raise NotFound("member", "with that ID number", kind="unknown-trainee")
    if session["status"] == "scheduled":  # a provider does not start sessions: its first report does, as a
        # roster's row does; a report dated before the scheduled start is refused by start_session's rule
        started_on = min(cmd.attended_on, today)
        await usecases.start_session(
            conn, cmd.session_id, domain.StartIn.model_construct(started_on=started_on), actor, today
        )
    done = await usecases.record_attendance(
        conn, cmd.session_id, domain.AttendanceIn.model_construct(member_ids=[member["id"]]), actor, today
    )
    [outcome] = done.outcomes
    changed = outcome.problem is None
    if outcome.problem is not None:
        problem = outcome.problem
        already = isinstance(problem, Conflict) and problem.extra.get("enrolment_status") in _ALREADY
        if not already:  # not enrolled, withdrawn: the use case's refusal is the answer
            raise problem
    assert outcome.enrolment_id is not None  # an enrolment was found (recorded now or before)
    return TrainingCommandApplied(
        **cmd.outcome_fields(event.id),
        session_id=cmd.session_id,
        enrolment_id=outcome.enrolment_id,
        member_id=member["id"],
        took_effect=changed,
    )


async def apply_commands(
    conn: asyncpg.Connection, items: list[tuple[CloudEvent, AttendanceCommand]], today
) -> list[TrainingCommandApplied | TrainingCommandRejected]:
    """Inside the caller's transaction (a partition's batch): each attendance not applied before, once, in its
    savepoint, its outcome to the outbox (``shared.consumer.apply_each_once``)."""

    async def attend(conn: asyncpg.Connection, event: CloudEvent, cmd: AttendanceCommand) -> TrainingCommandApplied:
        return await _attend(conn, event, cmd, today)

    return await apply_each_once(conn, COMMANDS_INBOX, items, attend, TrainingCommandRejected)


def commands_part(group_id: str):
    """A ``create_app`` part: the consumer of ``training.commands`` (``shared.consumer.commands_part``)."""
    return shared_commands_part("training.commands", group_id, (AttendanceCommand,), lambda app: apply_commands)
