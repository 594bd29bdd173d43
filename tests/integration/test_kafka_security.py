"""Kafka clients over SASL/SCRAM-SHA-512 (``CHANGAI_KAFKA_*``), against the tests' broker's SASL listener.

The same settings reach every kind of client: aiokafka producers and consumers (``shared.kafka``),
admin clients, and Faust apps (the projection worker below runs entirely over the SASL listener)."""
import asyncio
import time
import uuid

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from services.projection.synthetic import create_topics, encode_all, produce, scenario
from shared.kafka import kafka_security, make_producer, read_to_end

pytestmark = pytest.mark.integration


@pytest.fixture
def sasl(stack, monkeypatch):
    """The SASL listener's address, with this process's clients configured for it."""
    import stack as local_stack

    if not stack.kafka.sasl_bootstrap:
        pytest.skip("the broker in use has no SASL listener (the runner's, with CHANGAI_TEST_REUSE=1)")
    env = {"CHANGAI_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CHANGAI_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "CHANGAI_KAFKA_SASL_USERNAME": local_stack.SASL_USER,
           "CHANGAI_KAFKA_SASL_PASSWORD": local_stack.SASL_PASSWORD}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    kafka_security.cache_clear()
    yield stack.kafka.sasl_bootstrap, env
    monkeypatch.undo()
    kafka_security.cache_clear()


async def new_topic(bootstrap: str) -> str:
    name = f"sasl-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)  # plaintext listener: set-up only
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    return name


async def test_producer_and_reader_authenticate_with_scram(stack, sasl):
    bootstrap, _ = sasl
    topic = await new_topic(stack.bootstrap)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over sasl", key=b"k")
    finally:
        await producer.stop()
    got = [r.value async for r in read_to_end(bootstrap, [TopicPartition(topic, 0)], timeout=20)]
    assert got == [b"over sasl"]


async def test_a_wrong_password_is_refused(stack, sasl, monkeypatch, caplog):
    bootstrap, _ = sasl
    monkeypatch.setenv("CHANGAI_KAFKA_SASL_PASSWORD", "not-the-password")
    kafka_security.cache_clear()
    producer = make_producer(bootstrap, request_timeout_ms=5000)
    with caplog.at_level("ERROR", logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in caplog.text


async def test_plaintext_clients_cannot_use_the_sasl_listener(stack, sasl, monkeypatch):
    bootstrap, _ = sasl
    monkeypatch.setenv("CHANGAI_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    kafka_security.cache_clear()
    producer = make_producer(bootstrap, request_timeout_ms=3000, metadata_max_age_ms=3000)
    with pytest.raises((KafkaConnectionError, asyncio.TimeoutError)):
        await asyncio.wait_for(producer.start(), 15)
    await producer.stop()


async def test_a_faust_worker_projects_over_sasl(stack, sasl):
    bootstrap, env = sasl
    prefix = f"sasl-{uuid.uuid4().hex[:8]}."
    await create_topics(bootstrap, prefix)  # an admin client and a producer over SASL too
    records = encode_all(scenario(), prefix=prefix)
    await produce(bootstrap, records)
    worker_env = stack.service_env("projection", CHANGAI_PROJECTION_TOPIC_PREFIX=prefix,
                                   CHANGAI_PROJECTION_APP_ID=f"sasl-projection-{uuid.uuid4().hex[:8]}", **env)
    worker_env["CHANGAI_KAFKA_BOOTSTRAP"] = bootstrap
    await stack.start_service("projection", ["-m", "services.projection", "worker"], worker_env)
    url = f"http://127.0.0.1:{worker_env['CHANGAI_HTTP_PORT']}/metrics"
    deadline = time.monotonic() + 90
    applied = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        while applied < len(records):
            assert time.monotonic() < deadline, f"the worker applied {applied} of {len(records)} records over SASL"
            await asyncio.sleep(0.5)
            text = (await http.get(url)).text
            applied = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith(("changai_projection_events_total{",
                                              "changai_projection_events_skipped_total{")))
    assert applied == len(records)
