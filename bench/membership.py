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

from bench.common import local_stack, servers, summary, table
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


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for the join load: httpx costs ~2.5 ms of CPU a request,
    which on this 2-core machine the load generator would take from the service it measures."""

    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def vm_hwm_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def stream(data: bytes, chunk: int = 256 * 1024):
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]


class CpuClock:
    """CPU seconds (user + system) used by the service process, PostgreSQL (all its processes) and the Kafka
    JVM: what each part costs, whatever else the machine is doing (wall times depend on that)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, service_pid: int, pg_pid: int | None, kafka_pid: int | None):
        self.pids = {"service": service_pid, "postgres": pg_pid, "kafka": kafka_pid}

    @classmethod
    def _cpu(cls, pid: int) -> float:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / cls.TICK
        except (OSError, IndexError, ValueError):
            return 0.0

    def _tree(self, root: int) -> float:
        total = self._cpu(root)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == root:
                        total += self._cpu(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return total

    def read(self) -> dict[str, float]:
        return {name: (self._tree(pid) if name == "postgres" else self._cpu(pid)) if pid else float("nan")
                for name, pid in self.pids.items()}


def _load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


async def single_joins(env: dict, dsn: str, token: dict, branch_ids: list[str]) -> None:
    """50 concurrent clients joining new members for JOIN_SECONDS; the outbox backlog sampled twice a second."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    backlog: list[int] = []
    stop_at = time.perf_counter() + JOIN_SECONDS
    counties = [r.code for r in regions.COUNTIES]
    seq = iter(range(10**9))

    async def client(n: int) -> None:
        crng = random.Random(n)
        c = RawClient("127.0.0.1", int(env["CHANGAI_HTTP_PORT"]), token)
        try:
            while time.perf_counter() < stop_at:
                i = next(seq)
                county, j = counties[i % 22], i // 22
                # sequence numbers 800-999 are never used by the import's rows (000-799): no collision
                body17 = f"{county}{date(1970, 1, 1) + timedelta(days=j // 200):%Y%m%d}{800 + j % 200}"
                body = {"branch_id": branch_ids[counties.index(county) * BRANCHES_PER_COUNTY + crng.randrange(5)],
                        "name": "单独入会", "id_number": body17 + id_check_char(body17), "phone": "13900000000",
                        "employment_form": crng.choice(FORMS)}
                t = time.perf_counter()
                status, _ = await c.post("/v1/members", orjson.dumps(body))
                latencies.append((time.perf_counter() - t) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await c.close()

    async def watch_backlog() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while time.perf_counter() < stop_at + 10:
                backlog.append(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
                if time.perf_counter() > stop_at and backlog[-1] == 0:
                    break
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    t = time.perf_counter()
    await asyncio.gather(watch_backlog(), *(client(n) for n in range(JOIN_CLIENTS)))
    elapsed = min(time.perf_counter() - t, JOIN_SECONDS + 1)
    created = statuses.get(201, 0)
    print(table([("POST /v1/members", JOIN_CLIENTS, created, f"{created / elapsed:,.0f}/s", *summary(latencies),
                  max(backlog), backlog[-1])],
                ("single joins over HTTP", "clients", "201s", "rate", "median ms", "p90 ms", "p99 ms", "max ms",
                 "max outbox backlog", "backlog after")))
    other = {k: v for k, v in statuses.items() if k != 201}
    if other:
        print(f"other answers: {other}")


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
        clock = CpuClock(svc.pid, s.pg.pid, s.kafka.pid)
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
            await single_joins(env, dsn, token, branch_ids)

            # 2. The bulk import.
            started = time.perf_counter()
            data, raw_rows = generate_csv(MEMBERS, branch_ids, seed=450000)
            print(f"generated {MEMBERS:,} members as CSV ({len(data) / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - started:.1f} s; {len(branch_ids)} branches in 22 counties; {_load()}")
            counter = JoinedCounter(s.kafka.bootstrap, set(branch_ids))
            await counter.start()
            counting = asyncio.create_task(counter.until(MEMBERS, timeout=600))
            cpu0 = clock.read()
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
