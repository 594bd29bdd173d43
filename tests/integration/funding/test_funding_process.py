"""The service as the runner starts it: `python -m services.funding api`, a real process on a real port."""
import asyncio
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from funding_support import WRITER, skip_history
from shared.events import decode

pytestmark = pytest.mark.integration


async def test_the_process_serves_the_api_and_publishes_its_events(stack, make_database):
    dsn = await make_database("funding")
    group = f"funding-proc-{uuid.uuid4().hex[:6]}"
    await skip_history(stack.kafka.bootstrap, group, "training.events")
    env = stack.service_env("funding", database_url=dsn, CHANGAI_FUNDING_SUBSIDY_GROUP=group,
                            CHANGAI_FUNDING_PRE_JOB_CHANGE_DATE="2021-07-01")
    svc = await stack.start_service("funding", ["-m", "services.funding", "api"], env, health_path="/readyz")
    base = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}"
    async with httpx.AsyncClient(base_url=base, headers=WRITER, timeout=10) as client:
        rules = (await client.get("/v1/subsidy-rules", params={"category": "pre_job", "on": "2021-06-30"})).json()
        assert [(r["effective_from"], r["rate"]) for r in rules["items"]] == [("2019-01-01", "300.00")]
        resp = await client.post("/v1/funds", headers={"Idempotency-Key": "p1"}, json={
            "name": "石嘴山职业技能提升专账", "source_kind": "skills_account", "fiscal_year": 2021, "amount": "9900000.00"})
        assert resp.status_code == 201, resp.text
        fund_id = resp.json()["id"]
        assert "changai_http_requests_total" in (await client.get("/metrics")).text

    consumer = AIOKafkaConsumer("funding.events", bootstrap_servers=stack.kafka.bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            event = None
            while event is None:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    event = next((decode(r.value) for r in batch if r.key == fund_id.encode()), event)
    finally:
        await consumer.stop()
    assert event.type == "changai.funding.fund.opened.v1" and event.data["amount_fen"] == 990_000_000
    await svc.stop(grace=5)
