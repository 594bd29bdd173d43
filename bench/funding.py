"""Funding: money moved per second on the ledger, and the subsidy saga's rate.

The service runs as a process (``python -m services.funding api``) on Kafka and PostgreSQL at
full durability. Measured in one run:

1. Disbursements over HTTP (each: Idempotency-Key, one transaction locking the grant, a
   balanced journal entry through ``pay_grant``, the disbursement, the event in the outbox),
   50 concurrent keep-alive clients (a minimal HTTP/1.1 client: httpx would take the CPU it
   measures) for SECONDS after a 1 s warm-up: (a) each client on its own grant, (b) all against
   ONE grant (the hot-row worst case), (c) as (a) over REPLICAS processes (the second API-only).
   The outbox backlog is sampled meanwhile and must drain after; then the ledger check.
2. Raw asyncpg, same run, same database, 50 connections: the statements the service sends for a
   payment (key, ``pay_grant``, event, key's answer, in one transaction) with nothing around them.
   The ratio is what HTTP, validation, authentication and event encoding cost.
3. The subsidy saga: CLAIMS session.completed events produced at once to training.events;
   time until every claim is paid (each: inbox + claim + grant + two entries + 4 events),
   against a raw aiokafka consumer reading the same records.
4. What one payment costs the service, whatever else loads the machine: the app in this process,
   PAYMENTS sequential payments after a warm-up; round trips to PostgreSQL in the request's path
   (every statement, BEGIN, COMMIT and the pool's reset on release), process CPU (API, outbox relay
   and the in-process client) and wall time per payment.

    python -m bench funding             (SECONDS=… CLAIMS=… PAYMENTS=… REPLICAS=…)
    FUNDING_BENCH=cost python -m bench funding     (only 4)
    FUNDING_BENCH=http python -m bench funding     (only 1 and 2)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
import uuid
from datetime import date

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from bench.common import (
    KEY_ANSWER,
    KEY_INSERT,
    OUTBOX_INSERT,
    CpuClock,
    Load,
    backlog_watch,
    aim,
    aims_table,
    SINGLE_WRITE_TARGET,
    http_load,
    load_avg,
    single_write_met,
    raw_load,
    servers,
    summary,
    table,
)
from shared.auth import mint_token
from shared.events import encode, envelope
from shared.events.training import SessionCompleted
from shared.kafka import make_producer

SECONDS = float(os.environ.get("SECONDS", "10"))
CLIENTS = 50
CLAIMS = int(os.environ.get("CLAIMS", "2000"))
PAYMENTS = int(os.environ.get("PAYMENTS", "300"))
REPLICAS = int(os.environ.get("REPLICAS", "2"))
HEADERS = {
    "Authorization": "Bearer " + mint_token("bench", ["funding:write", "funding:read", "funding:admin"], "640000")
}


async def _post(client: httpx.AsyncClient, path: str, body: dict) -> dict:
    response = await client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    response.raise_for_status()
    return response.json()


def completion(organiser: str, persons: int = 5) -> SessionCompleted:
    return SessionCompleted(
        session_id=uuid.uuid4(),
        programme_id=uuid.uuid4(),
        programme_name="bench programme",
        number=1,
        organiser_id=organiser,
        organiser_kind="branch",
        organiser_name="bench branch",
        region_code="640104",
        city_code="640100",
        subsidy_category="pre_job",
        person_times=persons,
        passed=persons,
        failed=0,
        eligible_member_ids=[uuid.uuid4() for _ in range(persons)],
        eligible_persons=persons,
        completed_on=date(2021, 6, 1),
    )


_COUNTING: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("counting", default=None)


@contextlib.contextmanager
def counting_round_trips():
    """Count the round trips to PostgreSQL made by the task that sets the returned counter (and by what it
    awaits): each extended-protocol statement (``Connection._execute``) and each simple query
    (``Connection.execute`` without arguments: BEGIN, COMMIT, SAVEPOINT, the pool's reset)."""
    from asyncpg.connection import Connection

    plain, extended = Connection.execute, Connection._execute

    async def execute(self, query, *args, **kw):
        counter = _COUNTING.get()
        if counter is not None and not args:
            counter[0] += 1
        return await plain(self, query, *args, **kw)

    async def _execute(self, *args, **kw):
        counter = _COUNTING.get()
        if counter is not None:
            counter[0] += 1
        return await extended(self, *args, **kw)

    Connection.execute, Connection._execute = execute, _execute
    try:
        yield
    finally:
        Connection.execute, Connection._execute = plain, extended


async def cost_per_payment(s) -> list[tuple]:
    """Round trips, process CPU and wall time of one payment (app in process, sequential, after a warm-up)."""
    from services.funding.settings import FundingSettings
    from services.funding.main import build_app

    dsn = await s.database("funding")
    app = build_app(
        FundingSettings(
            database_url=dsn,
            kafka_bootstrap=s.kafka.bootstrap,
            db_pool_min=2,
            db_pool_max=4,
            funding_subsidy_consumer=False,
        )
    )
    with counting_round_trips():
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://funding", headers=HEADERS
            ) as client,
        ):
            fund = await _post(
                client,
                "/v1/funds",
                {"name": "cost fund", "source_kind": "skills_account", "fiscal_year": 2021, "amount": "1000000.00"},
            )
            grant = await _post(
                client,
                "/v1/grants",
                {
                    "fund_id": fund["id"],
                    "beneficiary_kind": "enterprise",
                    "beneficiary_id": "cost-e",
                    "beneficiary_name": "cost enterprise",
                    "purpose": "cost",
                    "amount": "100000.00",
                },
            )
            path = f"/v1/grants/{grant['id']}/disbursements"
            logging.getLogger("httpx").setLevel(logging.WARNING)  # the app's logging set-up logs each request
            for _ in range(30):  # warm-up: prepared statements cached, pool connections open
                await _post(client, path, {"amount": "0.01"})
            counter = [0]
            _COUNTING.set(counter)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(PAYMENTS):
                await _post(client, path, {"amount": "0.01"})
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            _COUNTING.set(None)
    return [
        ("round trips to PostgreSQL per payment", f"{counter[0] / PAYMENTS:.1f}"),
        ("process CPU per payment, ms", f"{cpu / PAYMENTS * 1000:.2f}"),
        ("wall time per payment, ms (sequential)", f"{wall / PAYMENTS * 1000:.2f}"),
    ]


