"""End to end for the reform ledger's supervision (督办): a task created past its deadline, the reform API's
own scan tells it, the notifier delivers the overdue notice to a verifying Standard Webhooks receiver (once),
and the 改革任务台账 dashboard's figure (overdue tasks by unit) shows it in Prometheus. Every component is a
process: the reform API, the notifier worker, the projection worker, the demo receiver."""

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
    n_env = stack.service_env(
        "notifier-worker", database_url=await make_database("notifier"), CHANGAI_NOTIFIER_APP_ID=app_id, **base
    )
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
    )
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
    finally:
        stack.prometheus.set_targets({job: []})
