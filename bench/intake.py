"""The event intake at the issue's figures (issue 16):

1. 10,000 ``enterprise.hr.employee.hired.v1`` CloudEvents over HTTP in batch mode (500 per request, 4 requests
   in flight) → every one applied as a membership join (membership's own join use case, in its batch form,
   via ``membership.commands``) and its outcome back at the intake;
2. the same number produced to the Kafka intake topic ``intake.hr`` → applied and answered;
3. single binary-mode events from 50 concurrent senders for a few seconds: accepted per second and p99,
   beside raw asyncpg sending the same statements (the source's row, the event's row, its command in the
   outbox, one transaction) on 50 connections in the same run.

The batches' raw floor (their ratio in the aims table): the same number of events' rows and commands stored by
plain asyncpg, 500 a transaction, in the same run.

Membership and the intake run as their own processes (uvicorn, as in production) on full-durability Kafka
and PostgreSQL. Timed: from the first request (or record) to the last 207 (accepted: durably stored with its
command), to the last member joined in membership, and to the last event's status ``applied`` at the intake
(the answer a source polls). The load average is printed with each figure: the machine is shared.

    python -m bench intake                                  (make bench)
    CHANGAI_BENCH_INTAKE_EVENTS=2000 python -m bench intake     (a smaller run)
"""
from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from datetime import date, timedelta

import asyncpg
import httpx
import orjson

from bench.common import (
    SINGLE_WRITE_TARGET,
    CpuClock,
    aim,
    aims_table,
    http_load,
    load_avg,
    raw_load,
    servers,
    single_write_met,
    table,
)
from shared.auth import mint_token
from shared.identifiers import id_check_char, uscc_check_char
from shared.kafka import make_producer

EVENTS = int(os.environ.get("CHANGAI_BENCH_INTAKE_EVENTS", "10000"))
BATCH = 500
IN_FLIGHT = 4
BRANCHES = 20
SENDERS = 50
SINGLE_SECONDS = float(os.environ.get("CHANGAI_BENCH_INTAKE_SINGLE_S", "8"))
HIRED = "enterprise.hr.employee.hired.v1"
ADMIN = ["membership:write", "membership:read", "intake:admin"]


