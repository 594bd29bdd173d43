"""The outbox relay under a bulk backlog (what an import leaves): growing batches published as record
batches per partition, two relays racing; every key's events still reach Kafka once each, in order,
and the two relays share the work."""
import asyncio
import uuid
from collections import defaultdict

import asyncpg
import pytest

from shared import outbox
from shared.events.membership import MemberSkillLevelChanged
from tests.integration.membership.membership_support import KafkaTail

pytestmark = pytest.mark.integration


async def test_backlog_published_once_each_in_order_per_key(stack, make_database):
    dsn = await make_database("membership")
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
    keys = [uuid.uuid4() for _ in range(40)]
    per_key = 60
    branch = uuid.uuid4()

    def event(key: uuid.UUID, n: int) -> MemberSkillLevelChanged:  # to_level carries the sequence (1..5 cycling)
        return MemberSkillLevelChanged(member_id=key, branch_id=branch, region_code="640104", city_code="640100",
                                       from_level=None, to_level=n % 5 + 1, certificate_id=uuid.UUID(int=n))

    try:
        # The backlog first, as a bulk import leaves it: 2,400 events in 4 COPY transactions.
        for part in range(4):
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add_many(conn, [event(k, n) for n in range(part * 15, part * 15 + 15) for k in keys])
        names = [f"relay-{uuid.uuid4().hex[:6]}" for _ in range(2)]  # one metrics label each: who published what
        relays = [outbox.OutboxRelay(pool, stack.kafka.bootstrap, name, dsn=dsn, poll_interval=0.2,
                                     batch_size=50, max_batch_size=400) for name in names]
        wanted = {str(k) for k in keys}
        async with KafkaTail(stack.kafka.bootstrap) as tail:
            await asyncio.gather(*(r.connect() for r in relays))  # both ready before either publishes
            for r in relays:
                r.start()
            try:
                records = await tail.read(lambda es: sum(k in wanted for k, _ in es) >= len(keys) * per_key, 60)
                for _ in range(100):  # the last cycle marks its rows after Kafka acknowledged them
                    remaining = await pool.fetchval("SELECT count(*) FROM outbox_pending")
                    if remaining == 0:
                        break
                    await asyncio.sleep(0.1)
            finally:
                for r in relays:
                    await r.stop()
            records += await tail.read_to_end()  # both relays stopped: anything published twice is before the end
    finally:
        await pool.close()
    mine = [(k, e) for k, e in records if k in wanted]
    assert len(mine) == len(keys) * per_key, "an event was lost or published twice"
    seen = defaultdict(list)
    for k, e in mine:
        seen[k].append(uuid.UUID(e.data["certificate_id"]).int)
    for k in keys:
        assert seen[str(k)] == list(range(per_key)), f"events of {k} out of order"
    assert remaining == 0
    # The replicas shared the backlog: each took lanes the other did not hold (before lane quotas, the
    # first relay to lock took all 16 lanes each cycle and the other published next to nothing).
    shares = [outbox.PUBLISHED.labels(name)._value.get() for name in names]
    assert sum(shares) == len(keys) * per_key
    assert min(shares) >= 0.25 * sum(shares), shares
