"""The office's digest (督办汇总) on the real database: one supervision scan that finds several tasks overdue
tells each task to its lead unit (``task.overdue``) and the office once (``supervision.digest``), listing
exactly those tasks by unit; the next scan tells nothing again."""

import uuid
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from reform_support import post, running_reform, unit

from services.reform import usecases
from shared.events.reform import SupervisionDigest, TaskOverdue


async def test_one_digest_per_scan_lists_the_tasks_it_found_overdue_by_unit(stack, make_database):
    dsn = await make_database("reform")
    async with running_reform(stack, dsn, reform_supervision=False) as (_, client):
        a, b = await unit(client, name="自治区人社厅"), await unit(client, name="自治区教育厅")
        await post(client, "/v1/years", {"year": 2024, "unit_ids": [a["id"], b["id"]]})
        tasks = {}
        for number, lead, deadline in ((1, a, "2024-01-31"), (2, a, "2024-02-29"), (3, b, "2024-03-31"),
                                       (4, b, "2099-12-31")):
            tasks[number] = await post(client, "/v1/tasks", {
                "year": 2024, "number": number, "title": f"任务{number}", "lead_unit_id": lead["id"],
                "deadline": deadline})
    today = date(2024, 4, 2)
    now = datetime(2024, 4, 2, 9, tzinfo=ZoneInfo("Asia/Shanghai"))
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        async with conn.transaction():
            events = await usecases.supervise(conn, today, now, timedelta(days=3650))
        overdue = [e for e in events if isinstance(e, TaskOverdue)]
        digests = [e for e in events if isinstance(e, SupervisionDigest)]
        assert sorted(e.number for e in overdue) == [1, 2, 3]  # each told to its lead unit
        (digest,) = digests  # and the office once
        assert digest.count == 3 and digest.scanned_on == today and digest.region_code == "640000"
        listed = {u.unit: sorted(t.number for t in u.overdue) for u in digest.by_unit}
        assert listed == {"自治区人社厅": [1, 2], "自治区教育厅": [3]}
        assert {u.unit_id for u in digest.by_unit} == {uuid.UUID(a["id"]), uuid.UUID(b["id"])}
        assert next(t for u in digest.by_unit for t in u.overdue if t.number == 1).days_overdue == 62
        # written through the outbox, in the scan's transaction, after the tasks' own notices
        kinds = [r["event_type"] for r in await conn.fetch("SELECT event_type FROM outbox ORDER BY seq")]
        assert kinds[-1] == "changai.reform.supervision.digest.v1" and kinds.count(kinds[-1]) == 1
        # the next scan finds nothing new: no task told twice, no empty digest
        async with conn.transaction():
            assert await usecases.supervise(conn, today + timedelta(days=1), now, timedelta(days=3650)) == []