def id_numbers(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct valid resident ID numbers of people born 1965–2000 (all at least 16 when hired)."""
    seen: set[str] = set()
    while len(seen) < n:
        born = date(1965, 1, 1) + timedelta(days=rng.randrange(35 * 365))
        first = f"640104{born:%Y%m%d}{rng.randrange(1000):03d}"
        seen.add(first + id_check_char(first))
    return sorted(seen)


def credit_code(rng: random.Random) -> str:
    first = "91640104" + "".join(rng.choice("0123456789ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


def hire(source: str, event_id: str, number: str, code: str, i: int) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": source, "type": HIRED,
            "datacontenttype": "application/json",
            "data": {"employee_ref": f"E{i}", "name": "基准员工", "id_number": number, "phone": f"139{i:08d}",
                     "employer_credit_code": code, "hired_on": "2024-05-01", "employment_form": "courier"}}


async def until_done(i_conn: asyncpg.Connection, m_conn: asyncpg.Connection, source: str, n: int, members0: int,
                     start: float) -> tuple[float, float, dict]:
    """Seconds from ``start`` to the last member joined in membership and to the last answer at the intake."""
    joined_s = None
    deadline = time.monotonic() + 600
    while True:
        if joined_s is None and await m_conn.fetchval("SELECT count(*) FROM members") - members0 >= n:
            joined_s = time.perf_counter() - start
        counts = dict(await i_conn.fetch(
            "SELECT status, count(*) FROM intake_events WHERE source = $1 GROUP BY status", source))
        if counts.get("applied", 0) + counts.get("rejected", 0) >= n:
            return joined_s or time.perf_counter() - start, time.perf_counter() - start, counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all decided in 600 s: {counts}")
        await asyncio.sleep(0.05)


async def register(http: httpx.AsyncClient, url: str, admin: dict, run: str, kind: str) -> tuple[str, str]:
    client_id, source = f"bench-{kind}-{run}", f"urn:changai:bench:{kind}:{run}"
    r = await http.post(f"{url}/v1/sources", headers=admin, json={
        "source": source, "name": f"基准人事系统 {kind}", "region_code": "640104", "event_types": [HIRED],
        "client_id": client_id})
    r.raise_for_status()
    return client_id, source


RAW_SOURCE = "SELECT * FROM sources WHERE client_id = $1"
RAW_EVENT = ("INSERT INTO intake_events (id, source_id, source, event_id, type, channel, event_time, command_id) "
             "VALUES ($1, $2, $3, $4, $5, 'http', now(), $6) ON CONFLICT (source, event_id) DO NOTHING RETURNING id")
RAW_OUTBOX = "INSERT INTO outbox (event_id, topic, key, lane, event_type, value) VALUES ($1, $2, $3, $4, $5, $6)"


async def raw_batch(conn: asyncpg.Connection, source_id, source: str, prefix: str, sample) -> float:
    """The floor under a batch: the same number of events' rows and commands (a stored command's bytes under a new
    id) stored by plain asyncpg, BATCH a transaction: what accepting them costs PostgreSQL, nothing else."""
    started = time.perf_counter()
    for i in range(0, EVENTS, BATCH):
        n = min(BATCH, EVENTS - i)
        async with conn.transaction():
            await conn.executemany(RAW_EVENT, [(uuid.uuid4(), source_id, source, f"{prefix}{i + j}", HIRED,
                                                uuid.uuid4()) for j in range(n)])
            await conn.executemany(RAW_OUTBOX, [(uuid.uuid4(), sample["topic"], sample["key"], sample["lane"],
                                                 sample["event_type"], sample["value"]) for _ in range(n)])
    return time.perf_counter() - started


async def main() -> None:
    rng = random.Random(2026)
    rows = []
    aims = []
    batch_aims: list[tuple[str, float, bool, str]] = []  # made rows once the raw floor of the same run is known
    async with servers() as s:
        run = uuid.uuid4().hex[:8]
        m_dsn, i_dsn = await s.database("membership"), await s.database("intake")
        common = {"CHANGAI_LOG_LEVEL": "WARNING", "CHANGAI_OUTBOX_POLL_INTERVAL_S": "0.2"}
        m_env = s.env("membership", database_url=m_dsn, CHANGAI_CONSUME_CERTIFICATES="false",
                      CHANGAI_COMMANDS_GROUP_ID=f"bench-commands-{run}", **common)
        i_env = s.env("intake", database_url=i_dsn, CHANGAI_INTAKE_OUTCOMES_GROUP_ID=f"bench-outcomes-{run}",
                      CHANGAI_INTAKE_KAFKA_GROUP_ID=f"bench-intake-hr-{run}", **common)
        m_svc, i_svc = await asyncio.gather(s.start("membership", ["-m", "services.membership", "api"], m_env),
                                            s.start("intake", ["-m", "services.intake", "api"], i_env))
        m_url = f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}"
        i_port = int(i_env["CHANGAI_HTTP_PORT"])
        i_url = f"http://127.0.0.1:{i_port}"
        admin = {"Authorization": "Bearer " + mint_token("bench-admin", ADMIN, "640000")}
        numbers = id_numbers(2 * EVENTS, rng)
        i_conn, m_conn = await asyncpg.connect(i_dsn), await asyncpg.connect(m_dsn)
        try:
            async with httpx.AsyncClient(timeout=120) as http:
                codes = []
                for i in range(BRANCHES):
                    code = credit_code(rng)
                    r = await http.post(f"{m_url}/v1/branches", headers=admin, json={
                        "name": f"基准企业工会{i}", "credit_code": code, "region_code": "640104",
                        "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"})
                    r.raise_for_status()
                    codes.append(code)
                # 1. batch mode over HTTP
                client_id, source = await register(http, i_url, admin, run, "http")
                emitter = {"Authorization": "Bearer " + mint_token(client_id, ["intake:emit"], "640104", ttl_s=7200),
                           "content-type": "application/cloudevents-batch+json"}
                events = [hire(source, f"{run}-{i}", numbers[i], codes[i % BRANCHES], i) for i in range(EVENTS)]
                bodies = [orjson.dumps(events[i:i + BATCH]) for i in range(0, EVENTS, BATCH)]
                accepted = 0
                gate = asyncio.Semaphore(IN_FLIGHT)

                async def send(body: bytes) -> None:
                    nonlocal accepted
                    async with gate:
                        resp = await http.post(f"{i_url}/v1/events", headers=emitter, content=body)
                        assert resp.status_code == 207, resp.text[:300]
                        accepted += resp.json()["accepted"]

                members0 = await m_conn.fetchval("SELECT count(*) FROM members")
                clock = CpuClock({"intake": [i_svc.pid], "membership": [m_svc.pid], "postgres": s.pg.pid,
                                  "kafka": s.kafka.pid})
                cpu0 = clock.read()
                start = time.perf_counter()
                await asyncio.gather(*(send(b) for b in bodies))
                accepted_s = time.perf_counter() - start
                joined_s, decided_s, counts = await until_done(i_conn, m_conn, source, EVENTS, members0, start)
                cpu_http = {k: v - cpu0[k] for k, v in clock.read().items()}
                load = load_avg()
                rows += [("HTTP batch: accepted (207, stored + command queued)", f"{accepted:,}", f"{accepted_s:.2f}",
                          f"{accepted / accepted_s:,.0f}", load),
                         ("HTTP batch: joined in membership", f"{EVENTS:,}", f"{joined_s:.2f}",
                          f"{EVENTS / joined_s:,.0f}", load),
                         ("HTTP batch: applied, answer at the intake", f"{counts.get('applied', 0):,}",
                          f"{decided_s:.2f}", f"{counts.get('applied', 0) / decided_s:,.0f}", load)]
                batch_aims.append((f"intake: {EVENTS:,} hires, HTTP batch (500 a request) → applied", decided_s,
                                   decided_s < 10 and counts.get("applied", 0) == EVENTS, load))

                # 2. the Kafka intake topic
                _, k_source = await register(http, i_url, admin, run, "kafka")
                records = [orjson.dumps(hire(k_source, f"{run}-k{i}", numbers[EVENTS + i], codes[i % BRANCHES], i))
                           for i in range(EVENTS)]
                producer = make_producer(s.kafka.bootstrap)
                await producer.start()
                members0 = await m_conn.fetchval("SELECT count(*) FROM members")
                try:
                    cpu0 = clock.read()
                    start = time.perf_counter()
                    futures = [await producer.send("intake.hr", value, key=f"k{i}".encode(),
                                                   headers=[("content-type", b"application/cloudevents+json")])
                               for i, value in enumerate(records)]
                    await asyncio.gather(*futures)
                    produced_s = time.perf_counter() - start
                finally:
                    await producer.stop()
                joined_s, decided_s, counts = await until_done(i_conn, m_conn, k_source, EVENTS, members0, start)
                cpu_kafka = {k: v - cpu0[k] for k, v in clock.read().items()}
                load = load_avg()
                rows += [("intake.hr: produced", f"{EVENTS:,}", f"{produced_s:.2f}", f"{EVENTS / produced_s:,.0f}",
                          load),
                         ("intake.hr: joined in membership", f"{EVENTS:,}", f"{joined_s:.2f}",
                          f"{EVENTS / joined_s:,.0f}", load),
                         ("intake.hr: applied, answer at the intake", f"{counts.get('applied', 0):,}",
                          f"{decided_s:.2f}", f"{counts.get('applied', 0) / decided_s:,.0f}", load)]
                batch_aims.append((f"intake: {EVENTS:,} hires on intake.hr → applied", decided_s,
                                   decided_s < 10 and counts.get("applied", 0) == EVENTS, load))

                # 3. single binary-mode events, 50 concurrent senders, beside raw asyncpg
                s_client, s_source = await register(http, i_url, admin, run, "single")
            token = mint_token(s_client, ["intake:emit"], "640104", ttl_s=7200)
            data = [orjson.dumps(hire(s_source, "", numbers[i], codes[i % BRANCHES], i)["data"])
                    for i in range(2 * EVENTS)]

            def single(client: int, n: int) -> tuple[str, bytes, str]:
                return "/v1/events", data[(client * 7919 + n) % len(data)], (
                    f"ce-specversion: 1.0\r\nce-id: {run}-s{client}-{n}\r\nce-source: {s_source}\r\n"
                    f"ce-type: {HIRED}\r\n")

            clock = CpuClock({"intake": [i_svc.pid], "postgres": s.pg.pid})
            service = await http_load([i_port], {"Authorization": f"Bearer {token}"}, single, clients=SENDERS,
                                      seconds=SINGLE_SECONDS, warmup=1.0, clock=clock)
            source_row = await i_conn.fetchrow(RAW_SOURCE, s_client)
            sample = await i_conn.fetchrow("SELECT topic, key, lane, event_type, value FROM outbox "
                                           "WHERE event_type LIKE '%join%' LIMIT 1")

            async def raw(conn: asyncpg.Connection, client: int, n: int) -> None:
                # the statements of one accepted event: its source, its row, its command (a stored one's bytes
                # under a new id: membership's inbox finds the command id inside already applied)
                async with conn.transaction():
                    src = await conn.fetchrow(RAW_SOURCE, s_client)
                    await conn.fetchval(RAW_EVENT, uuid.uuid4(), src["id"], s_source, f"{run}-raw{client}-{n}",
                                        HIRED, uuid.uuid4())
                    await conn.execute(RAW_OUTBOX, uuid.uuid4(), sample["topic"], sample["key"], sample["lane"],
                                       sample["event_type"], sample["value"])

            assert source_row is not None
            floor = await raw_load(i_dsn, raw, clients=SENDERS, seconds=SINGLE_SECONDS,
                                   clock=CpuClock({"client": [os.getpid()], "postgres": s.pg.pid}))
            raw_batch_s = await raw_batch(i_conn, source_row["id"], s_source, f"{run}-rawb", sample)
        finally:
            await i_conn.close()
            await m_conn.close()
    print(table(rows, ("phase", "events", "seconds", "events/s", "load")))
    for what, cpu in (("HTTP batch", cpu_http), ("intake.hr", cpu_kafka)):
        # CPU the pipeline's processes spent, whatever else the shared machine ran: on 2 idle cores the
        # whole run cannot take less than total / 2 seconds (nor, with one Python process busiest, its own).
        total = sum(cpu.values())
        print(f"{what}: CPU ms an event " + " / ".join(f"{k} {v / EVENTS * 1000:.2f}" for k, v in cpu.items())
              + f"; total {total:.1f} CPU s, busiest process {max(v for k, v in cpu.items() if k != 'postgres'):.1f} s")
    print(f"single binary-mode events, {SENDERS} senders, {SINGLE_SECONDS:.0f} s: statuses {service.statuses}, "
          f"{service.rate(202):,.0f}/s accepted, p50 {service.p50:.1f} ms, p99 {service.p99:.1f} ms, "
          f"CPU ms an event: {service.cpu_text()} (load {service.load}); raw asyncpg, same statements: "
          f"{floor.rate(200):,.0f}/s, p50 {floor.p50:.1f} ms, p99 {floor.p99:.1f} ms, CPU ms: {floor.cpu_text()} "
          f"(load {floor.load})")
    for name, seconds, met, load in batch_aims:
        aims.append(aim(name, seconds, None, raw_batch_s, None, "< 10 s", met, load, " s",
                        raw=f"rows + commands stored {raw_batch_s:.2f} s", sized=EVENTS >= 10_000))
    aims.append(aim("intake: single binary events, 50 senders", service.rate(202), service.p99, floor.rate(200),
                    floor.p99, SINGLE_WRITE_TARGET,
                    single_write_met(service.rate(202), service.p99, {k: v for k, v in service.statuses.items()
                                                                      if k != 202}),
                    service.load))
    print(aims_table(aims))
