"""Stateful property test of the outbox relay with random kills (hypothesis ``RuleBasedStateMachine``).

Rules write events in transactions (some rolled back), start relays and kill them (cancel the task, as a
SIGKILL leaves the rows: whatever the relay did not mark sent is sent again) at random points, including the
window between Kafka's acknowledgement and marking the rows sent, forced with a fault point that exists only
in this test (``HeldRelay``, a subclass). At the end of each example the topic is read to its end offsets:
every committed event is there at least once, no rolled-back event is there, and per key the order of first
appearances is the commit order. Real PostgreSQL and Kafka; hypothesis drives the test's event loop from a
worker thread.
"""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date

import asyncpg
import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from shared import outbox
from shared.events import decode
from shared.events.membership import BranchEstablished
from shared.kafka import read_to_end
from shared.topics import BY_NAME

pytestmark = pytest.mark.integration

TOPIC = "membership.events"
STEP_TIMEOUT_S = 120  # one rule on a loaded 2-core machine; a bound, not a measurement


class HeldRelay(outbox.OutboxRelay):
    """A relay with a fault point: once Kafka has acknowledged every record of its first batch it sets
    ``sent`` and holds, never marking the rows sent, until it is killed there."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = asyncio.Event()

    async def _send(self, producer, rows):
        futures = await super()._send(producer, rows)

        async def hold():
            await asyncio.gather(*futures)  # every record of the batch acknowledged by Kafka
            self.sent.set()
            await asyncio.Event().wait()  # the mark never comes: the relay is killed here

        return [*futures, asyncio.ensure_future(hold())]


@dataclass
class Context:
    loop: asyncio.AbstractEventLoop
    pool: asyncpg.Pool
    dsn: str
    bootstrap: str
    stats: Counter = field(default_factory=Counter)


def event(key: uuid.UUID, n: int) -> BranchEstablished:
    return BranchEstablished(branch_id=key, name=f"machine step {n}", credit_code="91350100M000100Y43",
                             region_code="640104", city_code="640100", industry_section="C", kind="enterprise",
                             founded_on=date(2021, 1, 1))


class RelayMachine(RuleBasedStateMachine):
    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx
        self.keys = [uuid.uuid4() for _ in range(3)]  # this example's aggregates (the topic is shared)
        self.committed: list[tuple[str, str]] = []  # (event id, key) in commit order
        self.rolled_back: set[str] = set()
        self.relays: list[outbox.OutboxRelay] = []
        self.n = 0
        ctx.stats["examples"] += 1

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.ctx.loop).result(STEP_TIMEOUT_S)

    def relay(self, cls=outbox.OutboxRelay, batch_size: int = 50) -> outbox.OutboxRelay:
        return cls(self.ctx.pool, self.ctx.bootstrap, "machine", dsn=self.ctx.dsn, poll_interval=0.1,
                   batch_size=batch_size, max_batch_size=batch_size)

    async def write(self, key_ixs: list[int], rollback: bool) -> list[str]:
        ids = []
        try:
            async with self.ctx.pool.acquire() as conn, conn.transaction():
                for i in key_ixs:
                    self.n += 1
                    key = self.keys[i % len(self.keys)]
                    ids.append((str((await outbox.add(conn, event(key, self.n))).id), str(key)))
                if rollback:
                    raise _RolledBack
        except _RolledBack:
            self.rolled_back |= {i for i, _ in ids}
            self.ctx.stats["rolled back"] += len(ids)
            return []
        self.committed += ids
        self.ctx.stats["committed"] += len(ids)
        return [i for i, _ in ids]

    # -- rules ----------------------------------------------------------------------------------------------
    @rule(key_ixs=st.lists(st.integers(0, 2), min_size=1, max_size=6), rollback=st.booleans())
    def write_in_a_transaction(self, key_ixs, rollback):
        self.run(self.write(key_ixs, rollback))

    @precondition(lambda self: len(self.relays) < 3)
    @rule(batch_size=st.sampled_from([1, 3, 50]))
    def start_relay(self, batch_size):
        async def start():
            relay = self.relay(batch_size=batch_size)
            relay.start()
            self.relays.append(relay)

        self.run(start())
        self.ctx.stats["relays started"] += 1

    @precondition(lambda self: self.relays)
    @rule(i=st.integers(0, 10), turns=st.integers(0, 30))
    def kill_relay(self, i, turns):
        """Kill a relay after a few turns of the event loop: wherever it is (reading, sending, marking)."""
        async def kill():
            relay = self.relays.pop(i % len(self.relays))
            for _ in range(turns):
                await asyncio.sleep(0)
            await relay.stop()

        self.run(kill())
        self.ctx.stats["relays killed"] += 1

    @rule(key_ixs=st.lists(st.integers(0, 2), min_size=1, max_size=4))
    def kill_between_send_and_mark(self, key_ixs):
        """The crash window itself: Kafka has the records, the rows are not marked sent, the relay dies."""
        async def crash():
            while self.relays:  # alone, the held relay takes every lane, so the rows just written are in its batch
                await self.relays.pop().stop()
            ids = await self.write(key_ixs, rollback=False)
            held = self.relay(HeldRelay, batch_size=10_000)
            held.start()
            try:
                await asyncio.wait_for(held.sent.wait(), 60)
            finally:
                await held.stop()
            unmarked = await self.ctx.pool.fetchval(
                "SELECT count(*) FROM outbox JOIN outbox_pending USING (seq) WHERE event_id = ANY($1::uuid[])", ids)
            assert unmarked == len(ids), "the relay was not killed between send and mark"

        self.run(crash())
        self.ctx.stats["killed between send and mark"] += 1

    # -- at the end of each example --------------------------------------------------------------------------
    def teardown(self):
        self.run(self.check_the_topic())

    async def check_the_topic(self):
        pool = self.ctx.pool
        survivor = self.relay()
        survivor.start()
        try:
            async with asyncio.timeout(60):  # bounded wait for every row to be marked sent
                while await pool.fetchval("SELECT count(*) FROM outbox_pending"):
                    await asyncio.sleep(0.05)
        finally:
            for relay in [survivor, *self.relays]:
                await relay.stop()
            self.relays = []
        keys = {str(k) for k in self.keys}
        parts = [TopicPartition(TOPIC, p) for p in range(BY_NAME[TOPIC].partitions)]
        # Every relay is stopped: all they ever published is below the end offsets read now.
        seen: dict[str, list[str]] = defaultdict(list)
        async for record in read_to_end(self.ctx.bootstrap, parts):
            if record.key and record.key.decode() in keys:
                seen[record.key.decode()].append(decode(record.value).id)
        everything = Counter(i for ids in seen.values() for i in ids)
        missing = {i for i, _ in self.committed} - set(everything)
        assert not missing, f"{len(missing)} committed event(s) never reached Kafka"
        assert not self.rolled_back & set(everything), "a rolled-back event reached Kafka"
        for key in keys:
            first = list(dict.fromkeys(seen[key]))  # first appearances, in topic order
            assert first == [i for i, k in self.committed if k == key], f"events of {key} out of commit order"
        self.ctx.stats["events read back"] += sum(everything.values())
        self.ctx.stats["published again after a kill"] += sum(n - 1 for n in everything.values())


class _RolledBack(Exception):
    pass


async def test_relays_killed_at_random_points_lose_nothing_and_keep_each_keys_order(stack, make_database):
    dsn = await make_database("membership")
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=12)
    try:
        ctx = Context(asyncio.get_running_loop(), pool, dsn, stack.kafka.bootstrap)
        await asyncio.to_thread(
            run_state_machine_as_test, lambda: RelayMachine(ctx),
            settings=settings(max_examples=8, stateful_step_count=12, deadline=None, print_blob=True,
                              suppress_health_check=list(HealthCheck),
                              # No shrinking: each example runs on the real servers, and shrinking would rerun
                              # dozens of them past the test's timeout; a failure prints its steps as they ran.
                              phases=[Phase.explicit, Phase.reuse, Phase.generate]))
    finally:
        await pool.close()
    print(f"outbox machine: {dict(ctx.stats)}")
    # Not vacuous: events were committed and rolled back, and the crash window was hit (rows sent again).
    assert ctx.stats["committed"] and ctx.stats["rolled back"] and ctx.stats["killed between send and mark"]
