"""The worker process on a real Kafka: killed mid-stream it double-counts nothing; a rebuild gives the same figures.

The projection reads private copies of its topics (``CHANGAI_PROJECTION_TOPIC_PREFIX``) so that
other tests' events on the shared topics cannot change the figures checked here.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.projection.domain import DOMAIN_TOPICS, Projection
from services.projection.families import EXPORTED
from services.projection.synthetic import backlog, create_topics, encode_all, produce, scenario
from shared.events import decode, parse_data
from shared.events import membership as me
from shared.kafka import connection

pytestmark = pytest.mark.integration
FIGURES = {f.name.removesuffix("_total") if f.prometheus_type == "counter" else f.name for f in EXPORTED}
T0 = datetime(2021, 9, 1, 8, 0, tzinfo=timezone.utc)


def figures(text: str) -> dict[tuple, float]:
    """Every sample of the projection's own families, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in FIGURES:
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(fig: dict, name: str, **match) -> float:
    return sum(v for (n, labels), v in fig.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


async def scrape(url: str) -> dict:
    async with httpx.AsyncClient(timeout=10) as http:
        return figures((await http.get(url)).text)


async def records_in(bootstrap: str, prefix: str) -> int:
    """Records in the private domain topics: the sum of their partitions' end offsets (read from Kafka now)."""
    consumer = AIOKafkaConsumer(**connection(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(prefix + t, p) for t in DOMAIN_TOPICS for p in range(6)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def wait_events(url: str, bootstrap: str, prefix: str, timeout: float = 90) -> dict:
    """The figures once the projection has processed (applied or skipped) every record up to the end offsets
    of its topics: not an expected count, so a record processed twice shows as one too many."""
    n = await records_in(bootstrap, prefix)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fig = await scrape(url)
        except httpx.HTTPError:
            fig = {}
        done = total(fig, "changai_projection_events_total") + total(fig, "changai_projection_events_skipped_total")
        if done >= n:
            assert done == n, f"the projection processed {done} records of the {n} its topics hold"
            return fig
        if time.monotonic() > deadline:
            raise AssertionError(f"projection applied {done} of {n} records in {timeout:.0f} s")
        await asyncio.sleep(0.3)


def reference(records) -> dict:
    """The figures computed in this process from the same records (the worker must agree after restarts)."""
    proj = Projection({}, {})
    offsets: dict = {}
    for topic, key, value, _ in records:
        # the same partition the producer's default partitioner chose does not matter for the totals
        offset = offsets[topic] = offsets.get(topic, -1) + 1
        ce = decode(value)
        proj.apply(topic.split(".", 1)[1] if topic.count(".") > 1 else topic, 0, offset, key.decode(), ce,
                   parse_data(ce))
    return proj.snapshot()


async def test_killed_mid_stream_then_rebuilt(stack):
    prefix = f"it-{uuid.uuid4().hex[:8]}."
    await create_topics(stack.bootstrap, prefix)
    events = scenario()
    records = encode_all(events, prefix=prefix, start=T0) + list(backlog(30000, prefix=prefix))
    await produce(stack.bootstrap, records)
    n = len(records)

    app_id = f"it-projection-{uuid.uuid4().hex[:8]}"
    env = stack.service_env("projection", CHANGAI_PROJECTION_TOPIC_PREFIX=prefix, CHANGAI_PROJECTION_APP_ID=app_id,
                            CHANGAI_PROJECTION_BATCH_MAX="300", CHANGAI_PROJECTION_SESSION_TIMEOUT_S="6",
                            CHANGAI_LOG_LEVEL="INFO")
    url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}/metrics"
    argv = ["-m", "services.projection", "worker"]

    # 1. killed (SIGKILL) while it is in the middle of the backlog
    first = await stack.start_service("projection", argv, env)
    deadline = time.monotonic() + 60
    while True:
        fig = await scrape(url)
        done = total(fig, "changai_projection_events_total")
        if done > n * 0.2:
            break
        assert time.monotonic() < deadline, "the worker did not start applying"
        await asyncio.sleep(0.05)
    first.kill()
    assert done < n, "the worker finished before it could be killed mid-stream"

    # 2. restarted: it recovers its tables and carries on from its resume marks
    await stack.start_service("projection", argv, env)
    fig = await wait_events(url, stack.bootstrap, prefix)  # every record up to the end offsets, none twice
    assert total(fig, "changai_projection_events_total") == n
    members_by_city: Counter = Counter()
    for topic, key, value, _ in records:  # counted independently, from the records sent
        data = parse_data(decode(value))
        if isinstance(data, me.MemberJoined):
            members_by_city[data.city_code] += 1
        elif isinstance(data, me.MemberTransferred):
            members_by_city[data.from_city_code] -= 1
            members_by_city[data.to_city_code] += 1
        elif isinstance(data, (me.MemberLeft, me.MemberLapsed)):
            members_by_city[data.city_code] -= 1
    for city, expected in members_by_city.items():
        assert total(fig, "changai_union_members", city=city) == expected, city
    ref = reference(records)
    label_names = {f.name: f.labels for f in EXPORTED}
    for name, series in ref.items():
        if name in ("changai_projection_last_event_timestamp_seconds", "changai_notice_delivery_latency_seconds"):
            continue
        # Series by series, labels included (a value moved to the wrong label would keep the family's total).
        want = {tuple(sorted(zip(label_names[name], labels, strict=True))): v for labels, v in series.items() if v}
        got = {labels: v for (n_, labels), v in fig.items() if n_ == name and v}
        assert got == pytest.approx(want), name

    # 3. a poison record is dead-lettered once and counted from the dead-letter topic
    await produce(stack.bootstrap, [(prefix + "membership.events", b"poison", b"{not json", [])])
    fig = await wait_events(url, stack.bootstrap, prefix)
    deadline = time.monotonic() + 30
    while total(fig, "changai_dlq_records_total", topic="membership.events") < 1:
        assert time.monotonic() < deadline, "the dead letter was not counted"
        await asyncio.sleep(0.3)
        fig = await scrape(url)
    before = await scrape(url)
    assert total(before, "changai_projection_events_skipped_total", reason="invalid") == 1

    # 4. rebuild: stop, reset, start again; the figures come back identical
    for svc in list(stack._servers.services):
        if svc.name == "projection" and svc.alive() and env["CHANGAI_HTTP_PORT"] in (svc.health_url or ""):
            await svc.stop(grace=20)
    result = subprocess.run([sys.executable, "-m", "services.projection", "rebuild"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "changelog" in result.stdout
    await stack.start_service("projection", argv, env)
    after = await wait_events(url, stack.bootstrap, prefix)
    deadline = time.monotonic() + 30
    while total(after, "changai_dlq_records_total") < total(before, "changai_dlq_records_total"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)
        after = await scrape(url)
    assert after == before
    assert total(after, "changai_dlq_records_total", topic="membership.events") == 1  # not parked again
