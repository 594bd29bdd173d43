"""Funding: money moved per second on the ledger, and the subsidy saga's rate.

The service runs as a process (``python -m services.funding api``) on Kafka and PostgreSQL at
full durability. Measured in one run:

1. Disbursements over HTTP (each: Idempotency-Key, one transaction locking the grant, a
   balanced journal entry through ``post_entry``, the disbursement, the event in the outbox),
   50 concurrent clients for SECONDS: (a) all against ONE grant (the hot-row worst case),
   (b) each client on its own grant to its own beneficiary. Then the ledger check.
2. Raw asyncpg, same machine, same 50 connections: the least a double-entry payment costs —
   one transaction, two guarded balance UPDATEs and two line INSERTs on bare tables — on one
   hot account and on 50 accounts. The ratio is what the service's safety costs.
3. The subsidy saga: CLAIMS session.completed events produced at once to training.events;
   time until every claim is paid (each: inbox + claim + grant + two entries + 4 events),
   against a raw aiokafka consumer reading the same records.
4. What one payment costs the service, whatever else loads the machine: the app in this process,
   PAYMENTS sequential payments after a warm-up; round trips to PostgreSQL in the request's path
   (every statement, BEGIN, COMMIT and the pool's reset on release), process CPU (API, outbox relay
   and the in-process client) and wall time per payment.

    python -m bench funding             (SECONDS=… CLAIMS=… PAYMENTS=… to change the sizes)
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

from bench.common import servers, summary, table
from shared.auth import mint_token
from shared.events import encode, envelope
from shared.events.training import SessionCompleted
from shared.kafka import make_producer

SECONDS = float(os.environ.get("SECONDS", "10"))
CLIENTS = 50
CLAIMS = int(os.environ.get("CLAIMS", "2000"))
PAYMENTS = int(os.environ.get("PAYMENTS", "300"))
HEADERS = {"Authorization": "Bearer " + mint_token("bench", ["funding:write", "funding:read", "funding:admin"], "640000")}


async def _post(client: httpx.AsyncClient, path: str, body: dict) -> dict:
    response = await client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    response.raise_for_status()
    return response.json()


async def http_payments(client: httpx.AsyncClient, grant_ids: list[str]) -> tuple[int, int, list[float]]:
    """CLIENTS loops paying 0.01 yuan for SECONDS; client i pays grant i % len(grant_ids)."""
    ok = refused = 0
    latencies: list[float] = []
    stop = time.monotonic() + SECONDS

    async def loop(i: int) -> None:
        nonlocal ok, refused
        path = f"/v1/grants/{grant_ids[i % len(grant_ids)]}/disbursements"
        while time.monotonic() < stop:
            t = time.perf_counter()
            key = uuid.uuid4().hex
            try:
                r = await client.post(path, json={"amount": "0.01"}, headers={"Idempotency-Key": key})
            except httpx.TransportError:  # as a careful client does: the same key again, paid at most once
                r = await client.post(path, json={"amount": "0.01"}, headers={"Idempotency-Key": key})
            latencies.append((time.perf_counter() - t) * 1000)
            if r.status_code == 201:
                ok += 1
            else:
                refused += 1

    await asyncio.gather(*(loop(i) for i in range(CLIENTS)))
    return ok, refused, latencies


async def raw_payments(dsn: str, accounts: int) -> tuple[int, list[float]]:
    """The floor: a guarded double-entry payment on bare tables, CLIENTS connections, SECONDS."""
    pool = await asyncpg.create_pool(dsn, min_size=CLIENTS, max_size=CLIENTS)
    async with pool.acquire() as conn:
        await conn.execute("""
            DROP TABLE IF EXISTS raw_lines; DROP TABLE IF EXISTS raw_accounts;
            CREATE TABLE raw_accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
            CREATE TABLE raw_lines (id bigserial PRIMARY KEY, account_id int NOT NULL, amount bigint NOT NULL);""")
        await conn.executemany("INSERT INTO raw_accounts VALUES ($1, $2)",
                               [(i, 10**12 if i < accounts else 0) for i in range(2 * accounts)])
    done = 0
    latencies: list[float] = []
    stop = time.monotonic() + SECONDS

    async def loop(i: int) -> None:
        nonlocal done
        src = i % accounts
        payee = accounts + src  # each paying account has its own payee, as each grant its beneficiary
        async with pool.acquire() as conn:
            while time.monotonic() < stop:
                t = time.perf_counter()
                async with conn.transaction():
                    await conn.execute("UPDATE raw_accounts SET balance = balance - 1 WHERE id = $1", src)
                    await conn.execute("UPDATE raw_accounts SET balance = balance + 1 WHERE id = $1", payee)
                    await conn.execute("INSERT INTO raw_lines (account_id, amount) VALUES ($1, -1), ($2, 1)", src, payee)
                latencies.append((time.perf_counter() - t) * 1000)
                done += 1

    await asyncio.gather(*(loop(i) for i in range(CLIENTS)))
    await pool.close()
    return done, latencies


def completion(organiser: str, persons: int = 5) -> SessionCompleted:
    return SessionCompleted(
        session_id=uuid.uuid4(), programme_id=uuid.uuid4(), programme_name="bench programme", number=1,
        organiser_id=organiser, organiser_kind="branch", organiser_name="bench branch", region_code="640104",
        city_code="640100", subsidy_category="pre_job", person_times=persons, passed=persons, failed=0,
        eligible_member_ids=[uuid.uuid4() for _ in range(persons)], eligible_persons=persons,
        completed_on=date(2021, 6, 1))


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
    from services.funding.config import FundingSettings
    from services.funding.main import build_app

    dsn = await s.database("funding")
    app = build_app(FundingSettings(database_url=dsn, kafka_bootstrap=s.kafka.bootstrap, db_pool_min=2,
                                    db_pool_max=4, funding_subsidy_consumer=False))
    with counting_round_trips():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://funding", headers=HEADERS) as client:
            fund = await _post(client, "/v1/funds", {"name": "cost fund", "source_kind": "skills_account",
                                                     "fiscal_year": 2021, "amount": "1000000.00"})
            grant = await _post(client, "/v1/grants", {"fund_id": fund["id"], "beneficiary_kind": "enterprise",
                                                       "beneficiary_id": "cost-e", "beneficiary_name": "cost enterprise",
                                                       "purpose": "cost", "amount": "100000.00"})
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
    return [("round trips to PostgreSQL per payment", f"{counter[0] / PAYMENTS:.1f}"),
            ("process CPU per payment, ms", f"{cpu / PAYMENTS * 1000:.2f}"),
            ("wall time per payment, ms (sequential)", f"{wall / PAYMENTS * 1000:.2f}")]


async def main() -> None:
    if os.environ.get("FUNDING_BENCH") == "cost":
        async with servers() as s:
            print(table(await cost_per_payment(s), ("one payment, in process", "")))
        return
    only_http = os.environ.get("FUNDING_BENCH") == "http"
    async with servers() as s:
        if not only_http:
            print(table(await cost_per_payment(s), ("one payment, in process", "")))
        dsn = await s.database("funding")
        env = s.env("funding", database_url=dsn, CHANGAI_FUNDING_SUBSIDY_GROUP=f"bench-funding-{uuid.uuid4().hex[:6]}",
                    CHANGAI_DB_POOL_MAX="20")
        await s.start("funding", ["-m", "services.funding", "api"], env, health="/readyz")
        base = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}"
        rows = []
        limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS + 10)
        async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=60, limits=limits) as client:
            fund = await _post(client, "/v1/funds", {"name": "bench fund", "source_kind": "skills_account",
                                                     "fiscal_year": 2021, "amount": "100000000.00"})
            hot = await _post(client, "/v1/grants", {"fund_id": fund["id"], "beneficiary_kind": "enterprise",
                                                     "beneficiary_id": "bench-e", "beneficiary_name": "bench enterprise",
                                                     "purpose": "bench", "amount": "1000000.00"})
            spread = [await _post(client, "/v1/grants", {"fund_id": fund["id"], "beneficiary_kind": "enterprise",
                                                         "beneficiary_id": f"bench-e{i}", "beneficiary_name": "bench enterprise",
                                                         "purpose": "bench", "amount": "10000.00"})
                      for i in range(CLIENTS)]
            results = {}
            for label, ids in (("one hot grant", [hot["id"]]), ("50 grants", [g["id"] for g in spread])):
                ok, refused, lat = await http_payments(client, ids)
                results[label] = ok / SECONDS
                rows.append((f"HTTP disbursement, {label}", ok, refused, f"{ok / SECONDS:.0f}", *summary(lat)))
            check = (await client.get("/v1/ledger/check")).json()
        for label, accounts in (("one hot grant", 1), ("50 grants", CLIENTS)):
            done, lat = await raw_payments(dsn, accounts)
            rows.append((f"raw asyncpg double entry, {label}", done, 0, f"{done / SECONDS:.0f}", *summary(lat)))
            rows.append((f"  ratio service / raw, {label}", "", "", f"{results[label] / (done / SECONDS):.2f}",
                         "", "", "", ""))
        print(table(rows, ("what", "paid", "refused", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms")))
        print(f"ledger check after the run: {'balanced' if check['ok'] else check['violations'][:3]} "
              f"({check['entries']} entries, {check['lines']} lines)")
        if only_http:
            return

        # -- the saga --------------------------------------------------------------------
        organiser = str(uuid.uuid4())
        async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=60) as client:
            resp = await client.put(f"/v1/beneficiaries/branch/{organiser}", json={"name": "bench branch"},
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
            resp.raise_for_status()
            saga_fund = await _post(client, "/v1/funds", {"name": "bench subsidies", "source_kind": "skills_account",
                                                          "fiscal_year": 2021, "amount": "100000000.00"})
            resp = await client.put("/v1/subsidy-routes/pre_job", json={"fund_id": saga_fund["id"], "year": 2021},
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
            resp.raise_for_status()
        producer = make_producer(s.kafka.bootstrap)
        await producer.start()
        records = [encode(envelope(completion(organiser))) for _ in range(CLAIMS)]
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
        finally:
            await conn.close()
        wanted = {k for k, _, _ in records}
        consumer = AIOKafkaConsumer("training.events", bootstrap_servers=s.kafka.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        t = time.monotonic()
        seen = 0
        try:
            while seen < CLAIMS:
                for batch in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                    seen += sum(r.key in wanted for r in batch)
            raw_s = time.monotonic() - t
        finally:
            await consumer.stop()
        print(table([
            (f"subsidy saga: {CLAIMS} completions → paid claims", f"{saga_s:.1f}", f"{CLAIMS / saga_s:.0f}"),
            ("  (producing them took)", f"{produced:.1f}", ""),
            ("raw aiokafka: read the same records", f"{raw_s:.1f}", f"{CLAIMS / raw_s:.0f}"),
            ("  ratio saga / raw read", "", f"{(CLAIMS / saga_s) / (CLAIMS / raw_s):.3f}"),
        ], ("what", "seconds", "per s")))
