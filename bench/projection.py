"""The projection's throughput on a backlog, against a raw aiokafka consumer, and its scrape time.

1. Private copies of the projection's topics (a unique prefix) get every label combination
   the metrics can have (``synthetic.full_label_set``) and then a backlog of N events
   (default 1,000,000; ``CHANGAI_BENCH_PROJECTION_EVENTS`` to change), mostly members joining.
2. A raw aiokafka consumer reads the whole backlog and parses every record the same way
   (CloudEvent + the type's pydantic model): the ceiling for a Python consumer here.
3. One projection worker (a process, the real entry point) projects the same backlog;
   its rate is taken from its own counter, polled once a second, between the first and
   the last poll that saw events move (so the worker's start-up is not counted).
4. ``/metrics`` is scraped 50 times with the full label set; the server-side render time
   (``changai_projection_scrape_duration_seconds``) and the client's wall time are reported.
5. Horizontal scale (``CHANGAI_BENCH_PROJECTION_TWO_WORKERS``, default 1): two workers of a new app id on the
   same backlog split its partitions; their counts together must be the backlog exactly, each a share.

Aims (issue 18): the projection at ≥ 0.8 of the raw consumer; two workers with no event counted twice.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx

from bench.common import aim, aims_table, load_avg, servers, summary, table
from services.projection.synthetic import backlog, create_topics, encode_all, full_label_set, produce
from shared.events import decode, parse_data
from shared.kafka import make_consumer

DOMAIN = ("membership.events", "training.events", "funding.events", "notifier.events")


def projected_count(text: str) -> int:
    n = 0
    for line in text.splitlines():
        if line.startswith(("changai_projection_events_total{", "changai_projection_events_skipped_total{")):
            n += int(float(line.rsplit(" ", 1)[1]))
    return n


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def raw_consume(bootstrap: str, topics: list[str], total: int) -> tuple[float, int]:
    consumer = make_consumer(bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}", *topics, max_poll_records=10000,
                             fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    n, first = 0, None
    try:
        while n < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10000)
            for records in batches.values():
                if first is None:
                    first = time.perf_counter()
                for record in records:
                    parse_data(decode(record.value))
                n += sum(1 for _ in records)
        return time.perf_counter() - (first or time.perf_counter()), n
    finally:
        await consumer.stop()


TWO_WORKERS = os.environ.get("CHANGAI_BENCH_PROJECTION_TWO_WORKERS", "1") == "1"


async def two_workers(s, prefix: str, total: int) -> dict:
    """Two projection workers of a new app id on the same backlog: Faust splits the partitions between them, and
    the counts of both /metrics together must be the backlog exactly (none counted twice, none missed), each
    worker counting a share. Rate: from the first poll that saw events move to the last, both together."""
    app_id = f"bench-projection-{uuid.uuid4().hex[:8]}"
    envs = [s.env("projection", CHANGAI_PROJECTION_TOPIC_PREFIX=prefix, CHANGAI_PROJECTION_APP_ID=app_id,
                  CHANGAI_LOG_LEVEL="WARNING") for _ in range(2)]
    load0 = load_avg()
    await asyncio.gather(*(s.start(f"projection-{i}", ["-m", "services.projection", "worker"], env)
                           for i, env in enumerate(envs)))
    urls = [f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}/metrics" for env in envs]
    polls: list[tuple[float, int]] = []
    each = [0, 0]
    async with httpx.AsyncClient(timeout=30) as http:
        deadline = time.monotonic() + float(os.environ.get("CHANGAI_BENCH_PROJECTION_MAX_S", "1800"))
        settled = 0
        while time.monotonic() < deadline:
            each = [projected_count((await http.get(u)).text) for u in urls]
            polls.append((time.perf_counter(), sum(each)))
            # done when the sum has stayed at (or above) the backlog for 3 polls: a partition counted by both
            # workers (a rebalance that left a stale count) would show as more than the backlog
            settled = settled + 1 if sum(each) >= total else 0
            if settled >= 3:
                break
            await asyncio.sleep(1.0)
    moving = [i for i in range(1, len(polls)) if polls[i][1] > polls[i - 1][1]] or [len(polls) - 1]
    first, last = polls[max(0, moving[0] - 1)], polls[moving[-1]]
    rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-6)
    counted = sum(each)
    print(f"two projection workers: {counted:,} of {total:,} events counted ({' + '.join(map(str, each))}), "
          f"{rate:,.0f} events/s together", flush=True)
    return {"rate": rate, "counted": counted, "each": each, "met": counted == total and min(each) > 0,
            "load": f"{load0}–{load_avg()}"}


async def main() -> None:
    total_backlog = int(os.environ.get("CHANGAI_BENCH_PROJECTION_EVENTS", "1000000"))
    async with servers() as s:
        bootstrap = s.kafka.bootstrap
        prefix = f"bench-{uuid.uuid4().hex[:8]}."
        await create_topics(bootstrap, prefix)
        started = time.perf_counter()
        full = await produce(bootstrap, encode_all(full_label_set(), prefix=prefix))
        n = await produce(bootstrap, backlog(total_backlog, prefix=prefix), linger_ms=50)
        total = full + n
        print(f"backlog: {total:,} events on {prefix}* ({full:,} of them give the full label set), "
              f"produced in {time.perf_counter() - started:.1f} s", flush=True)

        raw_s, raw_n = await raw_consume(bootstrap, [prefix + t for t in DOMAIN], total)
        raw_rate = raw_n / raw_s
        print(f"raw aiokafka consumer + parse: {raw_n:,} events in {raw_s:.1f} s = {raw_rate:,.0f} events/s",
              flush=True)

        env = s.env("projection", CHANGAI_PROJECTION_TOPIC_PREFIX=prefix,
                    CHANGAI_PROJECTION_APP_ID=f"bench-projection-{uuid.uuid4().hex[:8]}", CHANGAI_LOG_LEVEL="WARNING")
        url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}/metrics"
        load0 = load_avg()
        worker = await s.start("projection", ["-m", "services.projection", "worker"], env)
        polls: list[tuple[float, int]] = []
        async with httpx.AsyncClient(timeout=30) as http:
            deadline = time.monotonic() + 3600
            while True:
                count = projected_count((await http.get(url)).text)
                polls.append((time.perf_counter(), count))
                if count >= total or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            moving = [i for i in range(1, len(polls)) if polls[i][1] > polls[i - 1][1]]
            first, last = polls[moving[0] - 1], polls[moving[-1]]
            proj_rate = (last[1] - first[1]) / (last[0] - first[0])
            print(f"projection worker: {polls[-1][1]:,} events, {last[1] - first[1]:,} of them in "
                  f"{last[0] - first[0]:.1f} s = {proj_rate:,.0f} events/s", flush=True)
            proj_load = f"{load0}–{load_avg()}"

            server_ms, client_ms, series = [], [], 0
            for _ in range(50):
                t0 = time.perf_counter()
                text = (await http.get(url)).text
                client_ms.append((time.perf_counter() - t0) * 1000)
                server_ms.append((sample(text, "changai_projection_scrape_duration_seconds") or 0) * 1000)
                series = sum(1 for line in text.splitlines() if line.startswith("changai_") and "faust" not in line)
                await asyncio.sleep(0.05)
            server_ms = server_ms[1:]  # each value is the previous scrape's

            split = None
            if TWO_WORKERS:
                await worker.stop(grace=5)  # idle now; it would only take CPU from the two
                s.services.remove(worker)
                split = await two_workers(s, prefix, total)

        print()
        print(table([("raw aiokafka consumer + parse", f"{raw_rate:,.0f}", "1.00"),
                     ("projection (1 worker: Faust tables + batch reader)", f"{proj_rate:,.0f}", f"{proj_rate / raw_rate:.2f}")],
                    ("consumer", "events/s", "ratio to raw")))
        print()
        print(table([(f"/metrics render, server side ({series:,} changai_ series)", len(server_ms),
                      *summary(server_ms)),
                     ("/metrics over HTTP, client wall time", len(client_ms), *summary(client_ms))],
                    ("scrape", "n", "median ms", "p90 ms", "p99 ms", "max ms")))
        rows = [aim(f"projection on a {total:,}-event backlog vs a raw aiokafka consumer with parsing", proj_rate, None,
                    raw_rate, None, "≥ 0.8 of raw", proj_rate >= 0.8 * raw_rate, proj_load)]
        if split is not None:
            rows.append(aim("horizontal scale: projection, 2 workers split the partitions", split["rate"], None,
                            proj_rate, None, "all counted once, both workers busy", split["met"], split["load"],
                            figure=f"{split['rate']:,.0f}/s, counted {split['counted']:,} of {total:,} "
                            f"({' + '.join(f'{c:,}' for c in split['each'])})", raw=f"1 worker {proj_rate:,.0f}/s"))
        print()
        print(aims_table(rows))
