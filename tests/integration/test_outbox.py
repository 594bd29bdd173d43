"""The outbox relay, the inbox and dead letters, on the real Kafka and PostgreSQL."""
import asyncio
import uuid
from collections import defaultdict
from datetime import date

import asyncpg
import orjson
import pytest

from shared import inbox, outbox
from shared.consumer import EventConsumer, wait_assigned
from shared.events import decode
from shared.events.membership import BranchEstablished
from shared.kafka import make_producer
from tests.integration.kafka_records import read_records, read_to_end_of

pytestmark = pytest.mark.integration


def branch(branch_id: uuid.UUID, n: int) -> BranchEstablished:
    return BranchEstablished(branch_id=branch_id, name=f"branch step {n}", credit_code="91350100M000100Y43",
                             region_code="640104", city_code="640100", industry_section="C", kind="enterprise",
                             founded_on=date(2021, 1, 1))


async def test_relays_publish_each_key_in_order_exactly_once(stack, make_database):
    dsn = await make_database("membership")
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)
    keys = [uuid.uuid4() for _ in range(5)]
    per_key = 40

    async def writer(key):
        for n in range(per_key):
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, branch(key, n))

    # Two relays (two replicas) race for the same outbox while writes are still coming in.
    relays = [outbox.OutboxRelay(pool, stack.kafka.bootstrap, "test", dsn=dsn, poll_interval=0.2, batch_size=37)
              for _ in range(2)]
    for r in relays:
        r.start()
    try:
        await asyncio.gather(*(writer(k) for k in keys))
        wanted = {str(k) for k in keys}

        def mine(records):
            return [r for r in records if r.key and r.key.decode() in wanted]

        # Every row marked sent (Kafka acknowledges before the relay marks its rows): bounded wait.
        async with asyncio.timeout(60):
            while await pool.fetchval("SELECT count(*) FROM outbox_pending"):
                await asyncio.sleep(0.05)
    finally:
        for r in relays:
            await r.stop()
        remaining = await pool.fetchval("SELECT count(*) FROM outbox_pending")
        await pool.close()
    # The relays are stopped: everything they ever published is below the end offsets read now, so a
    # duplicate, wherever it landed, is in this read (not cut off by stopping at the expected count).
    records = mine(await read_to_end_of(stack.kafka.bootstrap, "membership.events"))

    assert len(records) == len(keys) * per_key, "an event was published twice (or lost)"
    seen = defaultdict(list)
    for rec in records:
        assert dict(rec.headers)["content-type"] == b"application/cloudevents+json; charset=utf-8"
        seen[rec.key.decode()].append(int(decode(rec.value).data["name"].split()[-1]))
    for key in keys:
        assert seen[str(key)] == list(range(per_key)), f"events of {key} out of order"
    assert remaining == 0


async def test_rolled_back_write_leaves_no_event(stack, make_database):
    """A relay runs over the outbox after a rolled-back write and a committed one; Kafka, read to its end
    offsets once the committed event is marked sent, has the committed event once and the other not at all."""
    dsn = await make_database("membership")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    rolled_back, committed = uuid.uuid4(), uuid.uuid4()
    relay = outbox.OutboxRelay(pool, stack.kafka.bootstrap, "test", dsn=dsn, poll_interval=0.2)
    try:
        async with pool.acquire() as conn:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await outbox.add(conn, branch(rolled_back, 0))
                    raise RuntimeError("domain change failed")
            async with conn.transaction():  # after it in the outbox's order: the relay has passed it when this is sent
                await outbox.add(conn, branch(committed, 1))
        relay.start()
        async with asyncio.timeout(60):
            while await pool.fetchval("SELECT count(*) FROM outbox_pending"):
                await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await relay.stop()
        await pool.close()
    keys = [r.key.decode() for r in await read_to_end_of(stack.kafka.bootstrap, "membership.events") if r.key]
    assert keys.count(str(committed)) == 1
    assert str(rolled_back) not in keys


