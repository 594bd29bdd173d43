"""Exactly once in the projection, against the real Kafka: the same event published twice is counted once.

An outbox relay that dies between Kafka's ack and marking its row sent publishes the event again
(same CloudEvents id, same key). The worker reads private copies of its topics
(``CHANGAI_PROJECTION_TOPIC_PREFIX``); the test publishes the same record twice, waits until the
projection has processed every record up to the topic's end offsets (read from Kafka, not an
expected count), and compares the *counters* (``changai_union_branches_established_total``; the
gauge ``changai_union_branches`` is keyed by branch and would hide a double count). Then the
duplicate arrives after a SIGKILL and restart (the window is read back from the topic), and after a
``rebuild`` (replayed from offset 0): still once.
"""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from datetime import date

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from services.projection.synthetic import create_topics, produce
from shared.events import encode, envelope
from shared.events import membership as me
from shared.identifiers import uscc_check_char
from shared.kafka import connection, read_to_end

pytestmark = pytest.mark.integration


def branch_record(prefix: str) -> tuple:
    first = "91640104" + "".join(random.choice("0123456789ABCDEFGH") for _ in range(9))
    data = me.BranchEstablished(branch_id=uuid.uuid4(), name="去重测试工会", credit_code=first + uscc_check_char(first),
                                region_code="640104", city_code="640100", industry_section="C",
                                kind=me.BranchKind.enterprise, founded_on=date(2021, 3, 1))
    key, value, headers = encode(envelope(data))
    return (prefix + "membership.events", key, value, headers)


async def metrics(url: str) -> dict[str, dict[tuple, float]]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url)).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(m: dict, name: str, **match) -> float:
    return sum(v for labels, v in m.get(name, {}).items() if all(dict(labels).get(k) == w for k, w in match.items()))


async def end_offsets_of(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        return {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def resume_mark(bootstrap: str, app_id: str, topic: str, partition: int) -> int:
    """The offset the projection's resume mark of ``topic``/``partition`` says is applied, from its changelog."""
    key = orjson.dumps(f"{topic}|{partition}|@done")
    changelog = [TopicPartition(f"{app_id}-counters-changelog", p) for p in range(6)]
    mark = -1
    try:
        async for record in read_to_end(bootstrap, changelog, timeout=30):
            if record.key == key:
                mark = max(mark, orjson.loads(record.value)["o"])
    except TimeoutError:
        pass
    return mark


async def end_offsets(bootstrap: str, topic: str) -> int:
    """How many records the (private, never compacted) topic holds: the sum of its partitions' end offsets."""
    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or range(6)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def processed_to_end(url: str, bootstrap: str, topic: str, timeout: float = 90) -> dict:
    """The projection's metrics once it has processed (applied or skipped) every record up to the end offsets."""
    end = await end_offsets(bootstrap, topic)
    base = topic.split(".", 1)[1]
    async with asyncio.timeout(timeout):
        while True:
            try:
                m = await metrics(url)
            except httpx.HTTPError:
                m = {}
            done = (total(m, "changai_projection_events_total", topic=base)
                    + total(m, "changai_projection_events_skipped_total", topic=base))
            if done >= end:
                assert done == end, f"the projection processed {done} records of {end}"
                return m
            await asyncio.sleep(0.2)


async def test_an_event_published_twice_is_counted_once_across_restart_and_rebuild(stack):
    prefix = f"dd-{uuid.uuid4().hex[:8]}."
    await create_topics(stack.bootstrap, prefix)
    topic = prefix + "membership.events"
    app_id = f"dd-projection-{uuid.uuid4().hex[:8]}"
    env = stack.service_env("projection", CHANGAI_PROJECTION_TOPIC_PREFIX=prefix, CHANGAI_PROJECTION_APP_ID=app_id,
                            CHANGAI_PROJECTION_SESSION_TIMEOUT_S="6", CHANGAI_LOG_LEVEL="INFO")
    url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}/metrics"
    argv = ["-m", "services.projection", "worker"]
    established = "changai_union_branches_established_total"

    # 1. the same record twice, back to back, plus another branch
    first, second = branch_record(prefix), branch_record(prefix)
    await produce(stack.bootstrap, [first, first, second])
    worker = await stack.start_service("projection", argv, env, timeout=90)
    m = await processed_to_end(url, stack.bootstrap, topic)
    assert total(m, established) == 2
    assert total(m, "changai_projection_events_skipped_total", reason="duplicate") == 1
    assert total(m, "changai_union_branches") == 2

    # 2. killed once the original is behind the partition's resume mark (so the restarted worker does not read
    #    it again, and only the window read back from the topic can recognise the duplicate); the duplicate of
    #    that event arrives while the worker is down
    partition = DefaultPartitioner()(second[1], list(range(6)), list(range(6)))
    last = (await end_offsets_of(stack.bootstrap, topic))[partition] - 1
    async with asyncio.timeout(60):
        while await resume_mark(stack.bootstrap, app_id, "membership.events", partition) < last:
            await asyncio.sleep(0.2)
    worker.kill()
    await produce(stack.bootstrap, [second])
    restarted = await stack.start_service("projection", argv, env, timeout=90)
    m = await processed_to_end(url, stack.bootstrap, topic)
    assert total(m, established) == 2, "a duplicate published across a restart was counted"
    assert total(m, "changai_projection_events_skipped_total", reason="duplicate") == 2

    # 3. rebuilt: replayed from offset 0, the same figures
    await restarted.stop(grace=20)
    result = subprocess.run([sys.executable, "-m", "services.projection", "rebuild"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    await stack.start_service("projection", argv, env, timeout=90)
    m = await processed_to_end(url, stack.bootstrap, topic)
    assert total(m, established) == 2
    assert total(m, "changai_projection_events_skipped_total", reason="duplicate") == 2
