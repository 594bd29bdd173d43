"""End to end for the reform ledger's supervision (督办): a task created past its deadline, the reform API's
own scan tells it, the notifier delivers the overdue notice to a verifying Standard Webhooks receiver (once) —
the lead unit's own channel, registered by its liaison, and the region's channel, which also gets the scan's
digest for the office — and the 改革任务台账 dashboard's figure (overdue tasks by unit) shows it in Prometheus.
Every component is a process: the reform API, the notifier API and worker, the projection worker, the demo
receivers (the region's, and the unit's with its channel's own signing secret)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from shared.auth import mint_token

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "notifier"))

from notifier_harness import start_at_end

pytestmark = pytest.mark.e2e
OFFICE = {"Authorization": "Bearer " + mint_token("e2e-office", ["reform:admin", "reform:read"], "640000")}
OVERDUE = "changai.reform.task.overdue.v1"
DIGEST = "changai.reform.supervision.digest.v1"


async def until(check, timeout: float = 120.0, interval: float = 0.3):
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
    return result


async def test_a_task_past_its_deadline_reaches_the_receiver_once_and_the_dashboard(stack, make_database):
    run = uuid.uuid4().hex[:8]
    receiver_port = stack.free_port()
    receiver = f"http://127.0.0.1:{receiver_port}"
    base = {"receiver_url": receiver, "CHANGAI_LOG_LEVEL": "WARNING"}
    app_id = f"notifier-reform-{run}"
    await start_at_end(stack.bootstrap, f"changai-{app_id}")  # the worker tells what happens from now on
    r_env = stack.service_env(
        "reform",
        database_url=await make_database("reform"),
        CHANGAI_REFORM_SUPERVISION_INTERVAL_S="0.5",
        CHANGAI_OUTBOX_POLL_INTERVAL_S="0.2",
        **base,
    )
    notifier_db = await make_database("notifier")
    n_env = stack.service_env("notifier-worker", database_url=notifier_db, CHANGAI_NOTIFIER_APP_ID=app_id, **base)
    a_env = stack.service_env("notifier-api", database_url=notifier_db, CHANGAI_NOTIFIER_APP_ID=app_id, **base)
    p_env = stack.service_env("projection", CHANGAI_PROJECTION_APP_ID=f"projection-reform-{run}", **base)
    await stack.start_service(
        "receiver",
        ["deploy/local/receiver.py", "--port", str(receiver_port)],
        stack.service_env("receiver", http_port=receiver_port, **base),
    )
    await asyncio.gather(
        stack.start_service("reform", ["-m", "services.reform", "api"], r_env, timeout=120),
        stack.start_service(
            "notifier-worker", ["-m", "services.notifier", "worker"], n_env, health_path="/readyz", timeout=120
        ),
        stack.start_service("projection", ["-m", "services.projection", "worker"], p_env, timeout=120),
        stack.start_service("notifier-api", ["-m", "services.notifier", "api"], a_env, timeout=120),
    )
    notifier = f"http://127.0.0.1:{a_env['CHANGAI_HTTP_PORT']}/v1"
    unit_port = stack.free_port()
    unit_receiver = f"http://127.0.0.1:{unit_port}"
    job = f"projection-reform-{run}"
    stack.prometheus.set_targets({job: [f"127.0.0.1:{p_env['CHANGAI_HTTP_PORT']}"]})
    api = f"http://127.0.0.1:{r_env['CHANGAI_HTTP_PORT']}/v1"
    unit_name = f"端到端成员单位{run}"
    try:
        async with httpx.AsyncClient(timeout=30) as http:

            async def post(path: str, body: dict) -> dict:
                resp = await http.post(
                    f"{api}{path}", json=body, headers={**OFFICE, "Idempotency-Key": uuid.uuid4().hex}
                )
                assert resp.status_code == 201, resp.text
                return resp.json()

            unit = await post("/units", {"name": unit_name, "kind": "government"})
            # the unit's liaison registers the unit's own channel once the notifier knows the unit; its
            # receiver verifies with that channel's signing secret
            liaison = {"Authorization": "Bearer " + mint_token(
                "e2e-liaison", ["notifier:write", "notifier:read"], "640000", unit=unit["id"])}

            async def unit_channel() -> dict | None:
                resp = await http.post(f"{notifier}/channels", headers=liaison, json={
                    "kind": "webhook", "name": "牵头单位联络员群", "owner": {"unit_id": unit["id"]},
                    "config": {"url": f"{unit_receiver}/hooks/unit"}})
                assert resp.status_code in (201, 422), resp.text  # 422: the unit is not known yet
                return resp.json() if resp.status_code == 201 else None

            channel = await until(unit_channel, timeout=60, interval=0.5)
            await stack.start_service(
                "receiver-unit",
                ["deploy/local/receiver.py", "--port", str(unit_port)],
                stack.service_env("receiver", http_port=unit_port, CHANGAI_NOTIFIER_WEBHOOK_SECRET=channel[
                    "signing_secret"], **base),
            )
            year = 2000 + int(run, 16) % 20  # a past year of its own: every test database is fresh anyway
            await post("/years", {"year": year, "unit_ids": [unit["id"]]})
            task = await post(
                "/tasks",
                {
                    "year": year,
                    "number": 1,
                    "title": "督办端到端",
                    "lead_unit_id": unit["id"],
                    "deadline": f"{year}-06-30",
                },
            )

            async def told() -> list[dict]:
                notices = (await http.get(f"{receiver}/received")).json()
                return [n for n in notices if n["type"] == OVERDUE and n["subject"] == task["id"]]

            [notice] = await until(told)
            assert notice["verified"], notice.get("reason")  # the Standard Webhooks signature, checked

            async def told_unit() -> list[dict]:
                notices = (await http.get(f"{unit_receiver}/received")).json()
                return [n for n in notices if n["type"] == OVERDUE and n["subject"] == task["id"]]

            [unit_notice] = await until(told_unit)  # the lead unit's own channel, signed with its own secret
            assert unit_notice["verified"], unit_notice.get("reason")

            async def digests() -> list[dict]:
                return [n for n in (await http.get(f"{receiver}/received")).json() if n["type"] == DIGEST]

            [digest] = await until(digests)  # the office's list of the scan that told the task
            assert digest["verified"], digest.get("reason")

            # the dashboard's figure: overdue tasks by lead unit, as Prometheus has it
            query = f'sum by (unit) (changai_reform_tasks_overdue{{job="{job}",unit="{unit_name}"}})'
            [series] = await stack.prometheus.wait_for(query, timeout=120)
            assert float(series["value"][1]) == 1

            # told once: a second overdue task, told after the first, proves the scan and the notifier went on;
            # the first task is still told exactly once (its stage is stored with it)
            later = await post(
                "/tasks",
                {
                    "year": year,
                    "number": 2,
                    "title": "督办端到端二",
                    "lead_unit_id": unit["id"],
                    "deadline": f"{year}-07-31",
                },
            )

            async def told_later() -> list[dict]:
                notices = (await http.get(f"{receiver}/received")).json()
                return [n for n in notices if n["type"] == OVERDUE and n["subject"] == later["id"]]

            await until(told_later)
            assert len(await told()) == 1
            assert len(await told_unit()) == 1  # the unit's reminder is not repeated either
    finally:
        stack.prometheus.set_targets({job: []})
