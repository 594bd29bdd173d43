"""Membership at the region's scale, the service running as a process on its own Kafka and PostgreSQL.

1. Single joins over HTTP at 50 concurrent clients for JOIN_SECONDS (they also warm the service,
   PostgreSQL and the broker's JIT): rate, latency, and the outbox backlog sampled twice a second.
2. Bulk import: 450,000 generated members (valid ID numbers across the 22 counties, 110 branches)
   streamed as one CSV to ``POST /v1/members:import``. Measured: upload → all rows stored (the
   response), upload → all 450,000 ``member.joined`` events on Kafka (counted by a raw aiokafka
   consumer), the service's peak RSS (VmHWM), the CPU seconds the service, PostgreSQL and Kafka spent
   (wall times on this shared 2-core machine depend on what else runs; the load average is printed),
   and raw asyncpg COPY of the same rows into a bare table in the same run.
3. The same file again: everything "already a member", no event.

    python -m bench membership          (MEMBERS=… JOIN_SECONDS=… to change the sizes;
                                         CHANGAI_BENCH_OWN=0 to use the runner's servers)
    MEMBERSHIP_BENCH=joins python -m bench membership     (only 1)
    MEMBERSHIP_BENCH=import python -m bench membership    (only 2 and 3; MEMBERS=100000 for a quicker look)
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import uuid
from datetime import date, timedelta

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    KEY_ANSWER,
    KEY_INSERT,
    OUTBOX_INSERT,
    CpuClock,
    Load,
    aim,
    aims_table,
    backlog_watch,
    http_load,
    local_stack,
    SINGLE_WRITE_TARGET,
    load_avg,
    raw_load,
    servers,
    single_write_met,
    summary,
    table,
)
from shared import regions
from shared.auth import mint_token
from shared.identifiers import id_check_char, uscc_check_char

STATE_DIR = local_stack.STATE_DIR

MEMBERS = int(os.environ.get("MEMBERS", "450000"))
BRANCHES_PER_COUNTY = 5
JOIN_CLIENTS = 50
JOIN_SECONDS = float(os.environ.get("JOIN_SECONDS", "20"))
FORMS = ("standard", "courier", "ride_hailing", "truck_driver", "food_delivery")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红鹏建华飞鑫波斌宇浩凯健俊帆帅旭宁龙林欢阳"


def credit_code(region: str, rng: random.Random) -> str:
    first = "91" + region + "".join(rng.choice("0123456789ABCDEFGH") for _ in range(9))
    return first + uscc_check_char(first)


def generate_csv(n: int, branch_ids: list[str], seed: int) -> tuple[bytes, list[tuple]]:
    """n rows with distinct valid ID numbers (county prefix + birth date + sequence); and the rows for raw COPY."""
    rng = random.Random(seed)
    counties = [r.code for r in regions.COUNTIES]
    lines = ["name,id_number,phone,employment_form,occupation,skill_level,branch_id,joined_on"]
    raw = []
    seen: set[str] = set()
    base = date(1965, 1, 1)
    while len(lines) <= n:
        county = rng.choice(counties)
        born = base + timedelta(days=rng.randrange(365 * 38))
        body = f"{county}{born:%Y%m%d}{rng.randrange(800):03d}"
        number = body + id_check_char(body)
        if number in seen:
            continue
        seen.add(number)
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        form = rng.choice(FORMS)
        skill = str(rng.randrange(1, 6)) if rng.random() < 0.3 else ""
        branch = branch_ids[counties.index(county) * BRANCHES_PER_COUNTY + rng.randrange(BRANCHES_PER_COUNTY)]
        joined = date(2021, 1, 1) + timedelta(days=rng.randrange(240))
        lines.append(f"{name},{number},{phone},{form},,{skill},{branch},{joined.isoformat()}")
        # as stored: 32-byte hash, 47-byte ID ciphertext, 40-byte phone ciphertext, masked forms
        raw.append((uuid.uuid4(), uuid.UUID(branch), name, os.urandom(32), os.urandom(47), number[:6] + "********"
                    + number[-4:], os.urandom(40), phone[:3] + "****" + phone[-4:], born, "male", county, form, None,
                    int(skill) if skill else None, joined))
    return ("\n".join(lines) + "\n").encode(), raw


async def raw_copy(dsn: str, rows: list[tuple]) -> float:
    """asyncpg COPY of the same rows into a bare table with the members' columns: the floor."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""CREATE TABLE raw_members (id uuid, branch_id uuid, name text, id_hash bytea,
            id_cipher bytea, id_masked text, phone_cipher bytea, phone_masked text, birth_date date, sex text,
            home_region_code text, employment_form text, occupation text, skill_level smallint, joined_on date)""")
        started = time.perf_counter()
        await conn.copy_records_to_table("raw_members", records=rows, columns=[
            "id", "branch_id", "name", "id_hash", "id_cipher", "id_masked", "phone_cipher", "phone_masked",
            "birth_date", "sex", "home_region_code", "employment_form", "occupation", "skill_level", "joined_on"])
        return time.perf_counter() - started
    finally:
        await conn.execute("DROP TABLE IF EXISTS raw_members")
        await conn.close()


class JoinedCounter:
    """Counts member.joined events of our branches from the offsets the topic had before the import."""

    def __init__(self, bootstrap: str, branch_ids: set[str]):
        self.bootstrap = bootstrap
        self.branches = {b.encode() for b in branch_ids}
        self.count = 0
        self.done_at: float | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                         max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
        await self.consumer.start()
        parts = [TopicPartition("membership.events", p) for p in self.consumer.partitions_for_topic("membership.events")
                 or (await self.consumer._client.fetch_all_metadata()).partitions_for_topic("membership.events")]
        self.consumer.assign(parts)
        ends = await self.consumer.end_offsets(parts)
        for tp in parts:
            self.consumer.seek(tp, ends[tp])

    async def until(self, target: int, timeout: float) -> None:
        marker = b'"type":"changai.membership.member.joined.v1"'
        key = b'"branch_id":"'
        deadline = time.monotonic() + timeout
        while self.count < target and time.monotonic() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=200, max_records=20000)).values():
                for r in records:
                    v = r.value
                    if marker in v:
                        i = v.find(key) + len(key)
                        if v[i:i + 36] in self.branches:
                            self.count += 1
        self.done_at = time.perf_counter()

    async def stop(self) -> None:
        await self.consumer.stop()


def vm_hwm_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def stream(data: bytes, chunk: int = 256 * 1024):
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


def _load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


async def single_joins(port: int, dsn: str, token: dict, branch_ids: list[str], clock: CpuClock) -> Load:
    """50 concurrent keep-alive clients joining new members for JOIN_SECONDS, each with an Idempotency-Key as
    upstream systems are asked to send; the outbox backlog sampled twice a second and drained after."""
    counties = [r.code for r in regions.COUNTIES]
    seq = iter(range(10**9))
    rngs: dict[int, random.Random] = {}

    def make(n_client: int, _: int) -> tuple[str, bytes, str]:
        crng = rngs.setdefault(n_client, random.Random(n_client))
        i = next(seq)
        county, j = counties[i % 22], i // 22
        # sequence numbers 800-999 are never used by the import's rows (000-799): no collision
        body17 = f"{county}{date(1970, 1, 1) + timedelta(days=j // 200):%Y%m%d}{800 + j % 200}"
        body = {"branch_id": branch_ids[counties.index(county) * BRANCHES_PER_COUNTY + crng.randrange(5)],
                "name": "单独入会", "id_number": body17 + id_check_char(body17), "phone": "13900000000",
                "employment_form": crng.choice(FORMS)}
        return "/v1/members", orjson.dumps(body), f"Idempotency-Key: {uuid.uuid4().hex}\r\n"

    stop = asyncio.Event()
    watch = asyncio.create_task(backlog_watch(dsn, stop))
    try:
        load = await http_load([port], token, make, clients=JOIN_CLIENTS, seconds=JOIN_SECONDS, warmup=1.0,
                               clock=clock)
    finally:
        stop.set()
    peak, drain = await watch
    raw = await raw_joins(dsn, CpuClock({"client": os.getpid(), "postgres": clock.pids["postgres"]}))
    print(table([("POST /v1/members", JOIN_CLIENTS, load.count(201), f"{load.rate(201):,.0f}/s", *summary(load.latencies),
                  load.cpu_text(), load.load),
                 ("raw asyncpg, same statements", JOIN_CLIENTS, raw.count(200), f"{raw.rate(200):,.0f}/s",
                  *summary(raw.latencies), raw.cpu_text(), raw.load)],
                ("single joins", "clients", "joined", "rate", "median ms", "p90 ms", "p99 ms", "max ms",
                 "CPU ms a join", "load")))
    print(f"outbox backlog during the joins: peak {peak} events, drained {drain:.2f} s after them")
    other = {k: v for k, v in load.statuses.items() if k != 201}
    if other:
        print(f"other answers: {other}")
    print(aims_table([aim("membership join, 50 clients", load.rate(201), load.p99, raw.rate(200), raw.p99,
                          SINGLE_WRITE_TARGET, single_write_met(load.rate(201), load.p99, other), load.load)]))
    return load


async def raw_joins(dsn: str, clock: CpuClock) -> Load:
    """The floor of a join: the statements the service sends for one (key, branch lock, member insert, event,
    the member read back, key's answer) by plain asyncpg in one transaction, a stored member's values under a
    new id and hash, with no HTTP, validation, encryption or event encoding."""
    from services.membership import store

    conn = await asyncpg.connect(dsn)
    try:
        member = dict(await conn.fetchrow(f"SELECT {store.NEW_MEMBER_COLUMNS} FROM members LIMIT 1"))
        event = await conn.fetchrow("SELECT topic, key, lane, event_type, value FROM outbox ORDER BY seq DESC LIMIT 1")
        answer = await conn.fetchval("SELECT body::text FROM idempotency_keys WHERE body IS NOT NULL "
                                     "ORDER BY created_at DESC LIMIT 1")
    finally:
        await conn.close()

    async def work(conn: asyncpg.Connection, i: int, n: int) -> None:
        key, member_id = uuid.uuid4().hex, uuid.uuid4()
        async with conn.transaction():
            await conn.fetchval(KEY_INSERT, "raw:members.join", key, b"\x00" * 32)
            await store.lock_branches(conn, [member["branch_id"]])
            await store.insert_member(conn, **{**member, "id": member_id, "id_hash": os.urandom(32)})
            await conn.execute(OUTBOX_INSERT, uuid.uuid4(), event["topic"], event["key"], event["lane"],
                               event["event_type"], event["value"])
            await store.get_member(conn, member_id)
            await conn.execute(KEY_ANSWER, "raw:members.join", key, 201, answer)

    return await raw_load(dsn, work, clients=JOIN_CLIENTS, seconds=JOIN_SECONDS, clock=clock)


async def main() -> None:
    # ~900,000 events and 450,000 members: on its own Kafka and PostgreSQL unless told otherwise, so the
    # shared runner's topics (which tests read from the start) do not carry them.
    os.environ.setdefault("CHANGAI_BENCH_OWN", "1")
    try:
        await _run()
    finally:  # its own Kafka and PostgreSQL data: ~2.7 GB after a full run (CHANGAI_BENCH_KEEP=1 keeps them)
        if os.environ.get("CHANGAI_BENCH_KEEP") != "1":
            shutil.rmtree(STATE_DIR / f"bench-{os.getpid()}", ignore_errors=True)


async def _run() -> None:
    async with servers() as s:
        dsn = await s.database("membership")
        env = s.env("membership", database_url=dsn, CHANGAI_CERTIFICATES_GROUP_ID=f"bench-{uuid.uuid4().hex[:8]}",
                    CHANGAI_LOG_LEVEL="WARNING")
        svc = await s.start("membership", ["-m", "services.membership", "api"], env)
        clock = CpuClock({"service": svc.pid, "postgres": s.pg.pid, "kafka": s.kafka.pid})
        base = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}"
        token = {"Authorization": "Bearer " + mint_token("bench", ["membership:write", "membership:read"])}
        rng = random.Random(2021)
        print(f"machine: {os.cpu_count()} CPUs, {_load()}")
        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            branch_ids = []
            for county in regions.COUNTIES:
                for i in range(BRANCHES_PER_COUNTY):
                    r = await http.post("/v1/branches", headers=token, json={
                        "name": f"{county.name}基准工会{i}", "credit_code": credit_code(county.code, rng),
                        "region_code": county.code, "industry_section": "C", "kind": "new_form" if i == 0 else "enterprise",
                        "founded_on": "2020-06-01"})
                    r.raise_for_status()
                    branch_ids.append(r.json()["id"])

            # 1. Single joins first: they also warm the service, PostgreSQL and the broker's JIT.
            if os.environ.get("MEMBERSHIP_BENCH") != "import":
                await single_joins(int(env["CHANGAI_HTTP_PORT"]), dsn, token, branch_ids, clock)
            if os.environ.get("MEMBERSHIP_BENCH") == "joins":
                return

            # 2. The bulk import.
            started = time.perf_counter()
            data, raw_rows = generate_csv(MEMBERS, branch_ids, seed=450000)
            print(f"generated {MEMBERS:,} members as CSV ({len(data) / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - started:.1f} s; {len(branch_ids)} branches in 22 counties; {_load()}")
            counter = JoinedCounter(s.kafka.bootstrap, set(branch_ids))
            await counter.start()
            counting = asyncio.create_task(counter.until(MEMBERS, timeout=600))
            cpu0, load0 = clock.read(), load_avg()
            t0 = time.perf_counter()
            r = await http.post("/v1/members:import", content=stream(data),
                                headers={**token, "Content-Type": "text/csv"})
            t_stored = time.perf_counter() - t0
            r.raise_for_status()
            report = r.json()
            await counting
            t_kafka = counter.done_at - t0
            cpu1 = clock.read()
            await counter.stop()
            hwm = vm_hwm_mib(svc.pid)
            assert report["rows"]["accepted"] == MEMBERS, report
            assert counter.count == MEMBERS, f"only {counter.count} events on Kafka"

            t_raw = await raw_copy(dsn, raw_rows)
            del raw_rows

            # 3. The same file again.
            t1 = time.perf_counter()
            r2 = await http.post("/v1/members:import", content=stream(data),
                                 headers={**token, "Content-Type": "text/csv"})
            t_again = time.perf_counter() - t1
            again = r2.json()

            spent = {k: cpu1[k] - cpu0[k] for k in cpu0}
            load = f"{load0}–{load_avg()}"
            print(aims_table([aim(
                f"membership import of {MEMBERS:,} → last member.joined on Kafka", t_kafka, None, t_raw, None,
                "< 20 s, peak RSS < 300 MiB", t_kafka < 20 and hwm < 300, load, " s",
                figure=f"{t_kafka:,.1f} s, RSS {hwm:,.0f} MiB", raw=f"COPY {t_raw:,.2f} s",
                sized=MEMBERS >= 450_000)]))
            print(table([
                ("import → all rows stored (the response)", f"{t_stored:.1f} s", f"{MEMBERS / t_stored:,.0f} rows/s"),
                (f"import → all {MEMBERS:,} member.joined on Kafka", f"{t_kafka:.1f} s", f"{MEMBERS / t_kafka:,.0f} events/s"),
                ("raw asyncpg COPY, same rows, bare table", f"{t_raw:.2f} s", f"{MEMBERS / t_raw:,.0f} rows/s"),
                ("ratio: import → Kafka / raw COPY", f"{t_kafka / t_raw:.1f}×", ""),
                ("service peak RSS (VmHWM)", f"{hwm:.0f} MiB", ""),
                ("CPU used: service / PostgreSQL / Kafka", " / ".join(f"{spent[k]:.1f}" for k in spent) + " s",
                 " / ".join(f"{spent[k] / MEMBERS * 1e6:.0f}" for k in spent) + " µs a row"),
                ("same file again (all already members)", f"{t_again:.1f} s",
                 f"accepted {again['rows']['accepted']}, already {again['rows']['already_members']:,}"),
            ], (f"bulk import of {MEMBERS:,} members", "time", "rate")))
            print(f"service peak RSS after everything: {vm_hwm_mib(svc.pid):.0f} MiB; {_load()}")
