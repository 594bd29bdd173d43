"""Supervision (督办) on the real servers: an overdue task is told exactly once — by two replicas scanning
the same database at once, and again after a restart — and the notice reaches Kafka once."""

import asyncio
import uuid
from contextlib import AsyncExitStack

import asyncpg
from aiokafka import TopicPartition

from reform_support import liaison, post, running_reform, unit
from shared.events import decode
from shared.kafka import read_to_end
from shared.topics import BY_NAME

OVERDUE = "changai.reform.task.overdue.v1"
PROGRESS_DUE = "changai.reform.task.progress_due.v1"


async def until(check, timeout: float = 60.0, interval: float = 0.1):
    """Wait for ``check()`` (sync or async) to be truthy, at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            result = await result if asyncio.iscoroutine(result) else result
            if result:
                return result
            await asyncio.sleep(interval)


async def reaches(count, n: int) -> bool:
    return await count >= n


async def told(pool, task_id: str, event_type: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM outbox WHERE key = $1 AND event_type = $2", task_id, event_type)


async def test_overdue_told_once_by_two_replicas_and_after_a_restart_and_once_on_kafka(stack, make_database):
    dsn = await make_database("reform")
    fast = {"reform_supervision_interval_s": 0.05, "reform_progress_quiet_days": 0.0001}  # ~9 s of silence
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        # set-up with supervision off, so nothing is told before the replicas start
        async with running_reform(stack, dsn, reform_supervision=False) as (_, client):
            lead = await unit(client)
            await post(client, "/v1/years", {"year": 2024, "unit_ids": [lead["id"]]})
            late = await post(
                client,
                "/v1/tasks",
                {"year": 2024, "number": 1, "title": "逾期任务", "lead_unit_id": lead["id"], "deadline": "2024-01-31"},
            )
            quiet = await post(
                client,
                "/v1/tasks",
                {
                    "year": 2024,
                    "number": 2,
                    "title": "未报送进展",
                    "lead_unit_id": lead["id"],
                    "deadline": "2099-12-31",
                },
            )
        # two replicas on one database, each scanning every 50 ms
        async with AsyncExitStack() as replicas:
            for _ in range(2):
                await replicas.enter_async_context(running_reform(stack, dsn, **fast))
            await until(lambda: told(pool, late["id"], OVERDUE))
            await until(lambda: told(pool, quiet["id"], PROGRESS_DUE))
            # let both replicas scan many more times: nothing more is told
            scans_before = await pool.fetchval("SELECT count(*) FROM task_history WHERE action = 'overdue'")
            later = await post_in(stack, dsn, lead)  # a new overdue task: proves the replicas are still scanning
            await until(lambda: told(pool, later, OVERDUE))
            assert await told(pool, late["id"], OVERDUE) == 1
            assert await told(pool, quiet["id"], PROGRESS_DUE) == 1
            assert await pool.fetchval("SELECT count(*) FROM task_history WHERE action = 'overdue'") == scans_before + 1

        # a restart: the stage is stored with the task, so a new process tells nothing again...
        async with running_reform(stack, dsn, **fast) as (_, client):
            fresh = await post_in(stack, dsn, lead, client=client)
            await until(lambda: told(pool, fresh, OVERDUE))  # ...while it does tell what is new
            assert await told(pool, late["id"], OVERDUE) == 1
            assert await told(pool, later, OVERDUE) == 1
            # a progress report starts a new quiet spell: a second gentle reminder, once
            await post(
                client,
                f"/v1/tasks/{quiet['id']}:report-progress",
                {"percent": 10, "text": "启动"},
                liaison(lead["id"]),
                status=200,
            )
            await until(lambda: reaches(told(pool, quiet["id"], PROGRESS_DUE), 2), timeout=60)
            await until(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox_pending"))
            assert await told(pool, quiet["id"], PROGRESS_DUE) == 2

    # on Kafka, read to the end offsets (not to an expected count): the overdue notice is there once
    topic = "reform.events"
    parts = [TopicPartition(topic, p) for p in range(BY_NAME[topic].partitions)]
    seen = [decode(r.value).type async for r in read_to_end(stack.bootstrap, parts) if r.key == late["id"].encode()]
    assert seen.count(OVERDUE) == 1, seen


async def post_in(stack, dsn: str, lead: dict, client=None) -> str:
    """Add a task already past its deadline (a fresh number) and return its id."""
    async with AsyncExitStack() as stack_:
        if client is None:
            _, client = await stack_.enter_async_context(running_reform(stack, dsn, reform_supervision=False))
        number = uuid.uuid4().int % 9000 + 100
        task = await post(
            client,
            "/v1/tasks",
            {
                "year": 2024,
                "number": number,
                "title": "又一项逾期任务",
                "lead_unit_id": lead["id"],
                "deadline": "2024-02-29",
            },
        )
        return task["id"]
