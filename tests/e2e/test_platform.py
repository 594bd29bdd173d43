"""The walking skeleton, real all the way: HTTP → Postgres outbox → Kafka → notifier webhook and
projection → Prometheus; and the guarantees around it (Kafka down, bad input)."""
import asyncio
import random
import uuid

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from shared.auth import mint_token
from shared.identifiers import uscc_check_char
from shared.kafka import connection
from shared.settings import Settings
from tests.integration.kafka_records import end_offsets

pytestmark = pytest.mark.e2e

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def credit_code() -> str:
    first = "91640100" + "".join(random.choice(ALPHABET[:10] + "ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


def branch_body(region="640104", **over):
    body = {"name": "银川市兴庆区某某制造有限公司工会", "credit_code": credit_code(), "region_code": region,
            "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"}
    body.update(over)
    return body


TOKEN = {"Authorization": "Bearer " + mint_token("hr-system", ["membership:write", "membership:read"], "640000")}


class Platform:
    def __init__(self, stack, dsn, membership, receiver, projection, notifier_dsn=None):
        self.stack, self.dsn, self.notifier_dsn = stack, dsn, notifier_dsn
        self.membership, self.receiver, self.projection = membership, receiver, projection
        self.http = httpx.AsyncClient(timeout=10)
        self.notifier_group = NOTIFIER_GROUP.format(app_id="notifier")

    async def establish(self, **over) -> httpx.Response:
        return await self.http.post(f"{self.membership}/v1/branches", json=branch_body(**over), headers=TOKEN)

    async def notices_for(self, subject: str) -> list[dict]:
        notices = (await self.http.get(f"{self.receiver}/received")).json()
        return [n for n in notices if n["subject"] == subject]

    async def wait_notice(self, subject: str, timeout: float = 60) -> dict:
        async with asyncio.timeout(timeout):
            while not (found := await self.notices_for(subject)):
                await asyncio.sleep(0.1)
        return found[0]

    async def projected(self, region: str, family: str = "changai_union_branches") -> float:
        """A family's value for ``region`` as the projection exports it (the gauge by default)."""
        text = (await self.http.get(f"{self.projection}/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(family + "{") and f'region="{region}"' in line)

    async def projected_records(self, topic: str) -> float:
        """Records of ``topic`` the projection has processed (applied or skipped, duplicates included)."""
        text = (await self.http.get(f"{self.projection}/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("changai_projection_events_total{", "changai_projection_events_skipped_total{"))
                   and f'topic="{topic}"' in line)

    async def prometheus(self, region: str) -> float | None:
        result = await self.stack.prometheus.query(f'sum(changai_union_branches{{region="{region}"}})')
        values = result["data"]["result"] if isinstance(result, dict) and "data" in result else result
        return float(values[0]["value"][1]) if values else None

    async def counts(self) -> tuple[int, int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return (await conn.fetchval("SELECT count(*) FROM branches"),
                    await conn.fetchval("SELECT count(*) FROM outbox"))
        finally:
            await conn.close()


NOTIFIER_GROUP = "changai-{app_id}"  # Faust's group is its app's id: shared.streams.create_stream_app


async def start_group_at_the_end(bootstrap: str, group_id: str) -> None:
    """Commit the current end offset of every topic's partitions for ``group_id``."""
    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - as training/consumers.py, pinned
        tps = [TopicPartition(t, p) for t in cluster.topics() if not t.startswith("__")
               for p in cluster.partitions_for_topic(t) or ()]
        assert tps, "no topics in the suite's Kafka"
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: end for tp, end in ends.items()})
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def platform(stack, make_database):
    dsn = await make_database("membership")
    notifier_dsn = await make_database("notifier")
    receiver_port = stack.free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    base = dict(receiver_url=receiver_url, CHANGAI_LOG_LEVEL="INFO")
    receiver_env = stack.service_env("receiver", http_port=receiver_port, **base)
    await stack.start_service("receiver", ["deploy/local/receiver.py", "--port", str(receiver_port)], receiver_env)
    m_env = stack.service_env("membership", database_url=dsn, CHANGAI_OUTBOX_POLL_INTERVAL_S="0.5", **base)
    # The suite's Kafka holds earlier modules' events (thousands from the intake fault test), and this worker's
    # seeded channel hears everything under the region: its group of its own starts where every topic ends now
    # (committed before it starts, so no reset policy races a rebalance after the Kafka outage below), and
    # it is ready (/readyz: partitions assigned) before the first write.
    app_id = f"notifier-platform-{uuid.uuid4().hex[:8]}"
    await start_group_at_the_end(stack.bootstrap, NOTIFIER_GROUP.format(app_id=app_id))
    # Likewise membership's command group: with the default one this fresh membership would reject every earlier
    # module's leftover intake command and the seeded channel would hear each rejection first.
    commands_group = f"membership-commands-{app_id}"
    await start_group_at_the_end(stack.bootstrap, commands_group)
    m_env["CHANGAI_COMMANDS_GROUP_ID"] = commands_group
    n_env = stack.service_env("notifier-worker", database_url=notifier_dsn, CHANGAI_NOTIFIER_APP_ID=app_id, **base)
    p_env = stack.service_env("projection", **base)
    await asyncio.gather(
        stack.start_service("membership", ["-m", "services.membership", "api"], m_env),
        stack.start_service("notifier-worker", ["-m", "services.notifier", "worker"], n_env, health_path="/readyz",
                            timeout=90),
        stack.start_service("projection", ["-m", "services.projection", "worker"], p_env, timeout=90),
    )
    projection_addr = f"127.0.0.1:{p_env['CHANGAI_HTTP_PORT']}"
    stack.prometheus.set_targets({"projection": [projection_addr]})
    p = Platform(stack, dsn, f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}", receiver_url,
                 f"http://{projection_addr}", notifier_dsn)
    p.notifier_group = NOTIFIER_GROUP.format(app_id=app_id)
    yield p
    await p.http.aclose()


async def test_branch_reaches_webhook_and_prometheus(platform):
    before = await platform.projected("640105")
    resp = await platform.establish(region="640105")
    assert resp.status_code == 201, resp.text
    branch = resp.json()
    assert branch["city_code"] == "640100" and branch["status"] == "active"

    notice = await platform.wait_notice(branch["id"])
    assert notice["verified"], notice["reason"]  # Standard Webhooks signature, checked by the standardwebhooks library
    assert notice["type"] == "changai.membership.branch.established.v1"
    assert notice["body"]["data"]["region_code"] == "640105"
    assert "credit_code" in notice["body"]["data"]

    async with asyncio.timeout(60):
        while await platform.projected("640105") != before + 1:
            await asyncio.sleep(0.2)
    async with asyncio.timeout(30):  # Prometheus scrapes every second in tests
        while await platform.prometheus("640105") != before + 1:
            await asyncio.sleep(0.5)

    got = await platform.http.get(f"{platform.membership}/v1/branches/{branch['id']}", headers=TOKEN)
    assert got.status_code == 200 and got.json()["name"] == branch["name"]


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp) or 0
    finally:
        await consumer.stop()


async def test_kafka_down_write_accepted_and_delivered_once_after_restart(platform):
    """Exactly once where it is claimed, checked so that a duplicate would show: the projection's counter
    (not the gauge, keyed by branch, which absorbs a double count) after it has processed membership.events
    to its end offsets; and the notifier's delivery log and the receiver once the worker has committed
    past every copy of the event in its partition."""
    established = "changai_union_branches_established_total"
    before, counted_before = await platform.projected("640106"), await platform.projected("640106", established)
    await platform.stack.kafka.stop()
    try:
        resp = await platform.establish(region="640106")  # accepted while Kafka is down: it waits in the outbox
        assert resp.status_code == 201, resp.text
        ready = await platform.http.get(f"{platform.membership}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["kafka"] != "ok"
        conn = await asyncpg.connect(platform.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM outbox JOIN outbox_pending USING (seq) WHERE key = $1",
                                       resp.json()["id"]) == 1, "the event must wait in the outbox"
        finally:
            await conn.close()
        assert await platform.notices_for(resp.json()["id"]) == []
    finally:
        await platform.stack.kafka.start()
    branch_id = resp.json()["id"]
    await platform.wait_notice(branch_id, timeout=120)
    bootstrap = platform.stack.bootstrap
    # The relay has marked the row sent: whatever it published (once, or again after the outage) is in Kafka.
    async with asyncio.timeout(60):
        while True:
            conn = await asyncpg.connect(platform.dsn)
            try:
                if not await conn.fetchval("SELECT count(*) FROM outbox_pending"):
                    break
            finally:
                await conn.close()
            await asyncio.sleep(0.2)
    ends = await end_offsets(bootstrap, "membership.events")

    # The projection: every record up to those end offsets processed, then the counter moved by exactly one.
    async with asyncio.timeout(120):
        while await platform.projected_records("membership.events") < sum(ends.values()):
            await asyncio.sleep(0.2)
    assert await platform.projected("640106", established) == counted_before + 1
    assert await platform.projected("640106") == before + 1

    # The notifier: its group has committed past the end of the event's partition (every copy handled) ...
    partition = DefaultPartitioner()(branch_id.encode(), list(range(6)), list(range(6)))
    tp = TopicPartition("membership.events", partition)
    async with asyncio.timeout(120):
        while await committed(bootstrap, platform.notifier_group, tp) < ends[tp]:
            await asyncio.sleep(0.3)
    # ... and every delivery it logged for the branch has ended: one per channel, one notice received.
    conn = await asyncpg.connect(platform.notifier_dsn)
    try:
        async with asyncio.timeout(60):
            while await conn.fetchval("SELECT count(*) FROM deliveries WHERE branch_id = $1 AND status NOT IN "
                                      "('delivered', 'dead')", uuid.UUID(branch_id)):
                await asyncio.sleep(0.2)
        per_channel = await conn.fetch("SELECT channel_id, count(*) AS n FROM deliveries WHERE branch_id = $1 "
                                       "AND resend_of IS NULL GROUP BY channel_id", uuid.UUID(branch_id))
    finally:
        await conn.close()
    assert per_channel and all(r["n"] == 1 for r in per_channel), per_channel
    notices = await platform.notices_for(branch_id)
    assert len(notices) == 1 and len({n["webhook_id"] for n in notices}) == 1


async def test_bad_input_is_a_problem_and_writes_nothing(platform):
    url = f"{platform.membership}/v1/branches"
    before = await platform.counts()
    forged = "Bearer " + mint_token("x", ["membership:write"],
                                    settings=Settings(jwt_secret="someone-else's-secret-of-32-bytes-or-more"))
    out_of_scope = "Bearer " + mint_token("x", ["membership:write"], "640200")
    valid = credit_code()
    corrupted = valid[:-1] + next(c for c in ALPHABET if c != valid[-1])
    cases = [
        ("malformed JSON", dict(content=b'{"name": ', headers={**TOKEN, "content-type": "application/json"}),
         400, "malformed-json"),
        ("wrong types", dict(json=branch_body(founded_on=20210301, kind=5), headers=TOKEN), 422, "validation-error"),
        ("unknown field", dict(json=branch_body(colour="red"), headers=TOKEN), 422, "validation-error"),
        ("invalid credit code", dict(json=branch_body(credit_code=corrupted), headers=TOKEN), 422,
         "validation-error"),
        ("region outside Ningxia", dict(json=branch_body(region="110105"), headers=TOKEN), 422, "validation-error"),
        ("missing token", dict(json=branch_body()), 401, "unauthorized"),
        ("forged token", dict(json=branch_body(), headers={"Authorization": forged}), 401, "unauthorized"),
        ("out of the token's region", dict(json=branch_body(region="640104"),
                                           headers={"Authorization": out_of_scope}), 403, "out-of-scope"),
    ]
    for name, kwargs, status, kind in cases:
        resp = await platform.http.post(url, **kwargs)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        assert resp.headers["content-type"] == "application/problem+json", name
        assert resp.json()["type"].endswith("/" + kind), f"{name}: {resp.json()}"
    assert await platform.counts() == before, "a refused request wrote something"


async def test_idempotent_establish_and_duplicate_employer(platform):
    body = branch_body(region="640121")
    key = {"Idempotency-Key": str(uuid.uuid4()), **TOKEN}
    first = await platform.http.post(f"{platform.membership}/v1/branches", json=body, headers=key)
    again = await platform.http.post(f"{platform.membership}/v1/branches", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    changed = await platform.http.post(f"{platform.membership}/v1/branches", json={**body, "name": "另一个工会"},
                                       headers=key)
    assert changed.status_code == 422 and changed.json()["type"].endswith("/idempotency-key-reused")
    dup = await platform.establish(region="640121", credit_code=body["credit_code"])
    assert dup.status_code == 409 and dup.json()["branch_id"] == first.json()["id"]
