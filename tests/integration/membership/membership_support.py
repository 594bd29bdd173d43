"""Helpers of membership's integration tests: the app in-process on a fresh database, valid identifiers, readers."""
from __future__ import annotations

import itertools
import random
import uuid
from contextlib import asynccontextmanager
from datetime import date

import httpx

from services.membership.main import MembershipSettings, build_app
from shared.auth import mint_token
from shared.identifiers import id_check_char, uscc_check_char

USCC = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_serial = itertools.count(random.randrange(100, 900))


def id_number(region: str = "640104", born: date = date(1990, 3, 7), seq: int | None = None, male: bool = True) -> str:
    """A valid resident ID number (GB 11643) with the given region prefix and birth date."""
    seq = next(_serial) % 1000 if seq is None else seq
    body = f"{region}{born:%Y%m%d}{seq // 10 % 100:02d}"
    body += str((seq % 5) * 2 + (1 if male else 0))
    return body + id_check_char(body)


def unique_id_number(region: str = "640104", male: bool = True) -> str:
    rng = random.Random()
    born = date(rng.randrange(1960, 2000), rng.randrange(1, 13), rng.randrange(1, 29))
    return id_number(region, born, rng.randrange(1000), male)


def credit_code(region: str = "640104") -> str:
    first = "91" + region + "".join(random.choice(USCC[:10] + "ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


def phone() -> str:
    return "139" + f"{random.randrange(10**8):08d}"


def auth(scopes=("membership:read", "membership:write"), region: str = "640000", subject: str = "tester") -> dict:
    return {"Authorization": "Bearer " + mint_token(subject, list(scopes), region)}


class Membership:
    def __init__(self, client: httpx.AsyncClient, app, dsn: str):
        self.client, self.app, self.dsn = client, app, dsn

    async def branch(self, region: str = "640104", **extra) -> dict:
        body = {"name": f"测试工会{uuid.uuid4().hex[:6]}", "credit_code": credit_code(region), "region_code": region,
                "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01", **extra}
        r = await self.client.post("/v1/branches", json=body, headers=auth())
        assert r.status_code == 201, r.text
        return r.json()

    async def join(self, branch_id: str, number: str | None = None, **extra) -> httpx.Response:
        headers = extra.pop("headers", None) or auth()
        body = {"branch_id": branch_id, "name": "张三", "id_number": number or unique_id_number(),
                "phone": phone(), "employment_form": "courier", **extra}
        return await self.client.post("/v1/members", json=body, headers=headers)

    async def member(self, branch_id: str, **extra) -> dict:
        r = await self.join(branch_id, **extra)
        assert r.status_code == 201, r.text
        return r.json()


@asynccontextmanager
async def running(stack, make_database, **settings):
    dsn = await make_database("membership")
    s = MembershipSettings(service="membership", database_url=dsn, kafka_bootstrap=stack.kafka.bootstrap,
                           outbox_poll_interval_s=0.2, **{"consume_certificates": False, **settings})
    app = build_app(s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://membership") as client:
            yield Membership(client, app, dsn)



async def outbox_events(dsn: str, event_type: str | None = None) -> list:
    """The events the service wrote (decoded CloudEvents), oldest first."""
    import asyncpg

    from shared.events import decode

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT value FROM outbox" + (" WHERE event_type = $1" if event_type else "")
                                + " ORDER BY seq", *([event_type] if event_type else []))
    finally:
        await conn.close()
    return [decode(r["value"]) for r in rows]


class KafkaTail:
    """Reads a topic from the offsets it had when started: what tests wrote since, without the history."""

    def __init__(self, bootstrap: str, topic: str = "membership.events"):
        self.bootstrap, self.topic = bootstrap, topic

    async def __aenter__(self):
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        await self.consumer.start()
        parts = [TopicPartition(self.topic, p) for p in sorted(await self.consumer._client._wait_on_metadata(self.topic))]
        self.consumer.assign(parts)
        for tp, offset in (await self.consumer.end_offsets(parts)).items():
            self.consumer.seek(tp, offset)
        return self

    async def read(self, want, timeout: float = 20.0) -> list:
        """Records since the start until ``want(decoded_events)`` is true (or the timeout)."""
        import asyncio

        from shared.events import decode

        events: list = []
        try:
            async with asyncio.timeout(timeout):
                while not want(events):
                    for batch in (await self.consumer.getmany(timeout_ms=200)).values():
                        events.extend((r.key.decode(), decode(r.value)) for r in batch)
        except TimeoutError:
            pass
        return events

    async def read_to_end(self, timeout: float = 30.0) -> list:
        """Records since the last read up to the topic's end offsets as they are now: not until an
        expected count, so a record published twice is in the answer."""
        import asyncio

        from shared.events import decode

        ends = await self.consumer.end_offsets(list(self.consumer.assignment()))
        events: list = []

        async def behind() -> bool:
            return any([await self.consumer.position(tp) < end for tp, end in ends.items()])

        async with asyncio.timeout(timeout):
            while await behind():
                for batch in (await self.consumer.getmany(timeout_ms=200)).values():
                    events.extend((r.key.decode(), decode(r.value)) for r in batch)
        return events

    async def __aexit__(self, *exc):
        await self.consumer.stop()