async def test_inbox_claims_once_and_rolls_back_with_the_effect(stack, make_database):
    dsn = await make_database("membership")
    conn = await asyncpg.connect(dsn)
    event_id = uuid.uuid4()
    try:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await inbox.claim(conn, "c1", event_id)
                raise RuntimeError("effect failed")
        async with conn.transaction():
            assert await inbox.claim(conn, "c1", event_id), "a failed effect must not consume the event"
        async with conn.transaction():
            assert not await inbox.claim(conn, "c1", event_id), "redelivery must be recognised"
        async with conn.transaction():
            assert await inbox.claim(conn, "c2", event_id), "each consumer has its own inbox"
    finally:
        await conn.close()


async def test_poison_record_goes_to_dlq_and_partition_moves_on(stack):
    bootstrap = stack.kafka.bootstrap
    key = str(uuid.uuid4()).encode()
    good = branch(uuid.UUID(key.decode()), 1)
    from shared.events import encode, envelope
    _, good_value, headers = encode(envelope(good))
    marker = uuid.uuid4().hex
    bad_schema = orjson.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/x", "time": "2021-01-01T00:00:00Z",
                               "type": "changai.membership.branch.established.v1", "data": {"name": marker}})
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        # Same key, so same partition: the poison records sit in front of the good one.
        await producer.send_and_wait("membership.events", f"garbage {marker}".encode(), key=key)
        await producer.send_and_wait("membership.events", bad_schema, key=key)
        await producer.send_and_wait("membership.events", good_value, key=key, headers=headers)
    finally:
        await producer.stop()

    handled = []

    async def handler(event, data):
        handled.append(data)

    consumer = EventConsumer(bootstrap, f"test-dlq-{marker}", ["membership.events"], handler)
    consumer.start()
    try:
        await wait_assigned(consumer)
        async with asyncio.timeout(30):
            while good not in handled:
                await asyncio.sleep(0.1)
    finally:
        await consumer.stop()

    group = f"test-dlq-{marker}".encode()

    def ours_in(records):
        # Other consumers running in this session dead-letter the same records too, each under its own name.
        return [r for r in records if dict(r.headers).get("changai-dlq-consumer") == group]

    ours = ours_in(await read_records(bootstrap, "membership.events.dlq", lambda rs: len(ours_in(rs)) >= 2))
    reasons = [dict(r.headers)["changai-dlq-reason"].decode() for r in ours]
    assert "not JSON" in reasons[0]
    assert "data does not match" in reasons[1]
    assert all(dict(r.headers)["changai-dlq-topic"] == b"membership.events" for r in ours)
    assert all(r.key == key for r in ours)


async def test_relays_count_each_other_and_take_their_share_of_lanes(stack, make_database):
    dsn = await make_database("membership")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    relays = [outbox.OutboxRelay(pool, stack.kafka.bootstrap, "test", dsn=dsn) for _ in range(3)]

    async def shares(n: int) -> list[int]:
        for r in relays[:n]:
            r._checked_in = 0.0  # check in now, not CHECK_IN_S after the last time
            await r._check_in()
        return [r.lane_share for r in relays[:n]]

    try:
        await relays[0].connect()
        assert (await pool.fetchval(outbox.RELAYS_PRESENT), await shares(1)) == (1, [16])
        await relays[1].connect()
        assert (await pool.fetchval(outbox.RELAYS_PRESENT), await shares(2)) == (2, [8, 8])
        await relays[2].connect()
        assert (await pool.fetchval(outbox.RELAYS_PRESENT), await shares(3)) == (3, [6, 6, 6])
        await relays[2].stop()  # a relay that stops (or dies: its connection closes) is counted out
        assert (await pool.fetchval(outbox.RELAYS_PRESENT), await shares(2)) == (2, [8, 8])
    finally:
        for r in relays[:2]:
            await r.stop()
        await pool.close()


