"""Funding test helpers: the service app in-process on the real PostgreSQL and Kafka (imported by the funding tests)."""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.funding.settings import FundingSettings
from services.funding.main import build_app
from services.funding import store
from shared.auth import mint_token
from shared.topics import BY_NAME

WRITER = {"Authorization": "Bearer " + mint_token("funding-tests", ["funding:write", "funding:read", "funding:admin"],
                                                   "640000")}


@asynccontextmanager
async def running_funding(stack, dsn: str, *, consumer: bool = False, branches: bool = False, **overrides):
    """The funding app with its lifespan (migrations, pool, relay, parts) and an httpx client on it; the subsidy
    consumer when ``consumer``, the consumer of membership's branch events when ``branches``."""
    settings = FundingSettings(database_url=dsn, kafka_bootstrap=stack.kafka.bootstrap, db_pool_min=2, db_pool_max=10,
                               outbox_poll_interval_s=0.2, funding_subsidy_consumer=consumer,
                               funding_subsidy_group=f"funding-test-{uuid.uuid4().hex[:8]}",
                               funding_branch_consumer=branches,
                               funding_branch_group=f"funding-branches-{uuid.uuid4().hex[:8]}", **overrides)
    if consumer:
        await skip_history(stack.kafka.bootstrap, settings.funding_subsidy_group, settings.funding_training_topic)
    if branches:
        await skip_history(stack.kafka.bootstrap, settings.funding_branch_group, settings.funding_membership_topic)
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://funding",
                                     headers=WRITER, timeout=60) as client:
            yield app, client


async def skip_history(bootstrap: str, group: str, topic: str) -> None:
    """Commit the group's offsets at the end of the topic, so the saga under test starts with the
    events the test produces instead of every completion other tests left on the shared topic."""
    tps = [TopicPartition(topic, p) for p in range(BY_NAME[topic].partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        await consumer.commit({tp: await consumer.position(tp) for tp in tps})
    finally:
        await consumer.stop()


async def ledger_ok(pool_or_conn) -> dict:
    """Every ledger invariant holds (raises with the violations otherwise)."""
    report = await store.ledger_check(pool_or_conn)
    assert report["violations"] == [], report["violations"]
    return report


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def open_fund(client, amount="1000.00", source_kind="skills_account", year=2021, name=None) -> dict:
    resp = await client.post("/v1/funds", json={"name": name or f"fund {uuid.uuid4().hex[:6]}",
                                                "source_kind": source_kind, "fiscal_year": year, "amount": amount},
                             headers=key())
    assert resp.status_code == 201, resp.text
    return resp.json()


async def approve(client, fund_id, amount, kind="studio", bid=None, name="创新工作室", region=None) -> dict:
    body = {"fund_id": fund_id, "beneficiary_kind": kind, "beneficiary_id": bid or f"b-{uuid.uuid4().hex[:8]}",
            "beneficiary_name": name, "purpose": "劳模和工匠人才创新工作室 funding", "amount": amount}
    if region:
        body["region_code"] = region
    resp = await client.post("/v1/grants", json=body, headers=key())
    assert resp.status_code == 201, resp.text
    return resp.json()


async def events_in_outbox(dsn_or_pool, subject: str) -> list[str]:
    """Types of the events queued for one aggregate, in order."""
    if isinstance(dsn_or_pool, str):
        conn = await asyncpg.connect(dsn_or_pool)
        try:
            rows = await conn.fetch("SELECT event_type FROM outbox WHERE key = $1 ORDER BY seq", subject)
        finally:
            await conn.close()
    else:
        rows = await dsn_or_pool.fetch("SELECT event_type FROM outbox WHERE key = $1 ORDER BY seq", subject)
    return [r["event_type"] for r in rows]


