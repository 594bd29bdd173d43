"""The local runtime itself: Kafka, PostgreSQL, Prometheus and the process runner, for real."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

import stack as local_stack
from shared import migrate
from shared.topics import TOPICS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def admin_client(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    return admin


async def test_kafka_has_exactly_the_declared_topics(stack):
    declared = {t.name: t for t in TOPICS}
    at_start = {t for t in stack.kafka.topics_at_start if not t.startswith("__")}
    if stack.reused:  # the runner's broker: its services have made topics of their own (Faust's)
        assert set(declared) <= at_start
    else:
        assert at_start == set(declared), "the broker's topics right after start-up differ from shared.topics"

    admin = await admin_client(stack.bootstrap)
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(list(declared))}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in declared])
    finally:
        await admin.close()
    for name, topic in declared.items():
        assert described[name]["error_code"] == 0, name
        assert len(described[name]["partitions"]) == topic.partitions, name
    configs = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            configs[resource["resource_name"]] = {c["config_names"]: c["config_value"] for c in resource["config_entries"]}
    for name, topic in declared.items():
        assert configs[name]["retention.ms"] == str(topic.retention_ms), name
        assert configs[name]["cleanup.policy"] == topic.cleanup_policy, name


async def test_broker_does_not_create_topics_on_demand(stack):
    topic = f"undeclared-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises((UnknownTopicOrPartitionError, KafkaTimeoutError)):
            await asyncio.wait_for(producer.send_and_wait(topic, b"x"), 10)
    finally:
        await producer.stop()
    admin = await admin_client(stack.bootstrap)
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


async def test_broker_restart_keeps_data(stack):
    topic = f"test.stack.restart-{uuid.uuid4().hex[:8]}"
    admin = await admin_client(stack.bootstrap)
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    sent = [f"record {n}".encode() for n in range(200)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for n, value in enumerate(sent):
            await producer.send(topic, value, key=str(n % 7).encode())
        await producer.flush()
    finally:
        await producer.stop()

    old_pid = stack.kafka.pid
    started = time.monotonic()
    await stack.kafka.restart()
    assert stack.kafka.pid != old_pid
    print(f"broker restart (stop + start) took {time.monotonic() - started:.1f} s")

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    received = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(2)])
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    received.extend(r.value for r in batch)
    finally:
        await consumer.stop()
        admin = await admin_client(stack.bootstrap)
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
    assert sorted(received) == sorted(sent)


def expected_migrations(service: str) -> set[str]:
    return {f"{scope}/{path.name}" for scope, folder in migrate.migration_dirs(service) if folder.is_dir()
            for path in folder.glob("*.sql")}


@pytest.mark.parametrize("service", local_stack.SERVICE_DATABASES)
async def test_database_migrations_recorded_and_applied_once(make_database, service):
    dsn = await make_database(service)
    conn = await asyncpg.connect(dsn)
    try:
        recorded = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    finally:
        await conn.close()
    assert recorded == expected_migrations(service)
    assert await migrate.apply(dsn, service) == [], "applying twice applied something again"


async def test_one_database_per_service_on_loopback(stack):
    rows = await stack.pg.ensure_service_databases()
    assert [db for db, _ in rows] == list(local_stack.SERVICE_DATABASES)
    again = await stack.pg.ensure_service_databases()  # idempotent: nothing created or applied
    assert all(not note.startswith("created") and not note.startswith(tuple("123456789")) for _, note in again), again
    conn = await asyncpg.connect(stack.pg.dsn())
    try:
        names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        listen = await conn.fetchval("SHOW listen_addresses")
        max_connections = await conn.fetchval("SHOW max_connections")
    finally:
        await conn.close()
    assert set(local_stack.SERVICE_DATABASES) <= names
    assert listen == "127.0.0.1"
    assert max_connections == "200"


async def test_prometheus_scrapes_a_target_added_at_run_time(stack):
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    Gauge("changai_stack_test_value", "a value for the stack test", registry=registry).set(42)
    port = stack.free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    job = f"stack-test-{uuid.uuid4().hex[:6]}"
    try:
        stack.prometheus.set_targets({job: [f"127.0.0.1:{port}"]})
        up = await stack.prometheus.wait_for(f'up{{job="{job}"}} == 1', timeout=30)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        value = await stack.prometheus.wait_for(f'changai_stack_test_value{{job="{job}"}}', timeout=10)
        assert value[0]["value"][1] == "42"
    finally:
        stack.prometheus.set_targets({job: []})
        server.shutdown()
        thread.join(5)
    assert job not in stack.prometheus.targets()


def signed(secret: str, body: bytes, msg_id: str) -> dict[str, str]:
    from standardwebhooks.webhooks import Webhook

    now = datetime.now(timezone.utc)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
            "content-type": "application/json"}


async def test_receiver_verifies_signatures_and_service_runner_stops_and_kills(stack):
    port = stack.free_port()
    env = {"CHANGAI_NOTIFIER_WEBHOOK_SECRET": local_stack.LOCAL_WEBHOOK_SECRET, "CHANGAI_HTTP_PORT": str(port)}
    receiver = await stack.start_service("receiver", [str(ROOT / "deploy/local/receiver.py"), "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"type": "changai.membership.branch.established.v1", "subject": "b-1"}).encode()
    async with httpx.AsyncClient(timeout=5) as client:
        good = await client.post(f"{url}/hooks/changai", content=body,
                                 headers=signed(local_stack.LOCAL_WEBHOOK_SECRET, body, "msg_1"))
        other_secret = "whsec_" + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
        bad = await client.post(f"{url}/hooks/changai", content=body, headers=signed(other_secret, body, "msg_2"))
        await client.post(f"{url}/control", json={"fail": 1, "status": 503, "retry_after": 2})
        failing = await client.post(f"{url}/hooks/x", content=body,
                                    headers=signed(local_stack.LOCAL_WEBHOOK_SECRET, body, "msg_3"))
        received = (await client.get(f"{url}/received")).json()
    assert (good.status_code, bad.status_code, failing.status_code) == (204, 401, 503)
    assert failing.headers["retry-after"] == "2"
    assert [(n["webhook_id"], n["type"], n["subject"], n["verified"]) for n in received] == [
        ("msg_1", "changai.membership.branch.established.v1", "b-1", True),
        ("msg_2", "changai.membership.branch.established.v1", "b-1", False),
        ("msg_3", "changai.membership.branch.established.v1", "b-1", True),
    ]
    await receiver.stop()
    assert receiver.returncode == 0, "SIGTERM should end the receiver cleanly"
    assert "verified=yes" in receiver.log_path.read_text()

    again = await stack.start_service("receiver", [str(ROOT / "deploy/local/receiver.py"), "--port", str(port)], env)
    again.kill()
    assert again.returncode == -9
    assert not local_stack.port_open(port)
