"""Nothing waits forever (docs/notifier.md): a delivery whose lease ran out is picked up again.

A real lost lease: a webhook's first attempt gets no answer in time (a failure, a retry stored in
PostgreSQL, its Kafka record committed), the retry is claimed (``sending``, a lease) and the worker
is SIGKILLed while the receiver still holds that request. Nothing on Kafka brings this delivery
back (the test waits until the worker group's committed offsets reach the end of every topic it
reads — the domain event's, whose record is acknowledged once the first attempt's outcome is stored,
and ``notifier.deliver`` — before it kills), so only the sweeper's poll for lapsed leases can. A new
worker must find it, send it once with the same ``webhook-id``, log the lost attempt as
``interrupted``, and count the pick-up as ``via="lease"``.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from test_notifier_delivery import completed

from notifier_harness import WORKER_TOPICS

pytestmark = pytest.mark.integration

HANG_S = 5.0  # the receiver holds each request longer than the worker waits (attempt timeout 3 s)


async def _all_committed(notifier) -> bool:
    """The worker's consumer group has committed every record of every topic it reads."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=notifier.stack.bootstrap, group_id=f"changai-{notifier.app_id}", enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - a new consumer knows no topic yet
        tps = [TopicPartition(t, p) for t in WORKER_TOPICS for p in consumer.partitions_for_topic(t) or ()]
        assert tps, "the worker's topics have no partitions"
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if (await consumer.committed(tp) or 0) < ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


async def _dispatched_by_lease(notifier) -> float:
    port = notifier.worker_env["CHANGAI_HTTP_PORT"]
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "changai_notifier_dispatched":
            return sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels.get("via") == "lease")
    return 0.0


async def test_a_lease_lost_with_its_worker_is_picked_up_by_the_sweeper_and_delivered_once(notifier, receivers):
    branch = await notifier.branch()
    hook = f"lease-{uuid.uuid4().hex[:6]}"
    target = f"hook:{hook}"
    channel = await notifier.channel("webhook", {"url": receivers.hook(hook)}, branch_id=branch)
    receivers.set_hook_secrets(hook, [channel["signing_secret"]])
    receivers.slow(target, HANG_S)
    # What the held requests answer when they finally do (to nobody): as many as the killed worker
    # made (the first, and one retry or more if the kill waited); the rest are cleared before it restarts.
    receivers.script(target, [503] * 4)
    event = await notifier.publish(completed(branch, programme="租约测试"))

    async def retry_in_flight_and_committed():
        if not await _all_committed(notifier):  # once true it stays true: nothing more is written there
            return None
        row = await notifier.db.fetchrow(
            "SELECT id, (SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id) AS made FROM deliveries d"
            " WHERE event_id = $1 AND status = 'sending' AND failures >= 1",
            uuid.UUID(event.id),
        )
        # and the retry's request has reached the receiver (a claim is committed a moment before its
        # request goes out: a kill in that moment left an attempt that no held request would end)
        return row if row is not None and receivers.arrived[target] >= row["made"] else None

    # One condition, checked just before the kill, so it falls inside a retry's attempt (3 s each)
    # however slow the commit was.
    row = await notifier.until(
        retry_in_flight_and_committed, "a retry in flight, every record committed", timeout=60
    )
    notifier.kill_worker()

    # Every held request ends (answered 503, to nobody) before the new worker may send: so every 204
    # the receiver gives is the new worker's.
    made = await notifier.db.fetchval("SELECT count(*) FROM attempts WHERE delivery_id = $1", row["id"])
    await notifier.until(lambda: len(receivers.received(target)) == made, "the held requests to end", timeout=30)
    with receivers.lock:
        receivers.scripts[target].clear()
    receivers.slow(target, 0)
    lease = await notifier.db.fetchrow(
        "SELECT status, lease_until < now() AS lapsed FROM deliveries WHERE id = $1", row["id"]
    )
    assert lease["status"] == "sending" and lease["lapsed"], dict(lease)

    await notifier.start_worker()

    async def delivered():
        (d,) = await notifier.deliveries(channel_id=channel["id"])
        return d if d["status"] == "delivered" else None

    found = await notifier.until(delivered, "the lapsed lease picked up and delivered", timeout=60)
    # A notice published after it, on the same channel, is delivered by the same channel task: a
    # second copy of the first would have been queued ahead of it (lease pick-ups go to the front).
    marker = await notifier.publish(completed(branch, programme="其后"))
    await notifier.until(
        lambda: any(c.headers["webhook-id"] == marker.id and c.answer == 204 for c in receivers.received(target)),
        "the next notice",
    )

    ok = [c for c in receivers.received(target) if c.headers["webhook-id"] == event.id and c.answer == 204]
    assert len(ok) == 1 and ok[0].verified_with == [0], [(c.answer, c.headers["webhook-id"]) for c in ok]
    outcomes = [a["outcome"] for a in found["attempt_log"]]
    assert outcomes[-1] == "delivered" and "interrupted" in outcomes, outcomes
    assert await _dispatched_by_lease(notifier) == 1  # the sweeper's path, not a Kafka redelivery
