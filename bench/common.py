"""What the benchmarks share: servers (the runner's when up, else their own) and tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import stack as local_stack  # noqa: E402


class Servers:
    def __init__(self, kafka, pg, prometheus, state_dir: Path):
        self.kafka, self.pg, self.prometheus, self.state_dir = kafka, pg, prometheus, state_dir
        self.services: list = []

    async def database(self, service: str) -> str:
        return await self.pg.create_database(f"bench_{service}_{uuid.uuid4().hex[:8]}", service)

    def env(self, name: str, **extra) -> dict[str, str]:
        port = local_stack.free_port()
        return local_stack.service_env(
            name,
            bootstrap=self.kafka.bootstrap,
            http_port=port,
            data_dir=self.state_dir / "data" / f"{name}-{uuid.uuid4().hex[:6]}",
            **extra,
        )

    async def start(
        self, name: str, args: list[str], env: dict[str, str], health: str | None = "/livez", timeout: float = 90
    ):
        url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}{health}" if health else None
        svc = await local_stack.start_service(
            name, [local_stack.PYTHON, *args], env, self.state_dir / "logs" / f"{name}.log", url, timeout=timeout
        )
        self.services.append(svc)
        return svc


@asynccontextmanager
async def servers(with_prometheus: bool = False):
    """Kafka and PostgreSQL at full durability (as in production, unlike the tests' fast mode)."""
    runner = local_stack.Runner()
    if all(c.proc and c.proc.alive() for c in (runner.kafka, runner.pg)) and os.environ.get("CHANGAI_BENCH_OWN") != "1":
        print(f"using the running stack: Kafka {runner.kafka.bootstrap}, PostgreSQL {runner.pg.address}")
        s = Servers(runner.kafka, runner.pg, runner.prometheus, local_stack.STATE_DIR / f"bench-{os.getpid()}")
        own = False
    else:
        state = local_stack.STATE_DIR / f"bench-{os.getpid()}"
        kafka = await local_stack.start_kafka(state, local_stack.free_port(), local_stack.free_port())
        pg = await local_stack.start_postgres(state, local_stack.free_port(), fast=False)
        prom = await local_stack.start_prometheus(state, local_stack.free_port(), "1s") if with_prometheus else None
        print(
            f"started own servers: Kafka {kafka.bootstrap} ({kafka.start_seconds:.1f} s), "
            f"PostgreSQL {pg.address} ({pg.start_seconds:.1f} s)"
        )
        s = Servers(kafka, pg, prom, state)
        own = True
    failed = False
    try:
        yield s
    except BaseException:
        failed = True
        raise
    finally:
        for svc in reversed(s.services):
            await svc.stop(grace=5)
        if own:
            for c in (s.prometheus, s.pg, s.kafka):
                if c:
                    await c.stop()
            if failed:  # the services' logs say why
                print(f"benchmark failed: state and logs kept in {s.state_dir}")
            else:
                shutil.rmtree(s.state_dir, ignore_errors=True)  # a full-durability run leaves gigabytes


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(values_ms: list[float]) -> tuple[str, str, str, str]:
    return (
        f"{statistics.median(values_ms):.1f}",
        f"{percentile(values_ms, 90):.1f}",
        f"{percentile(values_ms, 99):.1f}",
        f"{max(values_ms):.1f}",
    )


# -- load over HTTP, its raw baseline, and the aims table ----------------------------------------------
def load_avg() -> str:
    return "%.1f" % os.getloadavg()[0]


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for load: httpx costs ~2.5 ms of CPU a request, which on this
    2-core machine the load generator would take from the service it measures."""

    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", extra: str = "") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"{self.head}{extra}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    async def post(self, path: str, body: bytes, extra: str = "") -> tuple[int, bytes]:
        return await self.request("POST", path, body, extra)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CpuClock:
    """CPU seconds (user + system) used by named processes — e.g. the service's (one or more pids), PostgreSQL
    (the postmaster and all its children: name ``postgres``), the Kafka JVM: what each part costs, whatever
    else the machine is doing (wall times depend on that)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: dict[str, int | list[int] | None]):
        self.pids = {name: ([p] if isinstance(p, int) else p) for name, p in pids.items()}

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
        return {
            name: sum(self._tree(p) if name == "postgres" else self._cpu(p) for p in pids) if pids else float("nan")
            for name, pids in self.pids.items()
        }