async def test_relay_listens_again_after_losing_its_connection(stack, make_database):
    """A database restart or failover drops the LISTEN connection: the relay reconnects, is counted
    again, and new rows are published on their NOTIFY rather than on the next poll."""
    dsn = await make_database("membership")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    present = outbox.RELAYS_PRESENT
    relay = outbox.OutboxRelay(pool, stack.kafka.bootstrap, "test", dsn=dsn, poll_interval=60)
    relay.CHECK_IN_S = 0.2
    try:
        await relay.connect()
        first = relay._listener
        await pool.execute("SELECT pg_terminate_backend($1)", first.get_server_pid())
        async with asyncio.timeout(10):
            while await pool.fetchval(present) != 0 or not first.is_closed():
                await asyncio.sleep(0.05)
        relay.start()
        async with asyncio.timeout(10):
            while await pool.fetchval(present) != 1:
                await asyncio.sleep(0.05)
        assert relay._listener is not first and not relay._listener.is_closed()
        # With a 60 s poll, only the NOTIFY of the new connection can get this row out in time.
        key = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, branch(key, 0))
            assert await conn.fetchval("SELECT count(*) FROM outbox_pending") == 1  # so the wait below can fail
        async with asyncio.timeout(10):
            while await pool.fetchval("SELECT count(*) FROM outbox_pending"):
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()
        await pool.close()


async def test_every_outbox_insert_is_queued_for_the_relay(stack, make_database):
    """The relay publishes what ``outbox_pending`` holds: every path that writes the outbox (one event, a
    short batch, a COPY, a plain INSERT as the notifier's SQL functions do) queues its rows with their lane
    in the writer's transaction, and a rolled-back write queues nothing."""
    dsn = await make_database("membership")
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await outbox.add(conn, branch(uuid.uuid4(), 0))
            await outbox.add_many(conn, [branch(uuid.uuid4(), n) for n in range(3)])  # one INSERT of arrays
            await outbox.add_many(conn, [branch(uuid.uuid4(), n) for n in range(outbox.COPY_FROM + 1)])  # COPY
            await conn.execute(
                "INSERT INTO outbox (event_id, topic, key, lane, event_type, value)"
                " SELECT gen_random_uuid(), topic, 'raw', $1, event_type, value FROM outbox LIMIT 2", outbox.lane_of("raw"))
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await outbox.add_many(conn, [branch(uuid.uuid4(), n) for n in range(outbox.COPY_FROM + 1)])
                raise RuntimeError("domain change failed")
        written = await conn.fetch("SELECT seq, key, lane FROM outbox ORDER BY seq")
        queued = await conn.fetch("SELECT seq, lane FROM outbox_pending ORDER BY seq")
    finally:
        await conn.close()
    assert len(written) == 1 + 3 + outbox.COPY_FROM + 1 + 2
    assert [(r["seq"], r["lane"]) for r in queued] == [(r["seq"], r["lane"]) for r in written]
    assert all(r["lane"] == outbox.lane_of(r["key"]) for r in written)


async def test_rows_waiting_before_the_queue_existed_are_published_after_the_upgrade(stack, make_database):
    """The migration that moved the relay's queue out of the outbox (``published_at`` to ``outbox_pending``)
    queues the rows that were still waiting and only those: nothing written before an upgrade is lost or
    sent again because of it."""
    from shared import migrate

    server = await make_database("membership")  # a database on the test server, to create this one from
    admin = await asyncpg.connect(server)
    name = f"test_upgrade_{uuid.uuid4().hex[:10]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = f"{server.rsplit('/', 1)[0]}/{name}"
        conn = await asyncpg.connect(dsn)
        try:
            first = migrate.ROOT / "shared" / "migrations" / "0001_platform.sql"
            sql = first.read_text(encoding="utf-8")
            await conn.execute(sql)
            await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, checksum text NOT NULL,"
                               " applied_at timestamptz NOT NULL DEFAULT now())")
            await conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                               "shared/0001_platform.sql", migrate.hashlib.sha256(sql.encode()).hexdigest())
            async with conn.transaction():
                await outbox.add_many(conn, [branch(uuid.uuid4(), n) for n in range(10)])
            await conn.execute("UPDATE outbox SET published_at = now() WHERE seq <= 4")  # sent before the upgrade
            applied = await migrate.apply(conn, "membership")
            assert "shared/0002_outbox_pending.sql" in applied
            assert [r["seq"] for r in await conn.fetch("SELECT seq FROM outbox_pending ORDER BY seq")] == list(
                range(5, 11))
            async with conn.transaction():  # and what is written after it is queued by the new trigger
                await outbox.add(conn, branch(uuid.uuid4(), 11))
            assert await conn.fetchval("SELECT count(*) FROM outbox_pending") == 7
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
