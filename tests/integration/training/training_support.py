"""Training test helpers: the service in-process on the real PostgreSQL and Kafka, membership
events produced the way the membership service produces them, and a tail of training.events."""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from datetime import date

import httpx
from aiokafka import AIOKafkaConsumer

from services.training.consumers import topic_partitions
from services.training.main import build_app
from services.training.settings import TrainingSettings
from shared.auth import mint_token
from shared.events import CloudEvent, EventData, decode, encode, envelope
from shared.events.membership import BranchEstablished, MemberJoined
from shared.kafka import make_producer

WRITER = {"Authorization": "Bearer " + mint_token("training-tests", ["training:write", "training:read"], "640000")}
CREDIT_CODE = "91350100M000100Y43"


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def position_group_at_end(bootstrap: str, group: str, topic: str = "membership.events") -> None:
    """Commit the group's offsets at the topic's current end, so a fresh consumer of that group
    sees only what is produced from now on (the shared topic holds every other test's events)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


@asynccontextmanager
async def running_training(stack, dsn: str, *, from_now: bool = True, **overrides):
    """The training app with its lifespan (migrations, pool, outbox relay, member read model)."""
    prefix = f"training-test-{uuid.uuid4().hex[:8]}"
    if from_now:
        await position_group_at_end(stack.bootstrap, f"{prefix}-g1", overrides.get("members_topic", "membership.events"))
    settings = TrainingSettings(database_url=dsn, kafka_bootstrap=stack.bootstrap, members_group=prefix,
                                db_pool_min=2, db_pool_max=10, outbox_poll_interval_s=0.2, **overrides)
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://training",
                                     headers=WRITER, timeout=60) as client:
            if settings.members_consumer:  # caught up (in the background) and following the topic
                from shared.consumer import wait_assigned
                await wait_for(lambda: _true(app.state.members.consumer is not None))
                await wait_assigned(app.state.members.consumer)
            yield app, client


async def _true(value: bool) -> bool:
    return value


async def produce(bootstrap: str, *items: EventData | CloudEvent, topic: str | None = None) -> list[CloudEvent]:
    """Publish events to their topics exactly as a service's relay would (structured CloudEvents)."""
    producer = make_producer(bootstrap)
    await producer.start()
    sent = []
    try:
        for item in items:
            event = item if isinstance(item, CloudEvent) else envelope(item)
            k, v, headers = encode(event)
            to = topic or ("membership.events" if event.type.startswith("changai.membership.") else "training.events")
            await producer.send_and_wait(to, v, key=k, headers=headers)
            sent.append(event)
    finally:
        await producer.stop()
    return sent


def branch_event(region: str = "640104", name: str = "宁夏枸杞产业集团有限公司工会委员会",
                 branch_id: uuid.UUID | None = None) -> BranchEstablished:
    from shared import regions
    return BranchEstablished(branch_id=branch_id or uuid.uuid4(), name=name, credit_code=CREDIT_CODE,
                             region_code=region, city_code=regions.city_of(region), industry_section="C",
                             kind="enterprise", founded_on=date(2020, 5, 1))


def joined(branch: BranchEstablished, member_id: uuid.UUID | None = None, form: str = "standard") -> MemberJoined:
    return MemberJoined(member_id=member_id or uuid.uuid4(), branch_id=branch.branch_id,
                        region_code=branch.region_code, city_code=branch.city_code, employment_form=form,
                        occupation="枸杞加工工", skill_level=5, joined_on=date(2021, 3, 1))


async def wait_for(check, timeout: float = 30.0, interval: float = 0.1):
    """Poll the async ``check()`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout} s")
        await asyncio.sleep(interval)


async def member_status(client: httpx.AsyncClient, member_id) -> str | None:
    resp = await client.get(f"/v1/members/{member_id}")
    return resp.json()["status"] if resp.status_code == 200 else None


async def members_known(client: httpx.AsyncClient, ids, status: str = "active") -> bool:
    for mid in ids:
        if await member_status(client, mid) != status:
            return False
    return True


class Tail:
    """Records appended to a topic after ``start()``; read the ones you want with ``until``."""

    def __init__(self, bootstrap: str, topic: str = "training.events"):
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list = []

    async def start(self) -> "Tail":
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await self.consumer.start()
        partitions = await topic_partitions(self.consumer, self.topic)
        self.consumer.assign(partitions)
        for tp, offset in (await self.consumer.end_offsets(partitions)).items():
            self.consumer.seek(tp, offset)
        return self

    async def until(self, want, timeout: float = 30.0) -> list[CloudEvent]:
        """Events so far; keep reading until ``want(events)`` is true."""
        deadline = time.monotonic() + timeout
        events = [decode(r.value) for r in self.records]
        while not want(events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"wanted events not on {self.topic} after {timeout} s; have {len(events)}")
            for batch in (await self.consumer.getmany(timeout_ms=200)).values():
                self.records.extend(batch)
                events.extend(decode(r.value) for r in batch)
        return events

    async def stop(self) -> None:
        await self.consumer.stop()


@asynccontextmanager
async def tail(bootstrap: str, topic: str = "training.events"):
    t = await Tail(bootstrap, topic).start()
    try:
        yield t
    finally:
        await t.stop()


def of(events: list[CloudEvent], type_suffix: str, **match) -> list[CloudEvent]:
    return [e for e in events if e.type.endswith(type_suffix)
            and all(str(e.data.get(k)) == str(v) for k, v in match.items())]


# ---------------------------------------------------------------- API shortcuts
async def programme(client, category: str = "pre_job", **over) -> dict:
    body = {"name": "枸杞加工岗前培训", "occupation": "枸杞加工工", "target_level": 4, "provider_kind": "technical_school",
            "provider_name": "宁夏工业职业技术学院", "subsidy_category": category, **over}
    resp = await client.post("/v1/programmes", json=body, headers=key())
    assert resp.status_code == 201, resp.text
    return resp.json()


async def session(client, programme_id: str, branch_id, capacity: int = 10, **over) -> dict:
    body = {"programme_id": programme_id, "organiser_kind": "branch", "organiser_id": str(branch_id),
            "starts_on": "2021-04-01", "ends_on": "2021-04-20", "capacity": capacity, **over}
    resp = await client.post("/v1/sessions", json=body, headers=key())
    assert resp.status_code == 201, resp.text
    return resp.json()


async def seed_members(stack, app, n: int, region: str = "640104"):
    """A branch and ``n`` members joined through membership events; waits until training knows them all."""
    branch = branch_event(region)
    members = [joined(branch) for _ in range(n)]
    await produce(stack.bootstrap, branch, *members)
    ids = [m.member_id for m in members]

    async def known() -> bool:
        active = await app.state.db.fetchval(
            "SELECT count(*) FROM members WHERE id = ANY($1::uuid[]) AND status = 'active'", ids)
        return active == n and await app.state.db.fetchval("SELECT EXISTS (SELECT 1 FROM branches WHERE id = $1)",
                                                           branch.branch_id)
    await wait_for(known, timeout=30)
    return branch, ids


@asynccontextmanager
async def private_topic(bootstrap: str, partitions: int = 3):
    """A topic (and its dead-letter topic) of this test's own, deleted afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    name = f"training-test-members-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1), NewTopic(f"{name}.dlq", 1, 1)])
        yield name
    finally:
        try:
            await admin.delete_topics([name, f"{name}.dlq"])
        finally:
            await admin.close()