@dataclass
class Load:
    """What a load run measured: answers by status, the wall time, latencies in ms."""

    statuses: dict[int, int]
    seconds: float
    latencies: list[float]
    load: str = ""
    cpu: dict[str, float] | None = None  # CPU seconds per process group while the counted writes ran

    def cpu_text(self) -> str:
        """CPU milliseconds a write, per process group."""
        n = sum(self.statuses.values())
        return " / ".join(f"{k} {v / n * 1000:.2f}" for k, v in (self.cpu or {}).items()) if n else ""

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def rate(self, status: int) -> float:
        return self.count(status) / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99) if self.latencies else float("nan")


async def http_load(
    ports: list[int],
    headers: dict[str, str],
    make,
    *,
    clients: int = 50,
    seconds: float = 10.0,
    warmup: float = 0.0,
    clock: CpuClock | None = None,
) -> Load:
    """``clients`` keep-alive connections (spread over ``ports``: replicas), each sending ``make(client, n)``
    -> (path, body bytes, extra header lines) one after another for ``seconds``; the first ``warmup`` seconds
    are not counted."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    begin = time.perf_counter()
    count_from = begin + warmup
    stop_at = count_from + seconds

    async def client(i: int) -> None:
        c = RawClient("127.0.0.1", ports[i % len(ports)], headers)
        n = 0
        try:
            while (now := time.perf_counter()) < stop_at:
                path, body, extra = make(i, n)
                n += 1
                status, _ = await c.post(path, body, extra)
                done = time.perf_counter()
                if now >= count_from:
                    latencies.append((done - now) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            await c.close()

    async def cpu_from_warm() -> dict[str, float]:
        await asyncio.sleep(warmup)
        return clock.read() if clock else {}

    cpu0 = asyncio.create_task(cpu_from_warm())
    await asyncio.gather(*(client(i) for i in range(clients)))
    cpu = {k: v - (await cpu0)[k] for k, v in clock.read().items()} if clock else None
    return Load(statuses, time.perf_counter() - count_from, latencies, load_avg(), cpu)


async def raw_load(
    dsn: str, work, *, clients: int = 50, seconds: float = 10.0, setup=None, clock: CpuClock | None = None
) -> Load:
    """The floor: ``clients`` asyncpg connections, each running ``await work(conn, client, n)`` (one write:
    the same statements the service sends, in one transaction) one after another for ``seconds``."""
    conns = [await asyncpg.connect(dsn) for _ in range(clients)]
    if setup is not None:
        await setup(conns[0])
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        nonlocal done
        conn, n = conns[i], 0
        while (t := time.perf_counter()) < stop_at:
            await work(conn, i, n)
            n += 1
            latencies.append((time.perf_counter() - t) * 1000)
            done += 1

    start = time.perf_counter()
    cpu0 = clock.read() if clock else {}
    try:
        await asyncio.gather(*(loop(i) for i in range(clients)))
        cpu = {k: v - cpu0[k] for k, v in clock.read().items()} if clock else None
    finally:
        for c in conns:
            await c.close()
    return Load({200: done}, time.perf_counter() - start, latencies, load_avg(), cpu)


# The statements of a keyed write around its change, as shared.http.write and shared.outbox send them.
KEY_INSERT = (
    "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true"
)
KEY_ANSWER = "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2"
OUTBOX_INSERT = "INSERT INTO outbox (event_id, topic, key, lane, event_type, value) VALUES ($1, $2, $3, $4, $5, $6)"


async def backlog_watch(dsn: str, until: asyncio.Event) -> tuple[int, float]:
    """The outbox backlog sampled every 0.5 s while the load runs; then the time to drain it."""
    conn = await asyncpg.connect(dsn)
    peak = 0
    try:
        while not until.is_set():
            peak = max(peak, await conn.fetchval("SELECT count(*) FROM outbox_pending"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 0.5)
        t = time.perf_counter()
        while await conn.fetchval("SELECT count(*) FROM outbox_pending"):
            if time.perf_counter() - t > 120:
                raise TimeoutError("outbox not drained in 120 s")
            await asyncio.sleep(0.05)
        return peak, time.perf_counter() - t
    finally:
        await conn.close()


# -- the aims table: every aim of issues 18, 15 and 16 that this invocation measured ---------------------
# Each row: the figure, the raw baseline of the same run where the issue names one, their ratio (the share of
# raw's speed the service reaches: rate / raw rate, or raw time / time), the target, met or not, and the load
# average while it was measured. `python -m bench` prints them together at the end; ``--doc`` writes them.
AIM_HEADER = ("aim", "figure", "p99 ms", "raw same run", "raw p99 ms", "ratio", "target", "met", "load")
SINGLE_WRITE_TARGET = "≥ 1,000/s, p99 ≤ 50 ms"


@dataclass(frozen=True)
class Aim:
    name: str
    figure: str
    p99: str
    raw: str
    raw_p99: str
    ratio: str
    target: str
    met: bool
    load: str
    area: str = ""
    sized: bool = True  # run at the aim's own size: a smaller run's PASS or FAIL says nothing about the aim

    @property
    def verdict(self) -> str:
        return ("PASS" if self.met else "FAIL") if self.sized else "n/a: smaller run"

    def cells(self) -> tuple[str, ...]:
        return (self.name, self.figure, self.p99, self.raw, self.raw_p99, self.ratio, self.target, self.verdict,
                self.load)


AIMS: list[Aim] = []  # every area's aims, printed together at the end of `python -m bench`
CURRENT_AREA = [""]  # set by bench.__main__ while an area runs: each row knows where it came from


def _figure(value: float, unit: str) -> str:
    if unit == " s":
        return f"{value:,.1f} s"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == " ms":
        return f"{value:,.1f} ms"
    return f"{value:,.2f}{unit}"


def ratio_of(value: float | None, raw: float | None, unit: str) -> str:
    """The share of raw's speed: rate / raw rate, or for times raw time / time (both: higher is better)."""
    if value is None or raw is None or not value or not raw or value != value or raw != raw:  # nan: no ratio
        return ""
    return f"{(raw / value if unit == ' s' else value / raw):.2f}"


