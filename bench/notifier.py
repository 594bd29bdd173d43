"""The notifier: latency from a domain event to its receipt at 200 events/s, and throughput.

Set-up: one notifier worker (the real entry point, a process) with its own database; 100
branches, each with a webhook channel (Standard Webhooks signed) pointing at one receiver in
this process (a minimal asyncio HTTP/1.1 server answering 204 at once: a healthy receiver).
Events (``funding.subsidy.paid``, spread over the branches: each goes to the organising branch's
channel) are published straight to ``funding.events`` with their CloudEvent ``time`` set at
publication.

1. Latency: 200 events/s three times (``CHANGAI_BENCH_NOTIFIER_RATES``) for ``CHANGAI_BENCH_NOTIFIER_SECONDS``
   (default 20) seconds each; for every notice, receipt time minus the event's ``time``: p50 / p90 /
   p99 / max.
2. Throughput: a burst of ``CHANGAI_BENCH_NOTIFIER_BURST`` (default 5,000) events published as fast
   as possible; notices per second from the first receipt to the last.
3. The raw floor on the same machine: a bare aiokafka consumer + httpx POST to the same
   receiver (no database, no signing, no routing), on the same burst size.
4. Fairness (``CHANGAI_BENCH_NOTIFIER_FLOOD``, default 100,000; 0 skips it;
   ``CHANGAI_BENCH_NOTIFIER_ONLY=fairness`` runs only 4 and 5): a second worker; a 100,000-member
   import (``member.joined`` with an ``import_id``) is put on ``membership.events`` before the worker
   starts (all of it in transit ahead of everything else), for the region's webhook channel, which
   asks for every member (the bulk lane); ten quiet branch channels get a trickle of ``subsidy.paid``
   (5/s) and a retry channel, whose receiver refuses each notice's first attempt (retry schedule 2 s,
   no jitter), every tenth, until the import is taken in and ``CHANGAI_BENCH_NOTIFIER_BACKLOG_S``
   (60) more, or ``CHANGAI_BENCH_NOTIFIER_MAX_S`` (default 180: the 100,000 stay a backlog all along; what bounds
   `make bench`). Printed: the quiet channels' first-attempt delay
   (receipt − event time) p50 / p90 / p99 / max (every minute while it runs, and at the end), retry
   lateness against the schedule, the digests a city federation subscribed to member events got,
   how many notices reached each point of the worker more than 1 s after their event.
5. The replay of issue 15 (``CHANGAI_BENCH_NOTIFIER_REPLAY``, default 65,585; 0 skips it): the same,
   with a 65,585-member import and the region's channel subscribed to everything (``*``): its
   digests (how many, counting what, how long after the import), the quiet channels' first attempts; cut at
   ``CHANGAI_BENCH_NOTIFIER_REPLAY_MAX_S`` (default the larger of MAX_S and 300 s).
6. Horizontal scale (``CHANGAI_BENCH_NOTIFIER_TWO_WORKERS``, default 1; after 2): a second worker of the same app
   id joins; a burst to the 100 channels must arrive once each, both workers sending a share.

Aims (issues 18 and 15), printed as rows of the aims table: p99 < 250 ms at 200/s in each of three runs
(``CHANGAI_BENCH_NOTIFIER_RATES``, default 200,200,200); two workers, nothing sent twice; idle channels' first
attempt p99 < 1 s beside the 100,000 backlog; retries within 10 % of their schedule; the region's digests within
a minute of the import's end.
Every request is verified as a Standard Webhooks receiver would; duplicates are counted.
Every notice is checked: one per event, none missing.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import aim, aims_table, load_avg, percentile, servers, summary, table
from services.notifier import topics, vault
from services.notifier.pipeline import SEED_NS  # noqa: F401  (imported to fail early if the package is broken)
from shared.events import encode, envelope
from shared.events.funding import SubsidyPaid
from shared.kafka import make_consumer, make_producer

BRANCHES = 100
# Issue 18's aim is p99 < 250 ms at 200/s in every one of three consecutive runs.
RATES = tuple(float(r) for r in os.environ.get("CHANGAI_BENCH_NOTIFIER_RATES", "200,200,200").split(","))
TWO_WORKERS = os.environ.get("CHANGAI_BENCH_NOTIFIER_TWO_WORKERS", "1") == "1"
# Each fairness scenario's trickle stops after this many seconds (the figures so far): bounds `make bench`.
MAX_S = float(os.environ.get("CHANGAI_BENCH_NOTIFIER_MAX_S", "180")) or float("inf")
# The replay's aim (the region's digests within a minute of the import's end) needs the import routed whole: longer.
REPLAY_MAX_S = float(os.environ.get("CHANGAI_BENCH_NOTIFIER_REPLAY_MAX_S", "0")) or max(MAX_S, 300.0)


def quarters(values: list[float]) -> list[list[float]]:
    n = max(1, len(values) // 4)
    return [values[i * n:(i + 1) * n] or values[-1:] for i in range(4)]


class Receiver:
    """A minimal keep-alive HTTP/1.1 server: records (receipt time, webhook-id, event time), answers 204."""

    def __init__(self):
        self.seen: dict[str, tuple[float, float]] = {}
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.time()
                headers = {}
                lines = head.decode("latin-1").split("\r\n")
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = lines[0].split(" ")[1] if " " in lines[0] else ""
                status = self.answer(now, path, headers.get("webhook-id", ""), body)
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            writer.close()

    def answer(self, now: float, path: str, msg_id: str, body: bytes) -> int:
        self.record(now, msg_id, body)
        return 204

    def record(self, now: float, msg_id: str, body: bytes) -> None:
        if msg_id not in self.seen:
            event_time = orjson.loads(body).get("time")
            from datetime import datetime

            self.seen[msg_id] = (now, datetime.fromisoformat(event_time).timestamp() if event_time else now)
        self.count += 1
        self.first = self.first or now
        self.last = now


def completed(branch: uuid.UUID, n: int) -> SubsidyPaid:
    """A notice every branch gets: its training subsidy was paid."""
    return SubsidyPaid(
        claim_id=uuid.uuid4(), session_id=uuid.uuid4(), organiser_id=str(branch), subsidy_category="pre_job",
        region_code="640104", city_code="640100", fund_id=uuid.uuid4(), source_kind="skills_account",
        fiscal_year=2024, disbursement_id=uuid.uuid4(), persons=30 + n % 10, amount_fen=2_400_000)


async def start_at_end(bootstrap: str, group: str, names) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        tps = [TopicPartition(t, p) for t in names for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


def lag_sums(text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of changai_notifier_lag_seconds per point, from the worker's /metrics."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, i in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("changai_notifier_lag_seconds" + suffix):
                point = line.split('point="')[1].split('"')[0]
                out.setdefault(point, [0.0, 0.0])[i] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


async def publish(producer, events, rate: float | None) -> list[str]:
    ids = []
    start = time.perf_counter()
    for i, data in enumerate(events):
        if rate:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        event = envelope(data)
        key, value, headers = encode(event)
        await producer.send(data.topic, value, key=key, headers=headers)
        ids.append(event.id)
    await producer.flush()
    return ids


async def wait_for(receiver: Receiver, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(i in receiver.seen for i in ids):
        if time.monotonic() > deadline:
            missing = sum(1 for i in ids if i not in receiver.seen)
            raise RuntimeError(f"{missing} of {len(ids)} notices not received after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def raw_floor(bootstrap: str, port: int, n: int) -> float:
    """aiokafka consumer → httpx POST, 32 in flight: no database, routing or signing."""
    topic = "funding.events"
    producer = make_producer(bootstrap, linger_ms=5)
    await producer.start()
    consumer = make_consumer(bootstrap, f"bench-raw-{uuid.uuid4().hex[:6]}", topic, auto_offset_reset="latest")
    await consumer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.1)
    for tp in consumer.assignment():
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
    receiver = Receiver()
    rport = await receiver.start()
    branch = uuid.uuid4()
    await publish(producer, [completed(branch, i) for i in range(n)], None)
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as http:
        async def post(value: bytes, msg_id: str):
            async with sem:
                await http.post(f"http://127.0.0.1:{rport}/raw", content=value, headers={"webhook-id": msg_id})

        tasks, got = [], 0
        while got < n:
            for records in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                for r in records:
                    tasks.append(asyncio.ensure_future(post(r.value, str(r.offset) + str(r.partition))))
                    got += 1
        await asyncio.gather(*tasks)
    await consumer.stop()
    await producer.stop()
    receiver.server.close()
    return receiver.count / max(receiver.last - receiver.first, 1e-6)


async def main() -> None:
    if os.environ.get("CHANGAI_BENCH_NOTIFIER_ONLY") == "fairness":
        async with servers() as s:
            await fairness(s)
        return
    seconds = float(os.environ.get("CHANGAI_BENCH_NOTIFIER_SECONDS", "20"))
    burst = int(os.environ.get("CHANGAI_BENCH_NOTIFIER_BURST", "5000"))
    receiver = Receiver()
    port = await receiver.start()
    async with servers() as s:
        dsn = await s.database("notifier")
        app_id = f"notifier-bench{uuid.uuid4().hex[:6]}"
        names = (*topics.DOMAIN_SOURCES, topics.DELIVER, topics.DEFERRED, *topics.RETRIES)
        from services.notifier.consumers import ensure_topics
        from services.notifier.settings import NotifierSettings

        settings = NotifierSettings(database_url=dsn, kafka_bootstrap=s.kafka.bootstrap)
        await ensure_topics(settings)
        await start_at_end(s.kafka.bootstrap, f"changai-{app_id}", names)

        # The read model and 100 webhook channels, written as the API writes them.
        branches = [uuid.uuid4() for _ in range(BRANCHES)]
        key = settings.data_key_bytes()
        conn = await asyncpg.connect(dsn)
        from services.notifier import store

        for i, b in enumerate(branches):
            await store.upsert_branch(conn, b, f"基准工会{i:03d}", "640104", None, "enterprise")
            channel_id = uuid.uuid4()
            await store.insert_channel(
                conn, id=channel_id, kind="webhook", name=f"bench {i}", owner_kind="branch", owner_branch_id=b,
                owner_region="640104", scope="own", event_types=["changai.funding.*"], locale="zh-CN",
                config={}, secrets=vault.seal(key, channel_id, {
                    "url": f"http://127.0.0.1:{port}/hooks/{i}",
                    "signing": [{"secret": vault.new_webhook_secret(), "expires_at": None}]}),
                quiet_hours=None, created_by="bench")
        await conn.close()

        env = s.env("notifier-worker", database_url=dsn, CHANGAI_NOTIFIER_APP_ID=app_id,
                    CHANGAI_NOTIFIER_WEBHOOKS="{}", CHANGAI_OUTBOUND_ALLOW_PRIVATE="1", CHANGAI_LOG_LEVEL="WARNING",
                    CHANGAI_OUTBOX_POLL_INTERVAL_S="0.5")
        main_worker = await s.start("notifier-worker", ["-m", "services.notifier", "worker"], env, health="/readyz")
        producer = make_producer(s.kafka.bootstrap, linger_ms=0)
        await producer.start()
        try:
            # Warm-up: connections, caches, the first rebalance.
            warm = await publish(producer, [completed(b, 0) for b in branches], 100)
            await wait_for(receiver, warm, 60)

            phases = []
            metrics_url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}/metrics"
            for rate in RATES:
                before_lag = lag_sums(httpx.get(metrics_url).text)
                n = int(seconds * rate)
                events = [completed(branches[i % BRANCHES], i) for i in range(n)]
                started = time.perf_counter()
                ids = await publish(producer, events, rate)
                sent_for = time.perf_counter() - started
                await wait_for(receiver, ids, 300)
                after_lag = lag_sums(httpx.get(metrics_url).text)
                where = {k: (after_lag[k][0] - before_lag.get(k, (0, 0))[0]) /
                         max(1, after_lag[k][1] - before_lag.get(k, (0, 0))[1]) * 1000 for k in after_lag}
                phases.append((len(ids), len(ids) / sent_for,
                               [(receiver.seen[i][0] - receiver.seen[i][1]) * 1000 for i in ids], where))
                await asyncio.sleep(2)
            total = sum(p[0] for p in phases)
            latency_aim(phases)

            before = receiver.count
            burst_ids = await publish(producer, [completed(branches[i % BRANCHES], i) for i in range(burst)], None)
            t0 = time.time()
            await wait_for(receiver, burst_ids, 300)
            first = min(receiver.seen[i][0] for i in burst_ids)
            last = max(receiver.seen[i][0] for i in burst_ids)
            throughput = burst / max(last - first, 1e-6)
            duplicates = receiver.count - before - burst
            if TWO_WORKERS:
                await two_workers(s, env, producer, receiver, branches, burst, throughput)
        finally:
            await producer.stop()
        # The fairness scenarios run their own workers: these would only route their imports into nothing.
        for svc in [x for x in s.services if x.name.startswith("notifier-worker")]:
            await svc.stop(grace=5)
            s.services.remove(svc)
        del main_worker
        raw = await raw_floor(s.kafka.bootstrap, port, burst)
        if int(os.environ.get("CHANGAI_BENCH_NOTIFIER_FLOOD", "100000")) > 0 or \
                int(os.environ.get("CHANGAI_BENCH_NOTIFIER_REPLAY", "65585")) > 0:
            await fairness(s)

    print(table([(f"{n} events at {rate:.0f}/s, 100 channels", *summary(latencies))
                 for n, rate, latencies, _ in phases],
                ("latency: domain event → receipt (ms)", "p50", "p90", "p99", "max")))
    # Whether the latency is a queue that keeps growing, a start that is caught up, or steady.
    print()
    print(table([(f"at {rate:.0f}/s", *(f"{statistics.median(q):.1f}" for q in quarters(latencies)))
                 for _, rate, latencies, _ in phases],
                ("p50 ms by quarter of the phase, in publishing order", "1st", "2nd", "3rd", "4th")))
    points = ("route", "rendered", "deliver", "claimed", "sent")
    print()
    print(table([(f"at {rate:.0f}/s", *(f"{where.get(p, 0):.1f}" for p in points)) for _, rate, _, where in phases],
                ("mean ms from the event's time to:", *points)))
    print()
    print(table([
        ("notifier worker (1 process): route → render → deliver, signed", f"{throughput:.0f}", "1.00"),
        ("raw floor: aiokafka consumer → httpx POST (no DB, no signing)", f"{raw:.0f}", f"{raw / throughput:.2f}"),
    ], ("throughput on a burst of %d events" % burst, "notices/s", "× notifier")))
    load = os.getloadavg()
    print(f"\nload average during the run (2 cores): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"notices: {total + len(burst_ids)} expected, all received; "
          f"{max(duplicates, 0)} duplicate request(s) in the burst; elapsed since burst end {time.time() - t0:.1f} s")


def latency_aim(phases: list) -> None:
    """Issue 18: at 200 events/s, p99 < 250 ms in every one of (at least) three consecutive runs."""
    at_200 = [percentile(latencies, 99) for _, rate, latencies, _ in phases if rate >= 190]
    if not at_200:
        return
    worst = max(at_200)
    print(aims_table([aim(f"notifier at 200 events/s: p99 of each of {len(at_200)} runs", worst, worst, None, None,
                          "p99 < 250 ms in each of 3 runs", len(at_200) >= 3 and worst < 250, load_avg(), " ms",
                          figure="p99 " + " / ".join(f"{p:,.0f}" for p in at_200) + " ms")]))


async def two_workers(s, env: dict, producer, receiver: "Receiver", branches: list, n: int, one: float) -> None:
    """Horizontal scale (issue 18): a second worker of the same app id joins; Faust splits the partitions between
    the two; a burst of ``n`` events to the 100 channels must arrive once each, both workers sending a share."""
    env2 = s.env("notifier-worker", database_url=env["CHANGAI_DATABASE_URL"],
                 **{k: v for k, v in env.items() if k.startswith("CHANGAI_NOTIFIER_") or k in (
                     "CHANGAI_OUTBOUND_ALLOW_PRIVATE", "CHANGAI_LOG_LEVEL", "CHANGAI_OUTBOX_POLL_INTERVAL_S")})
    urls = [f"http://127.0.0.1:{e['CHANGAI_HTTP_PORT']}/metrics" for e in (env, env2)]
    await s.start("notifier-worker-2", ["-m", "services.notifier", "worker"], env2, health="/readyz")
    # the rebalance done: an event to every channel arrives (both workers then own their partitions)
    warm = await publish(producer, [completed(b, 0) for b in branches], 100)
    await wait_for(receiver, warm, 300)
    sent0 = [lag_sums(httpx.get(u).text).get("sent", (0, 0))[1] for u in urls]
    before, load0 = receiver.count, load_avg()
    ids = await publish(producer, [completed(branches[i % BRANCHES], i) for i in range(n)], None)
    await wait_for(receiver, ids, 600)
    await asyncio.sleep(3)  # anything sent twice would come now
    first, last = min(receiver.seen[i][0] for i in ids), max(receiver.seen[i][0] for i in ids)
    rate = n / max(last - first, 1e-6)
    twice = receiver.count - before - n
    each = [lag_sums(httpx.get(u).text).get("sent", (0, 0))[1] - s0 for u, s0 in zip(urls, sent0)]
    print(f"two workers, one app id: a burst of {n:,}: {rate:,.0f} notices/s (one worker {one:,.0f}/s); sent by each "
          f"{' + '.join(f'{x:,.0f}' for x in each)}; received twice {twice}", flush=True)
    print(aims_table([aim("horizontal scale: notifier, 2 workers split the partitions", rate, None, one, None,
                          "none sent twice, both workers sending", twice == 0 and min(each) > 0,
                          f"{load0}–{load_avg()}", raw=f"1 worker {one:,.0f}/s",
                          figure=f"{rate:,.0f}/s, sent {' + '.join(f'{x:,.0f}' for x in each)}, {twice} twice")]))


# -- fairness: one channel flooded, quiet channels, retries, digests ---------------------------------


class FairReceiver(Receiver):
    """Per path: every request's time by webhook-id; ``/hooks/retry…`` refuses each notice's first try.
    Every request is verified as a Standard Webhooks receiver would (the channel's secret)."""

    def __init__(self):
        super().__init__()
        self.by_path: dict[str, dict[str, list[float]]] = {}
        self.bodies: dict[str, list[dict]] = {}
        self.secrets: dict[str, object] = {}  # path -> standardwebhooks.Webhook
        self.headers_of: dict[str, dict] = {}
        self.invalid = 0
        self.verified = 0

    def answer(self, now: float, path: str, msg_id: str, body: bytes) -> int:
        times = self.by_path.setdefault(path, {}).setdefault(msg_id, [])
        times.append(now)
        if path.startswith("/hooks/fed"):
            self.bodies.setdefault(path, []).append({**orjson.loads(body), "_received": now})
        self.record(now, msg_id, body)
        return 503 if path.startswith("/hooks/retry") and len(times) == 1 else 204

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.time()
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = lines[0].split(" ")[1] if " " in lines[0] else ""
                hook = self.secrets.get(path)
                try:
                    hook.verify(body, headers)  # type: ignore[union-attr]
                    self.verified += 1
                except Exception:  # noqa: BLE001 - counted: every one must verify
                    self.invalid += 1
                status = self.answer(now, path, headers.get("webhook-id", ""), body)
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            writer.close()


def joined_members(n: int, import_id: uuid.UUID):
    """``n`` members joining through one import, over five counties of two cities (by 50 branches)."""
    from datetime import date

    from shared.events.membership import MemberJoined

    counties = ("640104", "640105", "640106", "640202", "640302")
    branches = [uuid.uuid4() for _ in range(50)]
    for i in range(n):
        region = counties[i % len(counties)]
        yield MemberJoined(member_id=uuid.uuid4(), branch_id=branches[i % 50], region_code=region,
                           city_code=region[:4] + "00", employment_form="courier", birth_year=1990, sex="female",
                           joined_on=date(2024, 5, 1), import_id=import_id)


async def fairness(s) -> None:
    flood_n = int(os.environ.get("CHANGAI_BENCH_NOTIFIER_FLOOD", "100000"))
    if flood_n > 0:
        await scenario(s, flood_n, each=True)
    replay_n = int(os.environ.get("CHANGAI_BENCH_NOTIFIER_REPLAY", "65585"))
    if replay_n > 0:
        await scenario(s, replay_n, each=False)


async def scenario(s, flood_n: int, *, each: bool) -> None:
    """``each``: the region's channel asks for every member (a flood of 100,000 notices to one channel);
    else the replay of issue 15: the region's channel subscribed to everything (``*``) gets digests."""
    import standardwebhooks

    receiver = FairReceiver()
    port = await receiver.start()
    dsn = await s.database("notifier")
    app_id = f"notifier-fair{uuid.uuid4().hex[:6]}"
    from services.notifier import store
    from services.notifier.consumers import ensure_topics
    from services.notifier.settings import NotifierSettings

    settings = NotifierSettings(database_url=dsn, kafka_bootstrap=s.kafka.bootstrap)
    await ensure_topics(settings)
    await start_at_end(s.kafka.bootstrap, f"changai-{app_id}",
                       (*topics.DOMAIN_SOURCES, topics.DELIVER, topics.DEFERRED, *topics.RETRIES))
    key = settings.data_key_bytes()
    conn = await asyncpg.connect(dsn)

    async def channel(name: str, *, branch=None, region=None, types: list[str]) -> None:
        channel_id = uuid.uuid4()
        secret = vault.new_webhook_secret()
        receiver.secrets[f"/hooks/{name}"] = standardwebhooks.Webhook(secret)
        await store.insert_channel(
            conn, id=channel_id, kind="webhook", name=name, owner_kind="branch" if branch else "federation",
            owner_branch_id=branch, owner_region=region or "640104", scope="subtree" if region else "own",
            event_types=types, locale="zh-CN", config={}, secrets=vault.seal(key, channel_id, {
                "url": f"http://127.0.0.1:{port}/hooks/{name}",
                "signing": [{"secret": secret, "expires_at": None}]}),
            quiet_hours=None, created_by="bench")

    quiet = [uuid.uuid4() for _ in range(10)]
    retry_branch = uuid.uuid4()
    for i, b in enumerate([*quiet, retry_branch]):
        await store.upsert_branch(conn, b, f"安静工会{i:02d}", "640104", None, "enterprise")
    for i, b in enumerate(quiet):
        await channel(f"quiet{i}", branch=b, types=["changai.funding.*"])
    await channel("retry", branch=retry_branch, types=["changai.funding.*"])
    # each: the region's channel asks for every member (the flood); else it hears everything, as digests.
    region_path = "/hooks/fed640000"
    await channel("fed640000", region="640000",
                  types=["changai.membership.member.joined.v1"] if each else ["*"])
    await channel("fed640100", region="640100", types=["changai.membership.*"])
    await conn.close()

    env = s.env("notifier-worker", database_url=dsn, CHANGAI_NOTIFIER_APP_ID=app_id,
                CHANGAI_NOTIFIER_WEBHOOKS="{}", CHANGAI_OUTBOUND_ALLOW_PRIVATE="1", CHANGAI_LOG_LEVEL="WARNING",
                CHANGAI_OUTBOX_POLL_INTERVAL_S="0.5", CHANGAI_NOTIFIER_RETRY_WEBHOOK="2,4,8",
                CHANGAI_NOTIFIER_RETRY_JITTER="0")
    worker = f"notifier-worker-{'fair' if each else 'replay'}"
    producer = make_producer(s.kafka.bootstrap, linger_ms=5)
    await producer.start()
    metrics_url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}/metrics"
    try:
        import_id = uuid.uuid4()

        async def flood() -> tuple[float, float]:
            start = time.time()
            batch = []
            for data in joined_members(flood_n, import_id):
                batch.append(data)
                if len(batch) == 2000:
                    await publish(producer, batch, None)
                    batch = []
            await publish(producer, batch, None)
            return start, time.time()

        # The whole import is on membership.events before the worker starts: all of it in transit
        # ahead of the quiet channels' events (the hardest case), and publishing it costs this
        # process no CPU while the quiet notices are timed.
        flood_start, flood_end = await flood()
        svc = await s.start(worker, ["-m", "services.notifier", "worker"], env, health="/readyz")
        warm = await publish(producer, [completed(b, 0) for b in quiet], 20)
        await wait_for(receiver, warm, 600)

        def digested() -> int:
            return sum(d["data"]["count"] for d in receiver.bodies.get(region_path, [])
                       if d.get("type") == "changai.notifier.digest.sent.v1")

        def flood_progress() -> int:
            return len(receiver.by_path.get(region_path, {})) if each else digested()

        started, load0 = time.time(), load_avg()
        max_s, cut_short = (MAX_S if each else REPLAY_MAX_S), False
        quiet_ids: list[str] = []
        retry_ids: list[str] = []
        # During the flood: how many events the worker had routed, every 5 s.
        routed_at: list[float] = []
        i = 0
        taken_in_at = None  # when the worker had taken in the whole import
        backlog_s = float(os.environ.get("CHANGAI_BENCH_NOTIFIER_BACKLOG_S", "60"))
        while True:
            # The trickle, while the flood lasts: each, until the import is taken in and then for
            # backlog_s while the region's channel works through its backlog (it drains at its own
            # pace, for an hour or more at 100,000: not waited for); else until the digests count it all.
            if each and taken_in_at and (time.time() - taken_in_at >= backlog_s or flood_progress() >= flood_n):
                break
            if not each and digested() >= flood_n:
                break
            if time.time() - started > max_s:  # a bounded run: the figures so far
                cut_short = True
                break
            quiet_ids += await publish(producer, [completed(quiet[i % 10], i)], None)
            if i % 10 == 0:
                retry_ids += await publish(producer, [completed(retry_branch, i)], None)
            if i % 25 == 0:
                text = (await asyncio.to_thread(httpx.get, metrics_url)).text
                routed_at.append(_routed(text))
                if taken_in_at is None and routed_at[-1] >= flood_n:
                    taken_in_at = time.time()
            if i % 300 == 0 and i:  # progress every minute: the figures so far, should the run be cut short
                got = [(receiver.seen[q][0] - receiver.seen[q][1]) * 1000 for q in quiet_ids if q in receiver.seen]
                print(f"  {time.time() - started:5.0f} s: routed {routed_at[-1]:,.0f}; region channel "
                      f"{flood_progress():,}; quiet received {len(got)} of {len(quiet_ids)}: p50/p90/p99/max "
                      f"{' / '.join(summary(got or [0.0]))} ms; load {os.getloadavg()[0]:.1f}", flush=True)
            i += 1
            await asyncio.sleep(0.2)
        await wait_for(receiver, quiet_ids, 600)
        await wait_for(receiver, retry_ids, 600)
        flood_done = time.time()
        await asyncio.sleep(3)  # anything sent twice would come now
        fed = receiver.bodies.get("/hooks/fed640100", [])
        region_digests = [d for d in receiver.bodies.get(region_path, [])
                          if d.get("type") == "changai.notifier.digest.sent.v1"]
        region_times = sorted(t for ts in receiver.by_path.get(region_path, {}).values() for t in ts)
        fed_last = max((t for ts in receiver.by_path.get("/hooks/fed640100", {}).values() for t in ts), default=None)
        final_metrics = (await asyncio.to_thread(httpx.get, metrics_url)).text
        routed_end = _metric_sum(final_metrics, "changai_notifier_bulk_lane_total")
        # The worker goes now: left running, it would drain its backlog (tens of thousands of notices
        # in the flood) on the same CPU through the next scenario, which earlier runs measured so.
        await svc.stop(grace=5)
        s.services.remove(svc)
    finally:
        await producer.stop()
        receiver.server.close()

    delays = [(receiver.seen[i][0] - receiver.seen[i][1]) * 1000 for i in quiet_ids]
    during = [(receiver.seen[i][0] - receiver.seen[i][1]) * 1000 for i in quiet_ids
              if receiver.seen[i][0] < (region_times[-1] if region_times else flood_end)]
    late = []
    for times in receiver.by_path.get("/hooks/retry", {}).values():
        if len(times) >= 2:
            late.append((times[1] - times[0] - 2.0) * 1000)
    doubled = sum(1 for ts in (t for p in receiver.by_path.values() for t in p.values()) if len(ts) > 1) - len(late)
    counted = sum(d["data"]["count"] for d in fed if d.get("type") == "changai.notifier.digest.sent.v1")
    in_city = sum(1 for i in range(flood_n) if ("640104", "640105", "640106", "640202", "640302")[i % 5]
                  .startswith("6401"))
    what = ("asks for every member" if each else "subscribed to everything (*): digests")
    print(f"\n{'fairness' if each else 'replay of issue 15'}: {flood_n:,} member.joined of one import; the "
          f"region's channel {what} (import published in {flood_end - flood_start:.1f} s; taken in by the worker "
          f"{(taken_in_at or flood_done) - flood_start:.1f} s after its start; trickle stopped "
          f"{flood_done - flood_start:.1f} s after it); a trickle of {len(quiet_ids)} notices to 10 "
          f"quiet channels and {len(retry_ids)} to a retry channel meanwhile")
    print(table([("quiet channels' first attempt, whole run", *summary(delays)),
                 ("quiet channels' first attempt, while the region's channel was busy", *summary(during or [0.0])),
                 ("retry lateness against its 2 s schedule (ms)", *summary(late or [0.0]))],
                ("delay (ms)", "p50", "p90", "p99", "max")))
    print(f"retries later than 10 % of their delay (200 ms): {sum(1 for x in late if x > 200)} of {len(late)}")
    if each:
        print(f"region channel: {len(receiver.by_path.get(region_path, {})):,} member notices received by then "
              f"(the rest of its backlog drains at its pace); bulk lane rows "
              f"{routed_end:,.0f}; events routed, every 5 s: "
              f"{', '.join(f'{x:,.0f}' for x in routed_at[:12])}{' …' if len(routed_at) > 12 else ''}")
    else:
        last = last_digest_after(region_digests, flood_end)
        print(f"region channel (640000, *): {len(region_digests)} digest notice(s) counting {digested():,} of "
              f"{flood_n:,} members, {len(region_times) - len(region_digests)} other notice(s); last digest "
              f"{last:.1f} s after the import's last event was published (before the worker started)")
    print(f"city federation (640100, subscribed to changai.membership.*): {len(fed)} digest notice(s) counting "
          f"{counted:,} of its {in_city:,} members; last one {((fed_last or flood_end) - flood_end):.1f} s after the "
          f"import's last event was published")
    print(f"requests: {receiver.verified + receiver.invalid:,}, signatures verified {receiver.verified:,}, "
          f"invalid {receiver.invalid}; notices received twice (other than the scripted retries): {doubled}")
    # Where a notice waited (the worker's histograms; the bulk lane's rows never pass "deliver"):
    # how many of the notices that reached each point did so more than 1 s after their event.
    spans = []
    for point in ("route", "rendered", "deliver", "claimed", "sent"):
        total, within = _bucket(final_metrics, point, "+Inf"), _bucket(final_metrics, point, "1.0")
        spans.append(f"{point} {total - within:,.0f} of {total:,.0f}")
    print("reached more than 1 s after the event: " + "; ".join(spans))
    load = os.getloadavg()
    print(f"load average (2 cores): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}", flush=True)
    # The aims of issue 15, each with what the run was: cut at MAX_S or run whole.
    cut = f" (trickle cut at {max_s:.0f} s)" if cut_short else ""
    clean = doubled == 0 and receiver.invalid == 0
    sized = flood_n >= (100_000 if each else 65_585)  # the backlog and import
    p99 = percentile(delays, 99) if delays else float("nan")
    what = f"{flood_n:,}-notice backlog on one channel" if each else f"{flood_n:,}-member import, region on *"
    rows = [aim(f"notifier fairness: idle channels' first attempt, {what}{cut}", statistics.median(delays or [0.0]),
                p99, None, None, "p99 < 1 s, 0 twice, 0 invalid", bool(delays) and
                p99 < 1000 and clean, f"{load0}–{load_avg()}", " ms",
                figure=f"p50 {statistics.median(delays or [0.0]):,.0f} ms over {len(delays):,}, {doubled} twice, "
                f"{receiver.invalid} invalid", sized=sized)]
    if each:
        late_p99 = percentile(late, 99) if late else float("nan")
        rows.append(aim(f"notifier retries under that backlog{cut}", late_p99, late_p99, None, None,
                        "within 10 % of schedule (p99 ≤ +200 ms of 2 s)", bool(late) and late_p99 <= 200,
                        f"{load0}–{load_avg()}", " ms", figure=f"p99 +{late_p99:,.0f} ms, "
                        f"{sum(1 for x in late if x > 200)} of {len(late)} over 10 %", sized=sized))
    else:
        # The measure: the region's last digest after the import's end (its last event published;
        # the worker starts after that here, so its start-up counts against the aim too).
        after_s = last_digest_after(region_digests, flood_end)
        whole = digested() >= flood_n
        rows.append(aim(f"notifier digests: region's last digest after the import's end{cut}", after_s, None, None,
                        None, "all counted, within 60 s", whole and after_s <= 60, f"{load0}–{load_avg()}", " s",
                        figure=f"{after_s:,.1f} s, {len(region_digests)} digests counting {digested():,} of "
                        f"{flood_n:,}", sized=sized))
    print(aims_table(rows), flush=True)


def last_digest_after(digests: list[dict], since: float) -> float:
    """Seconds from ``since`` to the last digest notice received (each body carries its ``_received`` time)."""
    return max(d["_received"] for d in digests) - since if digests else float("nan")


def _routed(text: str) -> float:
    """Events the worker has routed (every event it read that anyone may hear), from /metrics."""
    for line in text.splitlines():
        if line.startswith('changai_notifier_lag_seconds_count{point="route"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _bucket(text: str, point: str, le: str) -> float:
    for line in text.splitlines():
        if line.startswith("changai_notifier_lag_seconds_bucket{") and f'le="{le}"' in line and \
                f'point="{point}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_created") and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total