async def raw_same_statements(
    dsn: str, grant_ids: list[str], sample: asyncpg.Record, body: str, clock: CpuClock
) -> Load:
    """The floor of a payment: the statements the service sends for one, by plain asyncpg on CLIENTS
    connections, in one transaction each — the key, ``pay_grant``, the event (a stored one's bytes under a
    new id), the key's answer — with no HTTP, no validation and no event encoding."""
    today = date.today()
    digest = b"\x00" * 32

    async def work(conn: asyncpg.Connection, i: int, n: int) -> None:
        key = uuid.uuid4().hex
        async with conn.transaction():
            await conn.fetchval(KEY_INSERT, "raw:grants.disburse", key, digest)
            await conn.fetchrow(
                "SELECT * FROM pay_grant($1, $2, $3, $4, $5, $6, $7)",
                uuid.UUID(grant_ids[i % len(grant_ids)]),
                1,
                today,
                None,
                uuid.uuid4(),
                None,
                None,
            )
            await conn.execute(
                OUTBOX_INSERT,
                uuid.uuid4(),
                sample["topic"],
                sample["key"],
                sample["lane"],
                sample["event_type"],
                sample["value"],
            )
            await conn.execute(KEY_ANSWER, "raw:grants.disburse", key, 201, body)

    return await raw_load(dsn, work, clients=CLIENTS, seconds=SECONDS, clock=clock)


async def http_load_watched(
    dsn: str, ports: list[int], grant_ids: list[str], clock: CpuClock
) -> tuple[Load, int, float, dict[str, float]]:
    def make(i: int, n: int) -> tuple[str, bytes, str]:
        return (
            f"/v1/grants/{grant_ids[i % len(grant_ids)]}/disbursements",
            b'{"amount":"0.01"}',
            f"Idempotency-Key: {uuid.uuid4().hex}\r\n",
        )

    stop = asyncio.Event()
    watch = asyncio.create_task(backlog_watch(dsn, stop))
    try:
        load = await http_load(ports, HEADERS, make, clients=CLIENTS, seconds=SECONDS, warmup=1.0, clock=clock)
    finally:
        stop.set()
    peak, drain = await watch
    return load, peak, drain


