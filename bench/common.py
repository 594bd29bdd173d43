"""What the benchmarks share: servers (the runner's when up, else their own) and tables."""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

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
        return local_stack.service_env(name, bootstrap=self.kafka.bootstrap, http_port=port,
                                       data_dir=self.state_dir / "data" / f"{name}-{uuid.uuid4().hex[:6]}", **extra)

    async def start(self, name: str, args: list[str], env: dict[str, str], health: str | None = "/livez",
                    timeout: float = 90):
        url = f"http://127.0.0.1:{env['CHANGAI_HTTP_PORT']}{health}" if health else None
        svc = await local_stack.start_service(name, [local_stack.PYTHON, *args], env,
                                              self.state_dir / "logs" / f"{name}.log", url, timeout=timeout)
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
        print(f"started own servers: Kafka {kafka.bootstrap} ({kafka.start_seconds:.1f} s), "
              f"PostgreSQL {pg.address} ({pg.start_seconds:.1f} s)")
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
    return (f"{statistics.median(values_ms):.1f}", f"{percentile(values_ms, 90):.1f}",
            f"{percentile(values_ms, 99):.1f}", f"{max(values_ms):.1f}")