def aim(
    name: str,
    rate: float,
    p99: float | None,
    raw_rate: float | None,
    raw_p99: float | None,
    target: str,
    met: bool,
    load: str,
    unit: str = "/s",
    *,
    figure: str | None = None,
    raw: str | None = None,
    ratio: str | None = None,
    sized: bool = True,
) -> Aim:
    """One row of the aims table, also kept for the summary at the end. ``unit``: "/s" (a rate), " s" (a time:
    its ratio is raw time / time) or anything else (printed after the value); ``figure`` / ``raw`` / ``ratio``
    replace the texts made from the numbers (e.g. a figure with its peak RSS beside it); ``sized=False``: the run
    was smaller than the aim's size (a quick look), so it is neither met nor failed."""
    row = Aim(
        name,
        figure if figure is not None else _figure(rate, unit),
        "" if p99 is None else f"{p99:,.1f}",
        raw if raw is not None else ("" if raw_rate is None else _figure(raw_rate, unit)),
        "" if raw_p99 is None else f"{raw_p99:,.1f}",
        ratio if ratio is not None else ratio_of(rate, raw_rate, unit),
        target,
        bool(met),
        load,
        CURRENT_AREA[0],
        sized,
    )
    AIMS.append(row)
    return row


def single_write_met(rate: float, p99: float, others: dict | None = None) -> bool:
    """Issue 18's single-write aim: ≥ 1,000 writes/s and p99 ≤ 50 ms, with no answer but the expected one."""
    return rate >= 1000 and p99 <= 50 and not others


def aims_table(rows: list[Aim]) -> str:
    return table([r.cells() for r in rows], AIM_HEADER)


def aims_markdown(rows: list[Aim]) -> str:
    """The aims as a Markdown table (pipes in a cell escaped), the met column in bold when it failed."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| area | " + " | ".join(AIM_HEADER) + " |", "|" + "---|" * (len(AIM_HEADER) + 1)]
    for r in rows:
        cells = list(r.cells())
        cells[7] = f"**{cells[7]}**" if r.sized and not r.met else cells[7]
        lines.append("| " + " | ".join(cell(c) for c in (r.area, *cells)) + " |")
    return "\n".join(lines)