async def start_funding(s, dsn: str, replica: int) -> int:
    """One funding process; the second is an API-only replica (no consumers), as docs/deployment.md runs it."""
    extra = (
        {}
        if replica == 0
        else {"CHANGAI_FUNDING_SUBSIDY_CONSUMER": "false", "CHANGAI_FUNDING_BRANCH_CONSUMER": "false"}
    )
    env = s.env(
        "funding",
        database_url=dsn,
        CHANGAI_FUNDING_SUBSIDY_GROUP=f"bench-funding-{uuid.uuid4().hex[:6]}",
        CHANGAI_DB_POOL_MAX=os.environ.get("CHANGAI_DB_POOL_MAX", "20"),
        CHANGAI_LOG_LEVEL="WARNING",
        **extra,
    )
    svc = await s.start(f"funding-{replica}", ["-m", "services.funding", "api"], env, health="/readyz")
    return int(env["CHANGAI_HTTP_PORT"]), svc.pid


async def main() -> None:
    mode = os.environ.get("FUNDING_BENCH")
    if mode == "cost":
        async with servers() as s:
            print(table(await cost_per_payment(s), ("one payment, in process", "")))
        return
    if mode == "saga-profile":
        async with servers() as s:
            await saga_profile(s)
        return
    if mode == "saga":
        async with servers() as s:
            print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()}")
            dsn = await s.database("funding")
            port, pid = await start_funding(s, dsn, 0)
            rows = await saga_rate(s, dsn, f"http://127.0.0.1:{port}", pid)
            print(table(rows, ("what", "seconds", "per s", "CPU ms a claim")))
        return
    only_http = os.environ.get("FUNDING_BENCH") == "http"
    async with servers() as s:
        print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()}")
        if not only_http:
            print(table(await cost_per_payment(s), ("one payment, in process", "")))
        dsn = await s.database("funding")
        port, pid = await start_funding(s, dsn, 0)
        clock = CpuClock({"service": [pid], "postgres": s.pg.pid})
        base = f"http://127.0.0.1:{port}"
        rows, aims = [], []
        async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=60) as client:
            fund = await _post(
                client,
                "/v1/funds",
                {"name": "bench fund", "source_kind": "skills_account", "fiscal_year": 2021, "amount": "100000000.00"},
            )
            hot = await _post(
                client,
                "/v1/grants",
                {
                    "fund_id": fund["id"],
                    "beneficiary_kind": "enterprise",
                    "beneficiary_id": "bench-e",
                    "beneficiary_name": "bench enterprise",
                    "purpose": "bench",
                    "amount": "1000000.00",
                },
            )
            spread = [
                (
                    await _post(
                        client,
                        "/v1/grants",
                        {
                            "fund_id": fund["id"],
                            "beneficiary_kind": "enterprise",
                            "beneficiary_id": f"bench-e{i}",
                            "beneficiary_name": "bench enterprise",
                            "purpose": "bench",
                            "amount": "100000.00",
                        },
                    )
                )["id"]
                for i in range(CLIENTS)
            ]
            spread_load, peak, drain = await http_load_watched(dsn, [port], spread, clock)
            hot_load, _, _ = await http_load_watched(dsn, [port], [hot["id"]], clock)
            replica_load = None
            if REPLICAS > 1:
                more = [await start_funding(s, dsn, r) for r in range(1, REPLICAS)]
                clock2 = CpuClock({"service": [pid] + [p for _, p in more], "postgres": s.pg.pid})
                replica_load, _, _ = await http_load_watched(dsn, [port] + [p for p, _ in more], spread, clock2)
            check = (await client.get("/v1/ledger/check")).json()
        conn = await asyncpg.connect(dsn)
        try:
            sample = await conn.fetchrow(
                "SELECT topic, key, lane, event_type, value FROM outbox ORDER BY seq DESC LIMIT 1"
            )  # a payment's event: the last load paid
            body = await conn.fetchval(
                "SELECT body::text FROM idempotency_keys WHERE body IS NOT NULL ORDER BY created_at DESC LIMIT 1"
            )
        finally:
            await conn.close()
        raw_clock = CpuClock({"client": [os.getpid()], "postgres": s.pg.pid})
        raw_spread = await raw_same_statements(dsn, spread, sample, body, raw_clock)
        raw_hot = await raw_same_statements(dsn, [hot["id"]], sample, body, raw_clock)
        for label, load, raw in (
            ("50 grants", spread_load, raw_spread),
            ("one hot grant", hot_load, raw_hot),
            (f"50 grants, {REPLICAS} processes", replica_load, raw_spread),
        ):
            if load is None:
                continue
            rows.append(
                (
                    f"HTTP disbursement, {label}",
                    load.count(201),
                    sum(load.statuses.values()) - load.count(201),
                    f"{load.rate(201):,.0f}",
                    *summary(load.latencies),
                    load.cpu_text(),
                    load.load,
                )
            )
            rows.append(
                (
                    f"raw asyncpg, same statements, {label}",
                    raw.count(200),
                    0,
                    f"{raw.rate(200):,.0f}",
                    *summary(raw.latencies),
                    raw.cpu_text(),
                    raw.load,
                )
            )
        print(
            table(
                rows,
                ("what", "paid", "other", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms", "CPU ms a write", "load"),
            )
        )
        print(f"outbox backlog during the 50-grant load: peak {peak} events, drained {drain:.2f} s after it")
        print(
            f"ledger check after the run: {'balanced' if check['ok'] else check['violations'][:3]} "
            f"({check['entries']} entries, {check['lines']} lines)"
        )
        best = max((x for x in (spread_load, replica_load) if x is not None), key=lambda x: x.rate(201))
        procs = "" if best is spread_load else f", {REPLICAS} processes"
        aims.append(
            aim(
                f"funding payment, 50 clients, 50 grants{procs}",
                best.rate(201),
                best.p99,
                raw_spread.rate(200),
                raw_spread.p99,
                SINGLE_WRITE_TARGET,
                single_write_met(best.rate(201), best.p99) and check["ok"],
                best.load,
            )
        )
        if replica_load is not None:  # horizontal scale, shown: REPLICAS API processes on one database vs one
            one, many = spread_load.rate(201), replica_load.rate(201)
            aims.append(
                aim(
                    f"horizontal scale: funding payments, {REPLICAS} API replicas vs 1",
                    many,
                    replica_load.p99,
                    one,
                    spread_load.p99,
                    f"{REPLICAS} replicas > 1",
                    many > one and check["ok"],
                    replica_load.load,
                    raw=f"1 replica {one:,.0f}/s",
                    ratio=f"{many / one:.2f}" if one else "",
                )
            )
        print(aims_table(aims))
        if only_http:
            return

        print(table(await saga_rate(s, dsn, base, pid), ("what", "seconds", "per s", "CPU ms a claim")))


async def saga_setup(base: str) -> str:
    """A registered organiser, a fund and the pre-job route to it; returns the organiser's id."""
    organiser = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=60) as client:
        resp = await client.put(
            f"/v1/beneficiaries/branch/{organiser}",
            json={"name": "bench branch"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        resp.raise_for_status()
        saga_fund = await _post(
            client,
            "/v1/funds",
            {"name": "bench subsidies", "source_kind": "skills_account", "fiscal_year": 2021, "amount": "100000000.00"},
        )
        resp = await client.put(
            "/v1/subsidy-routes/pre_job",
            json={"fund_id": saga_fund["id"], "year": 2021},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        resp.raise_for_status()
    return organiser


async def saga_rate(s, dsn: str, base: str, pid: int) -> list[tuple]:
    """CLAIMS completions produced at once → all paid (the service's consumer), then a raw aiokafka consumer
    reading the same records; CPU seconds of the service, PostgreSQL and Kafka meanwhile (and the reader's)."""
    organiser = await saga_setup(base)
    clock = CpuClock({"service": [pid], "postgres": s.pg.pid, "kafka": s.kafka.pid})
    producer = make_producer(s.kafka.bootstrap)
    await producer.start()
    records = [encode(envelope(completion(organiser))) for _ in range(CLAIMS)]
    before = clock.read()
    load = load_avg()
    started = time.monotonic()
    futures = [await producer.send("training.events", v, key=k, headers=h) for k, v, h in records]
    await asyncio.gather(*futures)
    produced = time.monotonic() - started
    await producer.stop()
    conn = await asyncpg.connect(dsn)
    try:
        while await conn.fetchval("SELECT count(*) FROM subsidy_claims WHERE status = 'paid'") < CLAIMS:
            await asyncio.sleep(0.1)
            if time.monotonic() - started > 600:
                raise TimeoutError("claims not all paid in 10 minutes")
        saga_s = time.monotonic() - started
        after = clock.read()
        check = await conn.fetchval("SELECT count(*) FROM subsidy_claims WHERE status <> 'paid'")
    finally:
        await conn.close()
    load = f"{load}–{load_avg()}"
    wanted = {k for k, _, _ in records}
    raw_clock = CpuClock({"reader": [os.getpid()], "kafka": s.kafka.pid})
    consumer = AIOKafkaConsumer(
        "training.events", bootstrap_servers=s.kafka.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    raw_before = raw_clock.read()
    t = time.monotonic()
    seen = 0
    try:
        while seen < CLAIMS:
            for batch in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                seen += sum(r.key in wanted for r in batch)
        raw_s = time.monotonic() - t
        raw_after = raw_clock.read()
    finally:
        await consumer.stop()

    aims_line = aim(
        f"subsidy saga: {CLAIMS:,} completions → paid claims",
        CLAIMS / saga_s,
        None,
        CLAIMS / raw_s,
        None,
        "≥ 1,000 claims/s",
        CLAIMS / saga_s >= 1000 and check == 0,
        load,
        raw=f"aiokafka read {CLAIMS / raw_s:,.0f}/s",
    )
    print(aims_table([aims_line]))

    def per_claim(a: dict, b: dict) -> str:
        return " / ".join(f"{k} {(b[k] - a[k]) / CLAIMS * 1000:.2f}" for k in a)

    return [
        (
            f"subsidy saga: {CLAIMS} completions → paid claims",
            f"{saga_s:.1f}",
            f"{CLAIMS / saga_s:,.0f}",
            per_claim(before, after),
        ),
        ("  (producing them took)", f"{produced:.1f}", "", ""),
        (
            "raw aiokafka: read the same records",
            f"{raw_s:.2f}",
            f"{CLAIMS / raw_s:,.0f}",
            per_claim(raw_before, raw_after),
        ),
        ("  ratio saga / raw read", "", f"{(CLAIMS / saga_s) / (CLAIMS / raw_s):.3f}", ""),
        (f"  load average during the saga; claims not paid: {check}", "", load, ""),
    ]


async def saga_profile(s) -> None:
    """The saga's handler in this process on PROFILE_CLAIMS parsed completions (no Kafka in the way): round trips to
    PostgreSQL, process CPU and wall time a claim, then a cProfile of the same run (top functions by own time)."""
    import cProfile
    import pstats

    from services.funding import consumers
    from services.funding.main import build_app
    from services.funding.settings import FundingSettings

    n = int(os.environ.get("PROFILE_CLAIMS", "1000"))
    batch = int(os.environ.get("PROFILE_BATCH", "500"))
    dsn = await s.database("funding")
    app = build_app(
        FundingSettings(
            database_url=dsn,
            kafka_bootstrap=s.kafka.bootstrap,
            funding_subsidy_consumer=False,
            funding_branch_consumer=False,
            log_level="WARNING",  # as the benchmark's service runs: no line a claim
        )
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://funding", headers=HEADERS) as client:
            organiser = str(uuid.uuid4())
            (
                await client.put(
                    f"/v1/beneficiaries/branch/{organiser}",
                    json={"name": "bench branch"},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
            ).raise_for_status()
            fund = await _post(
                client,
                "/v1/funds",
                {
                    "name": "bench subsidies",
                    "source_kind": "skills_account",
                    "fiscal_year": 2021,
                    "amount": "100000000.00",
                },
            )
            (
                await client.put(
                    "/v1/subsidy-routes/pre_job",
                    json={"fund_id": fund["id"], "year": 2021},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
            ).raise_for_status()
        pool = app.state.db
        handler = getattr(consumers, "on_sessions_completed", None)

        async def run(items) -> None:
            if handler is None:
                for event, data in items:
                    await consumers.on_session_completed(pool, event, data)
            else:
                for i in range(0, len(items), batch):
                    await handler(pool, items[i : i + batch])

        def make(k: int):
            out = []
            for _ in range(k):
                data = completion(organiser)
                out.append((envelope(data), data))
            return out

        await run(make(50))  # warm-up: prepared statements, pool connections
        rows = []
        with counting_round_trips():
            counter = [0]
            _COUNTING.set(counter)
            items = make(n)
            cpu, wall = time.process_time(), time.perf_counter()
            await run(items)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            _COUNTING.set(None)
        path = "batched" if handler else "one at a time"
        rows += [
            (f"{n} claims {path} (batches of {batch}), load {load_avg()}", ""),
            ("round trips to PostgreSQL a claim", f"{counter[0] / n:.2f}"),
            ("process CPU a claim, ms", f"{cpu / n * 1000:.3f}"),
            ("wall time a claim, ms", f"{wall / n * 1000:.3f}"),
            ("claims/s in process", f"{n / wall:,.0f}"),
        ]
        print(table(rows, ("the saga's handler, in process", "")))
        profile = cProfile.Profile()
        items = make(n)
        profile.enable()
        await run(items)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        async with pool.acquire() as conn:
            paid = await conn.fetchval("SELECT count(*) FROM subsidy_claims WHERE status = 'paid'")
        print(f"paid claims: {paid} of {2 * n + 50}")
