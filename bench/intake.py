"""The event intake at the issue's figure: 10,000 ``enterprise.hr.employee.hired.v1`` CloudEvents over HTTP
in batch mode (500 per request, 4 requests in flight) → every one applied as a membership join (through
membership's own join use case, via ``membership.commands``) and its outcome back at the intake.

Membership and the intake run as their own processes (uvicorn, as in production) on full-durability Kafka
and PostgreSQL. Timed: from the first request to the last batch's 207 (accepted: durably stored with its
command), and to the last event's status ``applied`` in the intake's database (the answer a source polls).

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

from bench.common import servers, table
from shared.auth import mint_token
from shared.identifiers import id_check_char, uscc_check_char

EVENTS = int(os.environ.get("CHANGAI_BENCH_INTAKE_EVENTS", "10000"))
BATCH = 500
IN_FLIGHT = 4
BRANCHES = 20
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


async def main() -> None:
    rng = random.Random(2026)
    async with servers() as s:
        run = uuid.uuid4().hex[:8]
        m_dsn, i_dsn = await s.database("membership"), await s.database("intake")
        common = {"CHANGAI_LOG_LEVEL": "WARNING", "CHANGAI_OUTBOX_POLL_INTERVAL_S": "0.2"}
        m_env = s.env("membership", database_url=m_dsn, CHANGAI_CONSUME_CERTIFICATES="false",
                      CHANGAI_COMMANDS_GROUP_ID=f"bench-commands-{run}", **common)
        i_env = s.env("intake", database_url=i_dsn, CHANGAI_INTAKE_OUTCOMES_GROUP_ID=f"bench-outcomes-{run}",
                      CHANGAI_INTAKE_KAFKA_GROUP_ID=f"bench-intake-hr-{run}", **common)
        await asyncio.gather(s.start("membership", ["-m", "services.membership", "api"], m_env),
                             s.start("intake", ["-m", "services.intake", "api"], i_env))
        m_url = f"http://127.0.0.1:{m_env['CHANGAI_HTTP_PORT']}"
        i_url = f"http://127.0.0.1:{i_env['CHANGAI_HTTP_PORT']}"
        admin = {"Authorization": "Bearer " + mint_token("bench-admin", ADMIN, "640000")}
        client_id = f"bench-hr-{run}"
        source = f"urn:changai:bench:hr:{run}"
        emitter = {"Authorization": "Bearer " + mint_token(client_id, ["intake:emit"], "640104", ttl_s=7200),
                   "content-type": "application/cloudevents-batch+json"}
        async with httpx.AsyncClient(timeout=120) as http:
            codes = []
            for i in range(BRANCHES):
                code = credit_code(rng)
                r = await http.post(f"{m_url}/v1/branches", headers=admin, json={
                    "name": f"基准企业工会{i}", "credit_code": code, "region_code": "640104",
                    "industry_section": "C", "kind": "enterprise", "founded_on": "2021-03-01"})
                r.raise_for_status()
                codes.append(code)
            r = await http.post(f"{i_url}/v1/sources", headers=admin, json={
                "source": source, "name": "基准人事系统", "region_code": "640104", "event_types": [HIRED],
                "client_id": client_id})
            r.raise_for_status()
            numbers = id_numbers(EVENTS, rng)
            events = [{"specversion": "1.0", "id": f"{run}-{i}", "source": source, "type": HIRED,
                       "datacontenttype": "application/json",
                       "data": {"employee_ref": f"E{i}", "name": "基准员工", "id_number": numbers[i],
                                "phone": f"139{i:08d}", "employer_credit_code": codes[i % BRANCHES],
                                "hired_on": "2024-05-01", "employment_form": "courier"}} for i in range(EVENTS)]
            bodies = [orjson.dumps(events[i:i + BATCH]) for i in range(0, EVENTS, BATCH)]
            latencies: list[float] = []
            accepted = 0
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def send(body: bytes) -> None:
                nonlocal accepted
                async with gate:
                    t = time.perf_counter()
                    resp = await http.post(f"{i_url}/v1/events", headers=emitter, content=body)
                    latencies.append(time.perf_counter() - t)
                    assert resp.status_code == 207, resp.text[:300]
                    accepted += resp.json()["accepted"]

            conn = await asyncpg.connect(i_dsn)
            try:
                start = time.perf_counter()
                await asyncio.gather(*(send(b) for b in bodies))
                accepted_s = time.perf_counter() - start
                deadline = time.monotonic() + 600
                while True:
                    counts = dict(await conn.fetch("SELECT status, count(*) FROM intake_events GROUP BY status"))
                    if counts.get("applied", 0) + counts.get("rejected", 0) >= EVENTS:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not all decided in 600 s: {counts}")
                    await asyncio.sleep(0.05)
                decided_s = time.perf_counter() - start
                lag = await conn.fetchval("SELECT max(decided_at - received_at) FROM intake_events")
            finally:
                await conn.close()
        members = await asyncpg.connect(m_dsn)
        try:
            joined = await members.fetchval("SELECT count(*) FROM members")
        finally:
            await members.close()
    latencies.sort()
    print(table([
        ("accepted (207, stored + command queued)", f"{accepted:,}", f"{accepted_s:.2f}",
         f"{accepted / accepted_s:,.0f}"),
        ("applied (membership join, answer at the intake)", f"{counts.get('applied', 0):,}", f"{decided_s:.2f}",
         f"{counts.get('applied', 0) / decided_s:,.0f}"),
    ], ("phase", "events", "seconds", "events/s")))
    print(f"batches of {BATCH}, {IN_FLIGHT} in flight: request p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms; rejected {counts.get('rejected', 0)}; members in membership {joined:,}; "
          f"longest received → decided {lag.total_seconds():.2f} s; target: all applied in < 10 s")
